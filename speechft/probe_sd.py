"""Speaker diarization (SUPERB SD): a frame-level head trained with permutation-invariant BCE; DER.

The head follows SUPERB's (s3prl downstream diarization: weighted sum of the frozen encoder's states ->
a one-layer LSTM over frames -> a linear layer with one sigmoid output per speaker). Reference labels
come from the task's RTTM segments at the encoder's own frame rate: frame f of a recording whose audio
(as extracted: at most cfg.max_seconds) lasts T seconds over F frames covers the instant (f + 0.5) T / F,
and a speaker is active there when one of their segments contains it. The speakers of a recording have
no fixed order, so the loss is the BCE of the better of the speaker permutations, per recording (PIT).
Each epoch the dev DER (speechft.metrics_superb.der_frames: collar 0, overlap scored, the best speaker
mapping per recording) is computed; the state with the best dev DER is kept and reported on test.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from .metrics_superb import der_frames
from .probe_special import WeightedLayers


def frame_labels(segments, frames: int, seconds: float, speakers: int) -> np.ndarray:
    """(frames, speakers) 0/1 activity of `segments` [(start, end, speaker)]; speakers in sorted order."""
    names = sorted({s for _, _, s in segments})
    t = (np.arange(frames) + 0.5) * (seconds / max(frames, 1))
    out = np.zeros((frames, speakers), dtype=np.float32)
    for start, end, spk in segments:
        out[(t >= start) & (t < end), names.index(spk)] = 1.0
    return out


def pit_bce(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over recordings of the BCE (over valid frames and speakers) of the best speaker permutation.
    logits, labels (B, F, S); lengths (B,) valid frames."""
    valid = (torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]).to(logits.dtype)
    per_perm = []
    for perm in itertools.permutations(range(labels.shape[2])):
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels[..., list(perm)], reduction="none")
        per_perm.append((bce.mean(2) * valid).sum(1) / lengths.clamp(min=1).to(logits.dtype))
    return torch.stack(per_perm, 1).min(1).values.mean()


class DiarizationHead(WeightedLayers):
    """Weighted layer sum (standardised) -> LSTM over frames -> one logit per speaker per frame."""

    def __init__(self, input_dim: int, num_states: int, speakers: int, width: int = 256):
        super().__init__(input_dim, num_states)
        self.lstm = nn.LSTM(input_dim, width, batch_first=True)
        self.out = nn.Linear(width, speakers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (S, B, F, D) -> logits (B, F, speakers)."""
        return self.out(self.lstm(self.weighted(states))[0])


def split_labels(task, feats, split: str, max_seconds: float | None) -> list[np.ndarray]:
    """Frame labels of every recording of `split`, at the frame count its features have."""
    out = []
    for ex, segs, frames in zip(task.split(split), task.segments[split], feats.lengths):
        seconds = ex.duration if max_seconds is None else min(ex.duration, max_seconds)
        out.append(frame_labels(segs, int(frames), seconds, len(task.labels)))
    return out


def _predict(head: DiarizationHead, feats, batch_size: int) -> list[np.ndarray]:
    """0/1 activity (frames, speakers) of every recording: sigmoid > 0.5."""
    device = next(head.parameters()).device
    head.eval()
    out = [None] * len(feats.index)
    order = np.argsort(feats.lengths, kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size].tolist()
            x, lengths = feats.batch(ids)
            active = (head(x.to(device)) > 0).cpu().numpy().astype(np.float32)
            for b, i in enumerate(ids):
                out[i] = active[b, : int(lengths[b])]
    return out


def train_sd_probe(provider, lr: float, seed: int, cfg, on_epoch=None, device="cpu") -> dict:
    """One diarization head at one LR and seed (probe_special.grid_probe's train_one); the epoch with the
    best dev DER is kept."""
    from .data.batching import BucketBatchSampler
    from .probe_special import keep_best
    from .probe_train import probe_epochs

    task, source = provider.task, provider.source
    max_seconds = getattr(cfg, "max_seconds", None)
    torch.manual_seed(seed)
    head = DiarizationHead(source.dim, source.num_states, len(task.labels), cfg.proj_dim)
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    train = provider.get("train")
    labels = [torch.from_numpy(y) for y in split_labels(task, train, "train", max_seconds)]
    refs = {s: split_labels(task, provider.get(s), s, max_seconds) for s in ("dev", "test")}
    sampler = BucketBatchSampler(train.lengths.tolist(), batch_size=cfg.ctc_batch_size, shuffle=True, seed=seed)

    def evaluate(split: str) -> dict[str, float]:
        return {"der": der_frames(refs[split], _predict(head, provider.get(split), cfg.eval_batch_size))}

    def train_epoch(epoch: int) -> None:
        for ids in sampler.batches(epoch):
            x, lengths = train.batch(ids)
            y = nn.utils.rnn.pad_sequence([labels[i] for i in ids], batch_first=True)
            loss = pit_bce(head(x.to(device)), y.to(device), lengths.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return keep_best(head, probe_epochs(task, cfg), train_epoch, evaluate, task.metric, on_epoch)
