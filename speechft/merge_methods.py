"""Merge methods: small registered objects with declared parameters and a paper reference.

Every method has the same shape: from the pre-trained weights theta0 and the fine-tuned
weights theta_i it builds a *target* (the alpha = 1 point) for one tensor, and the merged
tensor is the interpolation theta0 + alpha * (target - theta0) (speechft.merge does that
step, once, for every caller). For `linear` the target is the mean fine-tuned model, so
alpha = 0.25 is Speech-FT's 25 % fine-tuned / 75 % pre-trained. Parameters are declared
(`Param`) and validated before any file is read (the arcee-ai/mergekit layout). A method that
needs whole-model statistics first (TIES' global trim threshold) measures them in `prepare`,
from walks over the task vectors that the caller supplies (files re-read, or state dicts).

Pure maths on fp32 tensors: no files, no folders, no encoder families.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import SpeechFTError

# A task vector, walked tensor by tensor: each call of a `TaskVectors` walks every merged
# tensor once, yielding per tensor [theta_i - theta0 for each fine-tuned model i] in fp32.
# Callers re-read (files) or recompute (state dicts) at each walk, so memory is one tensor.
TaskVectors = Callable[[], Iterable[list[torch.Tensor]]]


@dataclass(frozen=True)
class Param:
    """One declared method parameter. `parse` converts a value (CLI string or Python
    object) and raises ValueError with the reason when it makes no sense."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def parse(v):
        if isinstance(v, bool):
            raise ValueError("must be a number")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not math.isfinite(x):
            raise ValueError("must be a finite number")
        below = lo is not None and (x <= lo if lo_open else x < lo)
        above = hi is not None and (x >= hi if hi_open else x > hi)
        if below or above:
            raise ValueError(
                f"must be in {'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, "
                f"{'inf' if hi is None else f'{hi:g}'}{')' if hi_open else ']'}"
            )
        return x

    return parse


def integer(v):
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError("must be an integer")
    try:
        return int(str(v), 10) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        raise ValueError("must be an integer") from None


def choice(*options: str):
    def parse(v):
        if str(v) not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return str(v)

    return parse


def alpha_param(default, meaning: str) -> Param:
    return Param("alpha", default, f"merge coefficient: {meaning}", real())


class MergeMethod:
    """Base: subclasses declare name, title, reference, params and implement `target`."""

    name: ClassVar[str]
    title: ClassVar[str]
    reference: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    aliases: ClassVar[dict[str, str]] = {"lambda": "alpha"}  # the task-arithmetic papers call alpha lambda

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validate user parameters and fill defaults; one-line SpeechFTError on nonsense."""
        declared = {p.name: p for p in self.params}
        out: dict[str, Any] = {}
        for raw_name, value in given.items():
            name = self.aliases.get(raw_name, raw_name)
            if name not in declared:
                raise SpeechFTError(
                    f"merge method '{self.name}' has no parameter '{raw_name}'; its parameters: {', '.join(declared)}"
                )
            if value is None:
                continue
            try:
                out[name] = declared[name].parse(value)
            except ValueError as e:
                raise SpeechFTError(
                    f"merge parameter {raw_name}={value!r} for method '{self.name}' {e} ({declared[name].help})"
                ) from None
        for p in self.params:
            out.setdefault(p.name, p.default)
        return self.finish(out)

    def finish(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def prepare(self, params: dict[str, Any], task_vectors: TaskVectors) -> dict[str, Any]:
        """Whole-model statistics that `target` needs before its first tensor (TIES' global
        trim threshold), measured by walking `task_vectors`; callers run `target` with
        {**params, **statistics} and record the statistics. Most methods work tensor by
        tensor and measure nothing (no walk, so no extra pass over the files)."""
        return {}

    def target(self, key: str, theta0: torch.Tensor, thetas: list[torch.Tensor], params: dict) -> torch.Tensor:
        """The alpha = 1 point for one tensor (all fp32, same shape); `params` includes `prepare`'s statistics."""
        raise NotImplementedError

    def describe(self) -> str:
        ps = ", ".join(f"{p.name}={'auto' if p.default is None else p.default}" for p in self.params)
        return f"{self.name}: {self.title}. Parameters (defaults): {ps}. Reference: {self.reference}."


MERGE_METHODS: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    MERGE_METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> MergeMethod:
    if name not in MERGE_METHODS:
        raise SpeechFTError(f"unknown merge method '{name}'; choose one of {', '.join(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def keep_count(n: int, k: float) -> int:
    """How many of n entries a k % trim keeps: at least one, rounded up."""
    return max(1, math.ceil(n * k / 100.0))


def trim_below(delta: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero the entries of a task vector whose magnitude is below `threshold`. Entries tied
    with it are all kept, so the result does not depend on sort order."""
    return delta * (delta.abs() >= threshold)


def trim_top_k(delta: torch.Tensor, k: float) -> torch.Tensor:
    """Keep the k % largest-magnitude entries of one tensor's task vector, zero the rest
    (TIES' `scope=tensor`, as mergekit trims; the paper's `scope=global` threshold is
    `global_top_k_thresholds`)."""
    n = delta.numel()
    keep = keep_count(n, k)
    if keep >= n:
        return delta
    threshold = delta.abs().reshape(-1).kthvalue(n - keep + 1).values.item()
    return trim_below(delta, threshold)


_LOW_BITS = 15  # walk 1 counts |delta| by its top 16 non-sign bits, walk 2 by the low 15


def _magnitude_bits(delta: torch.Tensor) -> torch.Tensor:
    # With the sign bit clear, a float32's bit pattern read as an int32 orders like its value.
    return delta.abs().reshape(-1).view(torch.int32)


def _rank_in_histogram(hist: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bin holding the rank-th largest entry (1-based) and that entry's rank inside the bin."""
    from_top = hist.flip(0).cumsum(0)  # from_top[j]: entries in the j + 1 highest bins
    j = int(torch.searchsorted(from_top, torch.tensor(rank)))
    return len(hist) - 1 - j, rank - (int(from_top[j - 1]) if j else 0)


def global_top_k_thresholds(task_vectors: TaskVectors, k: float) -> list[float]:
    """Per fine-tuned model, the magnitude of the `keep_count(n, k)`-th largest entry of its
    whole task vector (all n merged entries of all tensors): TIES' trim, one threshold per task
    vector as in the paper. 0.0 where nothing is trimmed (k = 100).

    Exact, in two walks of `task_vectors`, with two histograms per model as the only state
    (radix select on the float32 bit pattern): walk 1 counts the entries per 16-bit prefix and
    finds the prefix that holds the threshold; walk 2 counts the remaining 15 bits of the
    entries with that prefix, which pins the threshold down to the bit. (The paper's code takes a
    kthvalue over the flattened task vector, which needs the whole model in memory.)"""
    high: list[torch.Tensor] = []
    sizes: list[int] = []
    for deltas in task_vectors():
        if not high:
            high = [torch.zeros(1 << (31 - _LOW_BITS), dtype=torch.int64) for _ in deltas]
            sizes = [0] * len(deltas)
        for i, d in enumerate(deltas):
            high[i] += torch.bincount(_magnitude_bits(d) >> _LOW_BITS, minlength=len(high[i]))
            sizes[i] += d.numel()
    # Per model: None (everything kept) or (prefix holding the threshold, its rank inside the prefix).
    plans = [None if keep_count(n, k) >= n else _rank_in_histogram(h, keep_count(n, k)) for h, n in zip(high, sizes)]
    low = [torch.zeros(1 << _LOW_BITS, dtype=torch.int64) for _ in plans]
    if any(plans):
        for deltas in task_vectors():
            for d, plan, hist in zip(deltas, plans, low):
                if plan is not None:
                    b = _magnitude_bits(d)
                    hist += torch.bincount(b[(b >> _LOW_BITS) == plan[0]] & ((1 << _LOW_BITS) - 1), minlength=len(hist))
    thresholds = []
    for plan, hist in zip(plans, low):
        if plan is None:
            thresholds.append(0.0)
            continue
        rest, _ = _rank_in_histogram(hist, plan[1])
        bits = torch.tensor([(plan[0] << _LOW_BITS) | rest], dtype=torch.int32)
        thresholds.append(bits.view(torch.float32).item())
    return thresholds


def disjoint_mean(deltas: list[torch.Tensor]) -> torch.Tensor:
    """TIES' elect + disjoint merge: per entry, the sign of the summed task vectors wins
    (a zero sum elects +), then average only the entries that agree with it (zeros never
    count)."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total += d
    elected = torch.where(total >= 0, 1.0, -1.0)
    acc = torch.zeros_like(total)
    count = torch.zeros_like(total)
    for d in deltas:
        agree = torch.sign(d) == elected
        acc += d * agree
        count += agree
    return acc / count.clamp(min=1)


def dare_keep_mask(seed: int, key: str, index: int, shape: Sequence[int], p: float) -> torch.Tensor:
    """DARE's Bernoulli keep-mask for fine-tuned model `index`'s tensor `key`.

    Seeded from (seed, index, key) alone, so the mask does not depend on processing
    order, sharding, or whether the merge runs from files or in memory."""
    digest = hashlib.sha256(f"{seed}\0{index}\0{key}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.rand(tuple(shape), generator=g) >= p


@register
class Linear(MergeMethod):
    name = "linear"
    title = "Speech-FT / WiSE-FT weight interpolation: theta0 + alpha * mean_i(theta_i - theta0)"
    reference = (
        "Lin et al., Speech-FT, IEEE/ACM TASLP 2026, arXiv:2502.12672; "
        "Wortsman et al., WiSE-FT, CVPR 2022, arXiv:2109.01903"
    )
    params = (alpha_param(0.25, "share of the (mean) fine-tuned model; Speech-FT uses 0.25"),)

    def target(self, key, theta0, thetas, params):
        if len(thetas) == 1:  # the exact fine-tuned weights, so alpha = 1 returns them bit for bit
            return thetas[0]
        acc = thetas[0].clone()
        for t in thetas[1:]:
            acc += t
        return acc.div_(len(thetas))


@register
class TaskArithmetic(MergeMethod):
    name = "task-arithmetic"
    title = "task arithmetic: theta0 + alpha * sum_i(theta_i - theta0) (alpha is the paper's lambda)"
    reference = "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023, arXiv:2212.04089"
    params = (alpha_param(1.0, "scale of the summed task vectors (lambda)"),)

    def target(self, key, theta0, thetas, params):
        acc = thetas[0] - theta0
        for t in thetas[1:]:
            acc += t - theta0
        return acc.add_(theta0)


@register
class Ties(MergeMethod):
    name = "ties"
    title = "TIES-merging: trim to top-k% magnitude, elect sign, disjoint mean, scale by alpha"
    reference = "Yadav et al., TIES-Merging, NeurIPS 2023, arXiv:2306.01708"
    params = (
        Param("k", 20.0, "percent of each task vector's entries kept", real(0, 100, lo_open=True)),
        alpha_param(1.0, "scale of the merged task vector (lambda)"),
        Param(
            "scope",
            "global",
            "where the top k% is taken: global (over each task vector as a whole, the paper's) "
            "or tensor (in each tensor on its own, as mergekit)",
            choice("global", "tensor"),
        ),
    )

    def prepare(self, params, task_vectors):
        if params["scope"] == "tensor":
            return {}
        return {"thresholds": global_top_k_thresholds(task_vectors, params["k"])}

    def target(self, key, theta0, thetas, params):
        if params["scope"] == "global":
            deltas = [trim_below(t - theta0, tau) for t, tau in zip(thetas, params["thresholds"])]
        else:
            deltas = [trim_top_k(t - theta0, params["k"]) for t in thetas]
        return disjoint_mean(deltas).add_(theta0)


@register
class Dare(MergeMethod):
    name = "dare"
    title = "DARE: drop task-vector entries with rate p, rescale by 1/(1-p), then linear or TIES"
    reference = "Yu et al., Language Models are Super Mario (DARE), ICML 2024, arXiv:2311.03099"
    params = (
        Param("p", 0.5, "drop rate", real(0, 1, hi_open=True)),
        Param(
            "combine",
            "linear",
            "how the sparsified task vectors combine: linear (mean) or ties "
            "(sign election + disjoint mean; DARE replaces the trim)",
            choice("linear", "ties"),
        ),
        Param("seed", 0, "seed of the drop masks", integer),
        alpha_param(None, "scale of the combined task vector (default 0.25 for linear, 1.0 for ties)"),
    )

    def finish(self, params):
        if params["alpha"] is None:
            params["alpha"] = 0.25 if params["combine"] == "linear" else 1.0
        return params

    def target(self, key, theta0, thetas, params):
        p = params["p"]
        deltas = []
        for i, t in enumerate(thetas):
            d = t - theta0
            if p > 0:
                d = d.mul_(dare_keep_mask(params["seed"], key, i, d.shape, p)).div_(1.0 - p)
            deltas.append(d)
        if params["combine"] == "ties":
            return disjoint_mean(deltas).add_(theta0)
        acc = deltas[0]
        for d in deltas[1:]:
            acc += d
        return acc.div_(len(deltas)).add_(theta0)
