"""Unit targets for continued pre-training (speechft.pretrain): k-means on an encoder's own features.

Once per run, offline, with the initial encoder: features of one intermediate layer on a seeded sample of the
training audio are clustered (`kmeans`: k-means++ initialisation, Lloyd iterations, seeded), every training and
dev clip is labelled frame by frame with its nearest centroid (`label_split`), and both are stored in the run
folder (`prepare_targets`: units/kmeans.safetensors + units.json, units/targets.safetensors while running) so a
resumed run reuses them. `units.kmeans` replaces the fitting with given centroids (`given_units`), e.g. the units a
checkpoint's prediction head was trained on. `UnitTargets` hands a batch its (B, F) targets.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch

from .data.audio import SAMPLE_RATE
from .errors import SpeechFTError
from .io_utils import read_json, sha256_file, write_json
from .safetensors_io import load_tensors, save_tensors

IGNORE = -100  # target of a frame outside a clip
KMEANS_FILE, TARGETS_FILE, INFO_FILE = "kmeans.safetensors", "targets.safetensors", "units.json"


def _sqdist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, D), (N,), (K, D) -> (N, K) squared distances (clamped at 0 against rounding)."""
    return (x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp_(min=0.0)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid per row of `x` and the squared distance to it."""
    x, centroids = x.float(), centroids.float().to(x.device)
    idx, dist = [], []
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        d, j = _sqdist(part, (part * part).sum(1), centroids).min(dim=1)
        idx.append(j)
        dist.append(d)
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(idx), torch.cat(dist)


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iterations: int = 100, tol: float = 1e-4
) -> tuple[torch.Tensor, dict]:
    """k-means on the rows of `x` (N, D): k-means++ initialisation, then Lloyd iterations until the
    inertia improves by less than `tol` (relative) or `iterations` are done. Deterministic per `seed`
    (a private generator; the global RNG is untouched). Runs on x's device.
    Returns (centroids (k, D) float32, {"iterations", "inertia": mean squared distance, "points"})."""
    n = x.shape[0]
    if n < k:
        raise SpeechFTError(
            f"units.clusters={k}: k-means needs at least that many frames, the sample has {n}; "
            "lower units.clusters or give more audio"
        )
    x = x.float()
    x_sq = (x * x).sum(1)
    gen = torch.Generator().manual_seed(seed)
    # k-means++ (Arthur & Vassilvitskii 2007): each next centre is a point drawn with probability
    # proportional to its squared distance to the nearest centre chosen so far.
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    d2 = _sqdist(x, x_sq, x[chosen[0]][None])[:, 0]
    for _ in range(1, k):
        w = d2.double().cpu()
        total = float(w.sum())
        if total > 0:
            nxt = int(torch.multinomial(w / total, 1, generator=gen))
        else:  # every point sits on a centre already (duplicates): take the first one not chosen
            taken = set(chosen)
            nxt = next(i for i in range(n) if i not in taken)
        chosen.append(nxt)
        d2 = torch.minimum(d2, _sqdist(x, x_sq, x[nxt][None])[:, 0])
    c = x[chosen].clone()
    prev = math.inf
    done = 0
    for iteration in range(1, iterations + 1):
        done = iteration
        assign, dist = nearest_centroid(x, c)
        inertia = float(dist.sum())
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        c = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        empty = counts == 0
        if empty.any():  # an empty cluster restarts at the points worst served now (deterministic)
            c[empty] = x[dist.topk(int(empty.sum())).indices]
        if math.isfinite(prev) and prev - inertia <= tol * prev:
            break
        prev = inertia
    _, dist = nearest_centroid(x, c)
    return c, {"iterations": done, "inertia": float(dist.mean()), "points": n}


def clip_batches(dataset, indices: list[int], max_seconds: float | None, batch_size: int) -> list[list[int]]:
    """Length-sorted batches (little padding) over `indices` of `dataset`, in a fixed order."""
    from .data.batching import BucketBatchSampler

    durs = [min(dataset.examples[i].duration, max_seconds or math.inf) for i in indices]
    return [[indices[j] for j in b] for b in BucketBatchSampler(durs, batch_size=batch_size, shuffle=False).batches()]


@torch.no_grad()
def layer_features(encoder, dataset, batches: list[list[int]], layer: int, device, bar=None, num_workers: int = 0):
    """Yields (dataset index, (frames, D) features of hidden state `layer`) for every clip in `batches`."""
    from .data.dataset import split_loader

    was_training = encoder.training
    encoder.eval()
    try:
        loader = split_loader(dataset, batches, num_workers=num_workers)
        for batch in loader:
            out = encoder(batch.wavs.to(device), batch.lengths.to(device))
            states = out.hidden_states[layer].float()
            for row, (i, n) in enumerate(zip(batch.indices, out.frame_lengths.tolist())):
                yield i, states[row, :n]
            if bar is not None:
                bar.update(1)
    finally:
        encoder.train(was_training)


def fit_units(encoder, dataset, cfg, layer: int, device, progress: bool) -> tuple[torch.Tensor, dict]:
    """k-means centroids of layer `layer` on a seeded sample of the training clips."""
    from .progress import progress_bar

    u = cfg.units
    order = list(range(len(dataset)))
    random.Random(cfg.seed).shuffle(order)
    samples = torch.tensor(
        [int(min(ex.duration, cfg.data.max_seconds or math.inf) * SAMPLE_RATE) for ex in dataset.examples]
    )
    frames = encoder.frame_lengths(samples).tolist()
    if sum(frames) < u.clusters:  # before any feature is computed (kmeans checks the real count again)
        raise SpeechFTError(
            f"units.clusters={u.clusters}: k-means needs at least that many frames, the training "
            f"audio has about {sum(frames)}; lower units.clusters or give more audio"
        )
    picked, total = [], 0
    for i in order:  # whole clips in a seeded order until the sample is large enough
        if total >= u.sample_frames:
            break
        picked.append(i)
        total += frames[i]
    batches = clip_batches(dataset, picked, cfg.data.max_seconds, cfg.data.eval_batch_size)
    with progress_bar(total=len(batches), desc="units: k-means sample", unit="batch", **_bar_switch(progress)) as bar:
        feats = torch.cat(
            [f for _, f in layer_features(encoder, dataset, batches, layer, device, bar, cfg.data.num_workers)]
        )
    if feats.shape[0] > u.sample_frames:  # the last clip overshoots: a seeded subset of exactly sample_frames
        keep = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[: u.sample_frames]
        feats = feats[keep.sort().values.to(feats.device)]
    centroids, info = kmeans(feats, u.clusters, seed=cfg.seed, iterations=u.iterations)
    return centroids.cpu(), {**info, "clips": len(picked)}


def given_units(path, clusters: int, hidden_size: int) -> tuple[torch.Tensor, dict]:
    """`units.kmeans`: centroids (K, hidden) from a .safetensors (`centroids`) or a .npy file, checked."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise SpeechFTError(f"config units.kmeans={str(path)!r}: file not found")
    if path.suffix == ".npy":
        try:
            c = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (ValueError, OSError) as e:
            raise SpeechFTError(f"{path}: not a readable .npy array of centroids ({e})") from None
    else:
        tensors = load_tensors(path)
        if "centroids" not in tensors:
            raise SpeechFTError(f"{path}: no 'centroids' tensor (has {', '.join(sorted(tensors)) or 'none'})")
        c = tensors["centroids"].float()
    if tuple(c.shape) != (clusters, hidden_size) or not torch.isfinite(c).all():
        raise SpeechFTError(
            f"{path}: centroids of shape {tuple(c.shape)}, expected finite ({clusters}, {hidden_size}): "
            "units.clusters by this encoder's hidden size"
        )
    info = {"points": None, "clips": None, "iterations": 0, "inertia": None, "from": str(path.resolve())}
    return c, {**info, "source_sha256": sha256_file(path)}


def label_split(
    encoder, dataset, centroids: torch.Tensor, layer: int, cfg, loop, progress: bool, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Units of every clip of `dataset`, concatenated, with offsets (N+1). Processes share the batches."""
    from .progress import progress_bar

    rank, world = loop.rank, loop.world
    batches = clip_batches(dataset, list(range(len(dataset))), cfg.data.max_seconds, cfg.data.eval_batch_size)
    mine = batches[rank::world]
    pairs = []
    with progress_bar(total=len(mine), desc=desc, unit="batch", **_bar_switch(progress and loop.main)) as bar:
        for i, feats in layer_features(encoder, dataset, mine, layer, loop.device, bar, cfg.data.num_workers):
            pairs.append((i, nearest_centroid(feats, centroids)[0].to(torch.int32).cpu()))
    if world > 1:
        pairs = loop.gather(pairs)
    pairs.sort(key=lambda p: p[0])
    units = [u for _, u in pairs]
    offsets = torch.tensor([0] + [len(u) for u in units]).cumsum(0)
    return (torch.cat(units) if units else torch.zeros(0, dtype=torch.int32)), offsets


def _bar_switch(show: bool) -> dict:
    """tqdm keywords: off when not shown; otherwise tqdm's own settings decide (TQDM_DISABLE=1 turns it off)."""
    return {} if show else {"disable": True}


class UnitTargets:
    """Per-clip unit sequences of one split: (concatenated units, offsets)."""

    def __init__(self, units: torch.Tensor, offsets: torch.Tensor, where: str):
        self.units, self.offsets, self.where = units.long(), offsets.long(), where

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> torch.Tensor:
        return self.units[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, indices, frame_lengths: torch.Tensor) -> torch.Tensor:
        """(B, F) long targets of dataset clips `indices`, IGNORE past each clip; checks the frame counts."""
        n = frame_lengths.cpu().tolist()
        out = torch.full((len(indices), max(n) if n else 0), IGNORE, dtype=torch.long)
        for row, (i, frames) in enumerate(zip(indices, n)):
            u = self.clip(i)
            if len(u) != frames:
                raise SpeechFTError(
                    f"{self.where}: clip {i} has {len(u)} stored units but the encoder gives {frames} "
                    "frames for it; the audio changed since they were computed - start a new run"
                )
            out[row, :frames] = u
        return out


def prepare_targets(encoder, datasets: dict, cfg, layer: int, folder: Path, loop, progress: bool) -> dict:
    """The unit targets of every split in `datasets` ({split: SplitDataset}, exactly the stream's crops): fit
    k-means and label the clips, or reuse what an earlier (killed) run of this folder stored. Returns
    {split: UnitTargets}; `folder` then holds KMEANS_FILE and INFO_FILE (and TARGETS_FILE until clean-up)."""
    kmeans_file, targets_file, info_file = folder / KMEANS_FILE, folder / TARGETS_FILE, folder / INFO_FILE
    show = progress and loop.main
    if not targets_file.exists():  # a fresh run, or one killed before its targets were stored
        if not kmeans_file.exists():
            if loop.main:
                if cfg.units.kmeans:
                    centroids, info = given_units(cfg.units.kmeans, cfg.units.clusters, encoder.hidden_size)
                else:
                    centroids, info = fit_units(encoder, datasets["train"], cfg, layer, loop.device, show)
                part = kmeans_file.with_name(kmeans_file.name + ".part")
                save_tensors(part, {"centroids": centroids})
                # units.json first: kmeans.safetensors existing means both are complete.
                write_json(
                    info_file, {"clusters": cfg.units.clusters, "layer": layer, **info, "sha256": sha256_file(part)}
                )
                os.replace(part, kmeans_file)
                if show and cfg.units.kmeans:
                    print(f"units: K={cfg.units.clusters} centroids from {cfg.units.kmeans} (layer {layer})")
                elif show:
                    print(
                        f"units: k-means K={cfg.units.clusters} on {info['points']} frames of layer {layer} "
                        f"({info['clips']} clips): {info['iterations']} iterations, inertia {info['inertia']:.4g}"
                    )
            loop.barrier()
        centroids = load_tensors(kmeans_file)["centroids"].to(loop.device)
        split_units = {
            split: label_split(encoder, ds, centroids, layer, cfg, loop, progress, f"units: labelling {split}")
            for split, ds in datasets.items()
        }
        if loop.main:
            save_tensors(
                targets_file,
                {
                    f"{s}.{k}": v
                    for s, (units, offsets) in split_units.items()
                    for k, v in (("units", units), ("offsets", offsets))
                },
            )
        loop.barrier()
    tensors = load_tensors(targets_file)
    targets = {}
    for split, ds in datasets.items():
        t = UnitTargets(tensors[f"{split}.units"], tensors[f"{split}.offsets"], str(targets_file))
        if len(t) != len(ds):
            raise SpeechFTError(
                f"{targets_file}: holds units of {len(t)} {split} clips, the audio has {len(ds)}; "
                "delete the run folder and start again"
            )
        targets[split] = t
    return targets


def read_units_info(folder: Path) -> dict:
    return read_json(folder / INFO_FILE)
