"""`speechft evaluate` across processes: `accelerate launch [--multi_gpu] --num_processes N -m speechft evaluate ...`.

No launcher of our own: Accelerate starts the processes (one per GPU, or N CPU processes with gloo) and
this module only divides the work, in two phases, so that the result is the one a single process gives:

1. Extraction. A cache entry holds one split of one task for one encoder. When it is missing, process r
   runs the encoder over the extraction batches r, r+N, r+2N, ... (the same length-sorted batches a single
   process makes, so each utterance meets the same neighbours and padding and its features come out
   bit-identical) and writes them to its own part folder beside the entry (`.parts-KEY/rank-R`, atomic);
   then the main process alone assembles the entry from the parts, in batch order, through the cache's own
   atomic writer, and removes the parts. Each entry is written once, by one process, byte-identical to a
   single process's (so a later single-process run hits it). The cache must be one folder all processes
   see (a shared file system across nodes): that is checked first.
2. Probes. The grid (tasks x LRs x seeds) is numbered; process r trains probes r, r+N, ...; each probe is
   seeded by its own seed, as in a single process, so where it runs does not change it. The results are
   gathered and every process selects the LRs the same way; the main process writes results.json.

Without a cache (`--no-cache`) the processes would have nothing to share features through: refused
(`--recompute`, which needs no cache, divides the probes and lets each process run the encoder itself).

A failure in one process (bad audio, a full disk) is raised in every process at the next collective, so
no process is left waiting for one that has stopped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SpeechFTError


def launched() -> bool:
    """Under `accelerate launch` (or torchrun): the launcher's environment is set."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


class Ranks:
    """This process's place among the evaluation's processes: rank, world size, device, and collectives that
    carry failures across (one process, the default: all no-ops)."""

    def __init__(self, rank: int = 0, world: int = 1, device=None, gather: Callable | None = None):
        self.rank, self.world = rank, world
        self.device = torch.device(device or "cpu")
        self._gather = gather

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str | None) -> Ranks:
        """One process on `--device` (config.resolve_device: a one-line error for a device this machine
        lacks), or, under `accelerate launch`, this process of N on the device the launcher assigns."""
        from .config import resolve_device

        if not launched():
            return cls(device=resolve_device(device))
        from accelerate.utils import gather_object

        from .engine import start_processes

        state, dev = start_processes(device)  # the launcher's device wins (the main process says so)
        return cls(state.process_index, state.num_processes, dev, gather_object)

    def collect(self, fn: Callable[[], Any], main_only: bool = False) -> list:
        """Run `fn` in every process (or in the main one only) and gather what each returned, in rank order.
        If it failed anywhere, raise in every process: the failing one re-raises its own exception, the others
        a one-line SpeechFTError naming it."""
        value, error, exc = None, None, None
        if not main_only or self.main:
            try:
                value = fn()
            except Exception as e:  # carried to the other processes, then re-raised here
                exc = e
                error = str(e) if isinstance(e, SpeechFTError) else f"process {self.rank}: {type(e).__name__}: {e}"
        if self.world == 1:
            if exc is not None:
                raise exc
            return [value]
        outcomes = self._gather([(value, error)])
        for rank, (_, err) in enumerate(outcomes):
            if err is not None:
                if exc is not None:
                    raise exc
                raise SpeechFTError(err if err.startswith("process ") else f"process {rank}: {err}")
        return [v for v, _ in outcomes]

    def agree(self, fn: Callable[[], Any], main_only: bool = False):
        """`collect`, returning the main process's value (main_only) or this process's own."""
        values = self.collect(fn, main_only)
        return values[0] if main_only else values[self.rank]

    def open_entry(self, cache, key: str):
        """The cache entry `key` in every process, or None in every process: the main process decides (it
        verifies the entry and, if it is broken, deletes it), the others then open what it found."""
        found = {}

        def look():
            found["entry"] = cache.open(key)
            return found["entry"] is not None

        if not self.agree(look, main_only=True):
            return None

        def reopen():
            if not self.main:
                found["entry"] = cache.open(key, verify=False)  # the main process has just verified it
                if found["entry"] is None:
                    raise SpeechFTError(_not_shared(cache.root, self.rank))
            return True

        self.agree(reopen)
        return found["entry"]


def _not_shared(root: Path, rank: int) -> str:
    return (
        f"feature cache {root}: process {rank} does not see what process 0 writes there; under accelerate "
        "launch the cache must be one folder all processes share (--cache DIR on a shared file system)"
    )


def check_shared_cache(ranks: Ranks, cache) -> None:
    """Before any work: every process sees a file the main process writes into the cache folder."""
    if ranks.world == 1:
        return
    token = ranks.collect(lambda: uuid.uuid4().hex if ranks.main else None)[0]
    marker = cache.root / f".shared-{token}"

    def write():
        cache.root.mkdir(parents=True, exist_ok=True)
        marker.write_text("speechft: a check that every process sees this folder; safe to delete\n")

    ranks.agree(write, main_only=True)

    def see():
        if not marker.exists():
            raise SpeechFTError(_not_shared(cache.root, ranks.rank))

    try:
        ranks.agree(see)
    finally:
        if ranks.main:
            marker.unlink(missing_ok=True)


# ---- phase 1: one entry extracted by all processes, written once -------------------------------------
def extract_shared(provider, split: str, key: str, fields: dict) -> None:
    """Fill the missing cache entry `key` (one split) with the processes' shares (module docstring)."""
    from .feature_cache import write_error
    from .features import FEATURE_DTYPES, assemble_features, extract_batches, split_batches
    from .io_utils import atomic_dir

    ranks, cache, task, cfg = provider.ranks, provider.cache, provider.task, provider.cfg
    source, kind = provider.source, provider.kind
    parts = cache.root / f".parts-{key}"

    def extract_mine():
        parts.mkdir(parents=True, exist_ok=True)
        mine = extract_batches(
            source, task, split, kind, cfg, keep=lambda k: k % ranks.world == ranks.rank, progress=provider.progress
        )
        try:
            with atomic_dir(parts / f"rank-{ranks.rank:05d}", overwrite=True) as tmp:
                for k, indices, arrays in mine:
                    x = np.stack(arrays) if kind == "pooled" else np.concatenate(arrays)
                    np.save(tmp / f"{k:07d}.x.npy", x, allow_pickle=False)
                    np.save(tmp / f"{k:07d}.i.npy", np.array([indices, [len(a) for a in arrays]]), allow_pickle=False)
        except OSError as e:
            err = write_error(cache.root, e)
            if err is None:
                raise
            raise err from e

    def assemble():
        n_batches = len(split_batches(task, split, cfg))
        shape = (source.num_states, source.dim)
        try:
            with cache.write(key, fields) as w:
                batches = _replay(parts, n_batches, ranks.world, kind, cache.root)
                assemble_features(len(task.split(split)), kind, shape, FEATURE_DTYPES[cfg.dtype], batches, w.add)
                w.info = provider.entry_info(split)
        finally:
            shutil.rmtree(parts, ignore_errors=True)

    try:
        ranks.agree(extract_mine)
        ranks.agree(assemble, main_only=True)
    finally:
        if ranks.main:
            shutil.rmtree(parts, ignore_errors=True)


def _replay(parts: Path, n_batches: int, world: int, kind: str, root: Path):
    """The processes' batches in batch order, as extract_batches yields them in one process."""
    for k in range(n_batches):
        rank = k % world
        folder = parts / f"rank-{rank:05d}"
        if not (folder / f"{k:07d}.i.npy").exists():
            raise SpeechFTError(_not_shared(root, rank))
        indices, lengths = np.load(folder / f"{k:07d}.i.npy", allow_pickle=False)
        x = np.load(folder / f"{k:07d}.x.npy", allow_pickle=False)
        if kind == "pooled":
            arrays = list(x)
        else:
            arrays = np.split(x, np.cumsum(lengths)[:-1])
        yield k, indices.tolist(), arrays


# ---- phase 2: the probe grid ---------------------------------------------------------------------------
def divide(ranks: Ranks, jobs: list, run: Callable[[Any], Any]) -> list:
    """Run job j in process j mod N; every process gets every result, in job order."""
    shares = ranks.collect(lambda: {j: run(jobs[j]) for j in range(ranks.rank, len(jobs), ranks.world)})
    results = {}
    for share in shares:
        results.update(share)
    return [results[j] for j in range(len(jobs))]
