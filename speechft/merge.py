"""Merging fine-tuned encoders back into their pre-trained encoder (Speech-FT stage 2).

    speechft merge --pretrained PRE --finetuned FT [FT ...] [--alpha 0.25] [--method linear] --out DIR

Every method here has the same shape: from the pre-trained weights theta0 and the
fine-tuned weights theta_i it builds a *target* (the alpha = 1 point), and the merged
weights are the interpolation theta0 + alpha * (target - theta0). For `linear` the target
is the mean fine-tuned model, so alpha = 0.25 is Speech-FT's 25 % fine-tuned / 75 %
pre-trained. Because alpha only scales at the end, an alpha sweep computes the targets
once (`InterpolationPath`) and each alpha costs one lerp per tensor.

Each method is one small registered object with a paper reference and declared,
validated parameters (the arcee-ai/mergekit layout). Tensors that are never merged keep
theta0's bytes: integer/bool buffers, parameters the encoder adapter declares
pre-training-only (HuBERT's `final_proj`, ...), and names matching `--exclude`.

Files are streamed: every input is parsed from its safetensors header and validated
(family, config, names, shapes, dtypes) before anything is written; then tensors are read
one key at a time with plain positional reads and the output is written incrementally
(sharded when large), so peak extra memory is a few tensors. We do not use
`safetensors.safe_open` for this: it memory-maps the file, and every page it touches
counts in the process's RSS until the kernel reclaims it, i.e. up to the whole input.
Inputs are hashed (sha256) during that same single read, so provenance costs no second
pass. Arithmetic is fp32; results are saved in theta0's dtype.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .errors import SpeechFTError
from .io_utils import atomic_dir, read_json, write_json
from .provenance import FORMAT_VERSION, PROVENANCE_FILE, inherited, lineage_entry, read_provenance
from .safetensors_io import (
    DEFAULT_MAX_SHARD,
    Checkpoint,
    ShardedWriter,
    Spec,
    all_finite,
    check_finite,
    parse_size,
    safetensors_order,
)

# Config keys that change no weight: fine-tuning may set them differently from theta0.
_CONFIG_KEYS_IGNORED = re.compile(r"dropout|^layerdrop$|^mask_|^apply_spec_augment$|^use_cache$")

# ----------------------------------------------------------------------------------------
# Merge methods: parameters and the registry
# ----------------------------------------------------------------------------------------


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

    def target(self, key: str, theta0: torch.Tensor, thetas: list[torch.Tensor], params: dict) -> torch.Tensor:
        """The alpha = 1 point for one tensor (all fp32, same shape)."""
        raise NotImplementedError

    def describe(self) -> str:
        ps = ", ".join(f"{p.name}={'auto' if p.default is None else p.default}" for p in self.params)
        return f"{self.name}: {self.title}. Parameters (defaults): {ps}. Reference: {self.reference}."


METHODS: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise SpeechFTError(f"unknown merge method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def trim_top_k(delta: torch.Tensor, k: float) -> torch.Tensor:
    """Keep the k % largest-magnitude entries of one tensor's task vector, zero the rest.

    Per tensor, as mergekit does (the TIES paper trims over the whole task vector): a
    per-tensor threshold keeps the merge streaming. Entries tied with the threshold are
    all kept, so the result does not depend on sort order."""
    n = delta.numel()
    keep = max(1, math.ceil(n * k / 100.0))
    if keep >= n:
        return delta
    mag = delta.abs().reshape(-1)
    threshold = mag.kthvalue(n - keep + 1).values
    return delta * (delta.abs() >= threshold)


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
        Param("k", 20.0, "percent of each task vector's entries kept (per tensor)", real(0, 100, lo_open=True)),
        alpha_param(1.0, "scale of the merged task vector (lambda)"),
    )

    def target(self, key, theta0, thetas, params):
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


def merge_tensor(
    method: MergeMethod, params: dict, key: str, theta0: torch.Tensor, thetas: list[torch.Tensor]
) -> torch.Tensor:
    """Merge one tensor: fp32 arithmetic, result in theta0's dtype. alpha = 0 is theta0 itself."""
    alpha = params["alpha"]
    if alpha == 0:
        return theta0
    t0 = theta0.float()
    target = method.target(key, t0, [t.float() for t in thetas], params)
    return interpolate(key, t0, target, alpha, theta0.dtype, inplace=t0.data_ptr() != theta0.data_ptr())


def interpolate(
    key: str, t0: torch.Tensor, target: torch.Tensor, alpha: float, dtype: torch.dtype, inplace: bool = False
) -> torch.Tensor:
    """theta0 + alpha * (target - theta0) in fp32, returned in `dtype`; refuses a result that
    does not fit `dtype` (fp16 overflows at 65504). `inplace` reuses t0's memory (the
    streaming merge owns it; a caller's state dict is never modified)."""
    # torch.lerp computes from the nearer end, so alpha = 1 gives `target` exactly.
    merged = t0.lerp_(target, float(alpha)) if inplace else torch.lerp(t0, target, float(alpha))
    if not fits(merged, dtype):
        raise SpeechFTError(
            f"merged tensor '{key}' overflows {str(dtype).replace('torch.', '')} with "
            f"alpha={alpha:g}; use a smaller alpha"
        )
    return merged.to(dtype)


def fits(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Is every entry of fp32 `x` finite once cast to `dtype`? (cheap range test first)"""
    if torch.finfo(dtype).max >= torch.finfo(x.dtype).max:
        return all_finite(x)
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    big = torch.finfo(dtype).max
    return bool(lo >= -big and hi <= big) or all_finite(x.to(dtype))  # NaN fails both tests


# ----------------------------------------------------------------------------------------
# Which tensors merge, and validation of the inputs against each other
# ----------------------------------------------------------------------------------------

COPIED_KINDS = ("integer", "pretraining-only", "excluded")


def compile_patterns(patterns: Iterable[str] | str) -> list[re.Pattern]:
    out = []
    for p in [patterns] if isinstance(patterns, str) else (patterns or ()):
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise SpeechFTError(f"--exclude pattern {p!r} is not a valid regular expression ({e})") from None
    return out


def copied_kind(key: str, dtype: torch.dtype, family_cls, exclude: list[re.Pattern]) -> str | None:
    """Why `key` keeps theta0's value (None: it is merged)."""
    if not dtype.is_floating_point:
        return "integer"
    if family_cls is not None and family_cls.is_pretraining_only(key):
        return "pretraining-only"
    if any(r.search(key) for r in exclude):
        return "excluded"
    return None


def prefix_hint(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """Explain a key-set mismatch that is really a name prefix (DDP's `module.`,
    torch.compile's `_orig_mod.`, a whole-model save's `model.` or `hubert.` ...)."""
    missing, unexpected = set(missing), set(unexpected)
    extra: dict[str, int] = {}
    lacking: dict[str, int] = {}
    for u in unexpected:
        parts = u.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in missing:
                pre = ".".join(parts[:i]) + "."
                extra[pre] = extra.get(pre, 0) + 1
                break
    for m in missing:
        parts = m.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in unexpected:
                pre = ".".join(parts[:i]) + "."
                lacking[pre] = lacking.get(pre, 0) + 1
                break
    if extra and max(extra.values()) >= max(lacking.values(), default=0):
        pre = max(extra, key=extra.get)
        return (
            f"the fine-tuned names carry an extra prefix '{pre}' ({extra[pre]} names; typical of DDP "
            f"'module.', torch.compile '_orig_mod.' or a whole-model save): re-save the encoder alone or strip it"
        )
    if lacking:
        pre = max(lacking, key=lacking.get)
        return (
            f"the fine-tuned names lack the prefix '{pre}' that the pre-trained names have "
            f"({lacking[pre]} names): save both from the same model class"
        )
    return "the two checkpoints come from different architectures"


def check_compatible(
    pre_name: str,
    pre: Spec,
    ft_name: str,
    ft: Spec,
    family_cls,
    exclude: list[re.Pattern],
    ft_file: Callable[[str], str] | None = None,
) -> None:
    """Refuse, in one line, a fine-tuned checkpoint whose tensors cannot merge into `pre`.
    `ft_file(key)` names the file holding a key (a shard), for the per-tensor messages."""
    where = ft_file or (lambda k: ft_name)
    copied = {k for k, (dt, _) in pre.items() if copied_kind(k, dt, family_cls, exclude)}
    missing = sorted(set(pre) - set(ft) - copied)
    unexpected = sorted(
        k for k in set(ft) - set(pre) if not (family_cls is not None and family_cls.is_pretraining_only(k))
    )
    if missing or unexpected:
        show = "; ".join(
            s
            for s in (
                f"missing {len(missing)} (e.g. '{missing[0]}')" if missing else "",
                f"unexpected {len(unexpected)} (e.g. '{unexpected[0]}')" if unexpected else "",
            )
            if s
        )
        raise SpeechFTError(
            f"{ft_name}: tensor names differ from {pre_name} ({show}); {prefix_hint(missing, unexpected)}"
        )
    for k, (dt, shape) in pre.items():
        if k in copied or k not in ft:
            continue
        fdt, fshape = ft[k]
        if tuple(fshape) != tuple(shape):
            raise SpeechFTError(
                f"{where(k)}: tensor '{k}' has shape {list(fshape)} but {pre_name} has "
                f"{list(shape)}; these checkpoints are different architectures"
            )
        if not fdt.is_floating_point:
            raise SpeechFTError(
                f"{where(k)}: tensor '{k}' is {str(fdt).replace('torch.', '')} but {pre_name} "
                f"stores it as {str(dt).replace('torch.', '')}; it cannot be interpolated"
            )


# ----------------------------------------------------------------------------------------
# In memory: for `sweep` and for library users holding state dicts
# ----------------------------------------------------------------------------------------


def _spec_of(sd: dict[str, torch.Tensor]) -> Spec:
    return {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}


def _resolve_family(family):
    if family is None:
        return None
    from .encoders import family_class

    return family_class(family)


class InterpolationPath:
    """The straight line from theta0 to a method's target, held in memory.

    Built once (the method's work: task vectors, trimming, drop masks); `at(alpha)` then
    costs one lerp per tensor, which is what an alpha sweep needs. Copied tensors
    (integer, pre-training-only, excluded) are theta0's own tensor objects at every alpha
    (not copies), as are all tensors at alpha = 0."""

    def __init__(
        self,
        theta0: dict[str, torch.Tensor],
        thetas: Sequence[dict[str, torch.Tensor]],
        method: str = "linear",
        family: str | None = None,
        exclude: Iterable[str] = (),
        **params,
    ):
        if not thetas:
            raise SpeechFTError("merge needs at least one fine-tuned model")
        self.method = get_method(method)
        self.params = self.method.resolve(params)
        family_cls = _resolve_family(family)
        patterns = compile_patterns(exclude)
        pre = _spec_of(theta0)
        for i, sd in enumerate(thetas):
            check_compatible("theta0", pre, f"thetas[{i}]", _spec_of(sd), family_cls, patterns)
        self.theta0 = theta0
        self.copied: dict[str, str] = {}
        self.targets: dict[str, torch.Tensor] = {}
        for k, t in theta0.items():
            kind = copied_kind(k, t.dtype, family_cls, patterns)
            if kind:
                self.copied[k] = kind
                continue
            t0 = t.detach().float()
            check_finite(t0, "theta0", k)
            ts = []
            for i, sd in enumerate(thetas):
                x = sd[k].detach().float()
                check_finite(x, f"thetas[{i}]", k)
                ts.append(x)
            self.targets[k] = self.method.target(k, t0, ts, self.params)

    @classmethod
    def from_folders(
        cls,
        pretrained: str | os.PathLike,
        finetuned: Sequence[str | os.PathLike],
        method: str = "linear",
        exclude: Iterable[str] = (),
        **params,
    ) -> InterpolationPath:
        """Load encoder folders (validated exactly as `merge_encoders` validates them) and
        build the path. Holds theta0 and the target in memory: meant for small encoders."""
        get_method(method).resolve(params)  # nonsense parameters fail before any reading
        inputs = _open_inputs(pretrained, finetuned)
        try:
            family_cls = _resolve_family(inputs[0].family)
            patterns = compile_patterns(exclude)
            pre_spec = inputs[0].ckpt.spec()
            for ft in inputs[1:]:
                check_compatible(
                    str(inputs[0].path),
                    pre_spec,
                    str(ft.path),
                    ft.ckpt.spec(),
                    family_cls,
                    patterns,
                    lambda k, ft=ft: str(ft.ckpt.file_of(k)),
                )
            state = [{k: _read_checked(i, k) for k in i.ckpt.spec()} for i in inputs]
        finally:
            for i in inputs:
                i.ckpt.close()
        return cls(state[0], state[1:], method=method, family=inputs[0].family, exclude=exclude, **params)

    def at(self, alpha: float | None = None) -> dict[str, torch.Tensor]:
        alpha = self.params["alpha"] if alpha is None else self.method.resolve({"alpha": alpha})["alpha"]
        out = {}
        for k, t in self.theta0.items():
            if k in self.copied or alpha == 0:
                out[k] = t
            else:
                t0 = t.detach().float()
                out[k] = interpolate(k, t0, self.targets[k], alpha, t.dtype, inplace=t0.data_ptr() != t.data_ptr())
        return out


def merge_state_dicts(
    theta0: dict[str, torch.Tensor],
    thetas: Sequence[dict[str, torch.Tensor]],
    method: str = "linear",
    family: str | None = None,
    exclude: Iterable[str] = (),
    **params,
) -> dict[str, torch.Tensor]:
    """Merge state dicts in memory (same rules as `merge_encoders`). `family` names the
    encoder family whose pre-training-only parameters stay theta0's."""
    if not thetas:
        raise SpeechFTError("merge needs at least one fine-tuned model")
    m = get_method(method)
    resolved = m.resolve(params)
    family_cls = _resolve_family(family)
    patterns = compile_patterns(exclude)
    pre = _spec_of(theta0)
    for i, sd in enumerate(thetas):
        check_compatible("theta0", pre, f"thetas[{i}]", _spec_of(sd), family_cls, patterns)
    out = {}
    for k, t in theta0.items():
        if copied_kind(k, t.dtype, family_cls, patterns):
            out[k] = t
            continue
        check_finite(t, "theta0", k)
        for i, sd in enumerate(thetas):
            check_finite(sd[k], f"thetas[{i}]", k)
        out[k] = merge_tensor(m, resolved, k, t.detach(), [sd[k].detach() for sd in thetas])
    return out


# ----------------------------------------------------------------------------------------
# Merging encoder folders
# ----------------------------------------------------------------------------------------


@dataclass
class Input:
    path: Path
    family: str
    ckpt: Checkpoint
    provenance: dict = field(default_factory=dict)


def _read_checked(inp: Input, key: str) -> torch.Tensor:
    t = inp.ckpt.read(key)
    check_finite(t, str(inp.ckpt.file_of(key)), key)
    return t


def _config_diff(pre: dict, ft: dict) -> list[str]:
    keys = sorted(k for k in set(pre) | set(ft) if not _CONFIG_KEYS_IGNORED.search(k))
    return [
        f"{k} {json.dumps(ft.get(k, '(absent)'))} vs {json.dumps(pre.get(k, '(absent)'))}"
        for k in keys
        if pre.get(k) != ft.get(k)
    ]


def _open_inputs(pretrained, finetuned) -> list[Input]:
    from .encoders import config_summary, detect_family

    inputs: list[Input] = []
    try:
        for p in [pretrained, *finetuned]:
            p = Path(p)
            fam = detect_family(p)  # refuses missing folders, Hub ids, unknown model types
            inputs.append(Input(p, fam, Checkpoint(p), read_provenance(p)))
        pre = inputs[0]
        pre_cfg = config_summary(pre.path)
        for ft in inputs[1:]:
            if ft.family != pre.family:
                raise SpeechFTError(
                    f"{ft.path} is a {ft.family} encoder but {pre.path} is {pre.family}; "
                    "merge fine-tuned encoders into the pre-trained encoder they came from"
                )
            diff = _config_diff(pre_cfg, config_summary(ft.path))
            if diff:
                more = f" (+{len(diff) - 2} more)" if len(diff) > 2 else ""
                raise SpeechFTError(
                    f"{ft.path}/config.json differs from {pre.path}/config.json: "
                    f"{'; '.join(diff[:2])}{more}; merging needs the same architecture"
                )
    except BaseException:
        for i in inputs:
            i.ckpt.close()
        raise
    return inputs


def merge_encoders(
    pretrained: str | os.PathLike,
    finetuned: Sequence[str | os.PathLike],
    method: str = "linear",
    out: str | os.PathLike | None = None,
    exclude: Iterable[str] = (),
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    progress: bool | None = None,
    **params,
) -> Path:
    """Merge fine-tuned encoder folders into their pre-trained folder; write `out`.

    Everything is validated from headers and configs before a byte is written; the
    output appears only when complete (temp folder + rename). `params` are the method's
    (alpha, k, p, combine, seed); `progress` None shows a bar on a terminal only. Returns `out`."""
    if out is None:
        raise SpeechFTError("merge needs an output folder (--out)")
    finetuned = [finetuned] if isinstance(finetuned, (str, os.PathLike)) else list(finetuned)
    if not finetuned:
        raise SpeechFTError("merge needs at least one fine-tuned encoder (--finetuned)")
    out = Path(out)
    for p in [pretrained, *finetuned]:
        if out.resolve() == Path(p).resolve():
            raise SpeechFTError(f"--out {out} is one of the inputs; write the merge to a new folder")
    m = get_method(method)
    resolved = m.resolve(params)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    patterns = compile_patterns(exclude)
    shard_limit = parse_size(max_shard_size)
    if out.exists() and not overwrite:  # fail before the (possibly long) validation
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")

    inputs = _open_inputs(pretrained, finetuned)
    try:
        from .encoders import family_class

        pre, fts = inputs[0], inputs[1:]
        fam_cls = family_class(pre.family)
        pre_spec = pre.ckpt.spec()
        for ft in fts:
            check_compatible(
                str(pre.path),
                pre_spec,
                str(ft.path),
                ft.ckpt.spec(),
                fam_cls,
                patterns,
                lambda k, ft=ft: str(ft.ckpt.file_of(k)),
            )
        kinds = {k: copied_kind(k, dt, fam_cls, patterns) for k, (dt, _) in pre_spec.items()}
        order = safetensors_order(pre_spec)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            writer = ShardedWriter(tmp, pre_spec, order, shard_limit)
            try:
                _stream(m, resolved, pre, fts, kinds, order, writer, progress)
                out_hashes = writer.close()
            except BaseException:
                writer.abort()
                raise
            in_hashes = [i.ckpt.sha256() for i in inputs]
            _copy_side_files(pre.path, tmp)
            write_json(tmp / PROVENANCE_FILE, _provenance(m, resolved, inputs, in_hashes, out_hashes, kinds, exclude))
    finally:
        for i in inputs:
            i.ckpt.close()
    return out


def _stream(
    m: MergeMethod,
    params: dict,
    pre: Input,
    fts: list[Input],
    kinds: dict,
    order: list[str],
    writer: ShardedWriter,
    progress: bool | None,
) -> None:
    """Read, merge and write key by key, as a small pipeline: one reader thread per input
    file reads (and hashes, and checks) the next key while the main thread merges the
    current one and a writer thread writes (and hashes) the previous one. File reads,
    sha256 and torch ops release the GIL, so the stages overlap on separate cores. At most
    three keys are in flight, so memory stays at a few tensors."""
    from tqdm.auto import tqdm

    def read(inp: Input, key: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(raw tensor, its fp32 copy or None), checked finite. Converting here, in the
        reader threads, keeps the main thread free for the arithmetic."""
        raw = inp.ckpt.read(key)
        if kinds[key]:
            check_finite(raw, str(inp.ckpt.file_of(key)), key)
            return raw, None
        f32 = raw.float()
        check_finite(f32, str(inp.ckpt.file_of(key)), key)
        return raw, f32

    def submit_reads(pool, key):
        sources = [pre] if kinds[key] else [pre, *fts]
        return [pool.submit(read, inp, key) for inp in sources]

    def merge(key, t0, ts):
        raw, t0f = t0
        if kinds[key] or params["alpha"] == 0:
            return raw
        target = m.target(key, t0f, [f for _, f in ts], params)
        # t0f is ours (a fresh read or its fp32 copy): interpolate into it, no new buffer.
        return interpolate(key, t0f, target, params["alpha"], raw.dtype, inplace=True)

    def write(key, t):
        writer.write(key, t)
        bar.update(writer.nbytes[key])

    bar = tqdm(
        total=writer.total,
        unit="B",
        unit_scale=True,
        desc="merging",
        leave=False,
        disable=None if progress is None else not progress,
    )
    # The arithmetic is element-wise and memory-bound: torch's own worker threads would
    # only compete with the pipeline's (and, on a busy machine, stall on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with (
            concurrent.futures.ThreadPoolExecutor(1 + len(fts), thread_name_prefix="merge-read") as readers,
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="merge-write") as writers,
        ):
            pending = submit_reads(readers, order[0]) if order else []
            written = None
            for i, key in enumerate(order):
                t0, *ts = [f.result() for f in pending]
                # Reads of one file stay in key order (hashing relies on it): the next
                # key's reads start only once this key's are done.
                pending = submit_reads(readers, order[i + 1]) if i + 1 < len(order) else []
                merged = merge(key, t0, ts)
                if written is not None:
                    written.result()
                written = writers.submit(write, key, merged)
            if written is not None:
                written.result()
    finally:
        torch.set_num_threads(threads)
        bar.close()


def _copy_side_files(src: Path, dst: Path) -> None:
    """config.json byte for byte, plus remote-code modules (DeCoAR 2.0's decoar2_hf.py) and
    preprocessing configs, so the folder loads like its pre-trained parent."""
    for p in sorted(src.iterdir()):
        if p.is_file() and (
            p.name in ("config.json", "preprocessor_config.json", "generation_config.json") or p.suffix == ".py"
        ):
            shutil.copy2(p, dst / p.name)


def _provenance(
    m: MergeMethod, params: dict, inputs: list[Input], in_hashes: list[dict], out_hashes: dict, kinds: dict, exclude
) -> dict:
    pre = inputs[0]
    copied: dict[str, list[str]] = {k: [] for k in COPIED_KINDS}
    for key, kind in kinds.items():
        if kind:
            copied[kind].append(key)
    step = {
        "method": m.name,
        "params": params,
        "reference": m.reference,
        "exclude": list(exclude or ()),
        "pretrained": {"path": str(pre.path.resolve()), "weights_sha256": in_hashes[0]},
        "finetuned": [{"path": str(i.path.resolve()), "weights_sha256": h} for i, h in zip(inputs[1:], in_hashes[1:])],
    }
    chain = list(pre.provenance.get("merge_chain", [])) + [step]
    # Carry theta0's behaviour flags (e.g. normalize_waveform) forward; replace bookkeeping.
    prov = inherited(pre.provenance)
    p_desc = ", ".join(f"{k}={v}" for k, v in params.items())
    prov.update(
        {
            "format": FORMAT_VERSION,
            "family": pre.family,
            "source": f"speechft merge {m.name} ({p_desc}) of {len(inputs) - 1} fine-tuned encoder(s) into {pre.path}",
            "merge": {
                **step,
                "round": len(chain),
                "merged_tensors": sum(1 for k in kinds.values() if not k),
                "copied_tensors": copied,
            },
            "merge_chain": chain,
            "weights_sha256": out_hashes,
            "parents": [lineage_entry("pretrained", pre.path, pre.family, pre.provenance, in_hashes[0])]
            + [
                lineage_entry("finetuned", i.path, i.family, i.provenance, h) for i, h in zip(inputs[1:], in_hashes[1:])
            ],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return prov


# ----------------------------------------------------------------------------------------
# CLI: speechft merge
# ----------------------------------------------------------------------------------------


def _methods_help() -> str:
    import textwrap

    return "\n".join(
        textwrap.fill(m.describe(), width=100, initial_indent="  ", subsequent_indent="      ")
        for m in METHODS.values()
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "methods:\n" + _methods_help()
    p.add_argument("--pretrained", required=True, metavar="DIR", help="pre-trained encoder folder (theta0)")
    p.add_argument(
        "--finetuned",
        required=True,
        nargs="+",
        metavar="DIR",
        help="fine-tuned encoder folder(s) of the same architecture",
    )
    p.add_argument("--method", default="linear", choices=list(METHODS), help="merge method (default: linear)")
    p.add_argument("--alpha", default=None, help="merge coefficient (default: the method's, 0.25 for linear)")
    p.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="a method parameter, e.g. --set k=20 (ties), --set p=0.3 --set seed=1 (dare)",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="REGEX",
        help="tensor names (regex search) that keep theta0's weights",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output encoder folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--max-shard-size", default="5GB", help="largest weight file before sharding (default 5GB)")


def main(args) -> int:
    params: dict[str, Any] = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpeechFTError(f"--set {item!r}: expected PARAM=VALUE, e.g. --set k=20")
        params[name.strip()] = value.strip()
    if args.alpha is not None:
        params["alpha"] = args.alpha
    out = merge_encoders(
        args.pretrained,
        args.finetuned,
        method=args.method,
        out=args.out,
        exclude=args.exclude,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        **params,
    )
    prov = read_json(Path(out) / PROVENANCE_FILE)["merge"]
    copied = ", ".join(f"{len(v)} {k}" for k, v in prov["copied_tensors"].items() if v) or "none"
    p_desc = ", ".join(f"{k}={v}" for k, v in prov["params"].items())
    print(
        f"merged {len(args.finetuned)} fine-tuned encoder(s) into {args.pretrained} with {prov['method']} "
        f"({p_desc}): {prov['merged_tensors']} tensors merged, copied from theta0: {copied}"
    )
    print(f"wrote {out}")
    return 0
