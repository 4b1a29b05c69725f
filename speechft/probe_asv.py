"""Speaker verification (SUPERB ASV): an x-vector head trained with AM-softmax on the train speakers, trials
scored by the cosine similarity of embeddings; EER (and minDCF).

The head follows SUPERB's (s3prl downstream sv_voxceleb1: XVector + AMSoftmax): the weighted sum of the
frozen encoder's states -> a linear connector -> 5 TDNN layers (kernel/dilation 5/1, 3/2, 3/3, 1/1, 1/1;
ReLU) -> statistics pooling (mean and standard deviation over valid frames) -> a linear embedding; the
loss is additive-margin softmax over the train speakers (margin 0.4, scale 30). SUPERB's widths are 512
(TDNN) and 1500 (the pooled layer); here the TDNN width is the probe's `proj_dim` and the pooled layer 3x
that (SUPERB's ratio), so the probe protocol sets them. Each epoch the dev trials are scored and the
state with the best dev metric (EER by default) is kept; test reports EER and minDCF (p_target 0.01).

EER and minDCF are computed here until speechft.metrics has minDCF (it has EER).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .metrics import eer
from .metrics_superb import min_dcf
from .probe_special import WeightedLayers

AM_MARGIN, AM_SCALE = 0.4, 30.0
TDNN = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))  # (kernel, dilation), as s3prl's XVector


class XVectorHead(WeightedLayers):
    """Weighted layer sum (standardised) -> connector -> TDNN -> stats pooling -> embedding; AM-softmax."""

    def __init__(self, input_dim: int, num_states: int, num_speakers: int, width: int = 256):
        super().__init__(input_dim, num_states)
        self.connector = nn.Linear(input_dim, width)
        dims = [width] * len(TDNN) + [3 * width]
        self.tdnn = nn.ModuleList(
            nn.Conv1d(dims[i], dims[i + 1], k, dilation=d, padding=d * (k - 1) // 2) for i, (k, d) in enumerate(TDNN)
        )
        self.embedding = nn.Linear(2 * dims[-1], width)
        self.classes = nn.Parameter(torch.randn(num_speakers, width) * 0.01)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """states (S, B, F, D), frame lengths (B,) -> embeddings (B, width)."""
        x = self.connector(self.weighted(states)).transpose(1, 2)  # (B, width, F)
        for conv in self.tdnn:
            x = torch.relu(conv(x))
        valid = (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[:, None]
        n = lengths.clamp(min=1)[:, None].to(x.dtype)
        mean = (x * valid).sum(2) / n
        var = (((x - mean[..., None]) ** 2) * valid).sum(2) / n
        return self.embedding(torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=1))

    def am_softmax_loss(self, emb: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.normalize(emb, dim=1) @ nn.functional.normalize(self.classes, dim=1).T
        margin = nn.functional.one_hot(speakers, cos.shape[1]).to(cos.dtype) * AM_MARGIN
        return nn.functional.cross_entropy(AM_SCALE * (cos - margin), speakers)


def _embed(head: XVectorHead, feats, batch_size: int) -> torch.Tensor:
    device = next(head.parameters()).device
    head.eval()
    out = [None] * len(feats.index)
    order = np.argsort(feats.lengths, kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size].tolist()
            x, lengths = feats.batch(ids)
            emb = nn.functional.normalize(head(x.to(device), lengths.to(device)), dim=1).cpu()
            for i, e in zip(ids, emb):
                out[i] = e
    return torch.stack(out)


def trial_scores(head: XVectorHead, task, feats, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every trial of `split` and whether it is a same-speaker trial."""
    emb = _embed(head, feats, batch_size)
    a, b, same = (np.array(x) for x in zip(*task.trials[split]))
    return (emb[a] * emb[b]).sum(1).numpy(), same.astype(bool)


def verification_metrics(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    return {"eer": eer(scores, same), "min_dcf": min_dcf(scores, same)}


def train_asv_probe(provider, lr: float, seed: int, cfg, on_epoch=None, device="cpu") -> dict:
    """One x-vector head at one LR and seed; the epoch with the best dev value of the task's metric is kept."""
    from .data.batching import BucketBatchSampler
    from .probe_special import keep_best
    from .probe_train import probe_epochs

    task, source = provider.task, provider.source
    torch.manual_seed(seed)
    head = XVectorHead(source.dim, source.num_states, len(task.labels), cfg.proj_dim)
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    train = provider.get("train")
    speakers = torch.tensor([task.encode(ex.target) for ex in task.split("train")], device=device)
    sampler = BucketBatchSampler(train.lengths.tolist(), batch_size=cfg.ctc_batch_size, shuffle=True, seed=seed)

    def evaluate(split: str) -> dict[str, float]:
        return verification_metrics(*trial_scores(head, task, provider.get(split), split, cfg.eval_batch_size))

    def train_epoch(epoch: int) -> None:
        for ids in sampler.batches(epoch):
            x, lengths = train.batch(ids)
            loss = head.am_softmax_loss(
                head(x.to(device), lengths.to(device)), speakers[torch.tensor(ids, device=device)]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return keep_best(head, probe_epochs(task, cfg), train_epoch, evaluate, task.metric, on_epoch)
