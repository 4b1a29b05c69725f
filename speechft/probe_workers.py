"""A task's probes spread over the CPU cores: this process and forked children, one torch thread each.

A probe runs on one thread (probe_train.probe_threads says why), so on an N-core machine one process
leaves N - 1 cores idle while the CTC probes, most of `evaluate`'s time, multiply matrices. The (LR, seed)
pairs of one task are dealt to `workers` processes: this one and `workers - 1` children made by fork(),
which inherit the task's features (memory or the cache's memory maps) without copying or pickling them.
Each child trains its pairs and sends their results back as JSON through a pipe; it writes nothing.

The results are the ones one process gives, pair by pair: each pair seeds its own RNG and batch order
(train_probes), so where it runs does not change it (tests/test_probe_workers.py checks the equality;
benchmarks/bench_probe_workers.py measures the time). Only on the CPU (fork and CUDA do not mix: a GPU
trains its probes itself) and never under `accelerate launch`, whose processes already share the cores.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence

import torch

from .errors import SpeechFTError

# The default is one process per core, at most this many: each process holds its own standardised copy of
# one task's features (probe_train.STANDARDIZE_ONCE_BYTES at most), so a 64-core machine is not asked for
# 64 copies.
MAX_DEFAULT_WORKERS = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (taskset, cgroups' cpusets)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, device, world: int = 1) -> int:
    """How many processes train one task's probes: `workers` (None: one per usable core, at most
    MAX_DEFAULT_WORKERS); 1 on a GPU, and under accelerate launch (world > 1)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpeechFTError(f"--probe-workers {workers}: give a whole number >= 1 (1 = probes in this process only)")
    if torch.device(device).type != "cpu" or world > 1:
        return 1
    return workers if workers is not None else min(usable_cores(), MAX_DEFAULT_WORKERS)


def in_workers(
    train: Callable[[Sequence], list[dict]],
    pairs: Sequence,
    workers: int,
    on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """train(pairs) computed over `workers` processes: pair k in process k mod workers (this one is 0), the
    results in the order of `pairs`. on_done(n) is called when a child's n pairs arrive (this process's
    own report progress through `train` itself)."""
    shares = [list(range(w, len(pairs), workers)) for w in range(min(workers, len(pairs)))]
    if len(shares) <= 1:
        return train(pairs)
    ctx = multiprocessing.get_context("fork")
    children = []
    try:
        for share in shares[1:]:
            recv, send = ctx.Pipe(duplex=False)
            args = (send, train, [pairs[k] for k in share], os.getpid())
            child = ctx.Process(target=_child, args=args, daemon=True)
            child.start()
            send.close()  # the child holds the only write end: its death ends our read with EOFError
            children.append((child, recv, share))
        results: list = [None] * len(pairs)
        for k, r in zip(shares[0], train([pairs[k] for k in shares[0]])):
            results[k] = r
        for child, recv, share in children:
            for k, r in zip(share, _receive(child, recv)):
                results[k] = r
            if on_done:
                on_done(len(share))
        return results
    finally:
        for child, recv, _ in children:
            if child.is_alive():
                child.kill()
            child.join()
            recv.close()


def _child(send, train, pairs, parent: int) -> None:
    _die_with_parent(parent)
    try:
        message = {"results": train(pairs)}
    except BaseException as e:  # reported to the parent, which raises it as one line
        message = {"error": f"{e}" if isinstance(e, SpeechFTError) else f"{type(e).__name__}: {e}"}
    send.send_bytes(json.dumps(message).encode())
    send.close()


def _receive(child, recv) -> list[dict]:
    try:
        message = json.loads(recv.recv_bytes())
    except EOFError:
        child.join()
        raise SpeechFTError(
            f"a probe worker process died (exit code {child.exitcode}) before sending its results; "
            "if memory ran out, rerun with --probe-workers 1"
        ) from None
    if "error" in message:
        raise SpeechFTError(f"in a probe worker process: {message['error']}")
    return message["results"]


def _die_with_parent(parent: int) -> None:
    """Linux: this child gets SIGKILL when its parent dies (a killed evaluation leaves no probe running)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
