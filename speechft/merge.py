"""Merging fine-tuned encoders back into their pre-trained encoder (Speech-FT stage 2).

    speechft merge --pretrained PRE --finetuned FT [FT ...] [--alpha 0.25] [--method linear] --out DIR

The methods (merge_methods.py) each build a *target* per tensor, the alpha = 1 point; the merged
weights are the interpolation theta0 + alpha * (target - theta0), and that one step lives in
`InterpolationPath.point` for every caller: the streaming folder merge (`merge_encoders`), the
in-memory path an alpha sweep walks (`InterpolationPath.at`, built once, one lerp per tensor and
alpha) and `merge_state_dicts`. Tensors that are never merged keep theta0's bytes: integer/bool
buffers, parameters the encoder family declares pre-training-only (HuBERT's `final_proj`, ...),
and names matching `--exclude`.

Files are streamed: every input is parsed from its safetensors header and validated (family,
config, names, shapes, dtypes) before anything is written; then tensors are read one key at a
time with positional reads (safetensors_io) and the output is written incrementally (sharded when
large), so peak extra memory is a few tensors. Inputs are hashed (sha256) during their first
in-order read, so provenance costs no extra pass. A method that needs whole-model statistics
(TIES with scope=global: one trim threshold per task vector) walks the task vectors first, key by
key, twice: three reads of the inputs instead of one, memory still a few tensors. Arithmetic is
fp32; results are saved in theta0's dtype. Opening and checking the inputs is merge_checks.py's.
Nothing here imports transformers: family metadata comes from encoders/families.py (only an
extrapolated merge, alpha outside [0, 1], loads the result for merge_checks.check_forward).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import add_config_options, config_from_args
from .encoders.families import FamilyInfo, family_info
from .encoders.hub import resolve_encoder
from .errors import SpeechFTError
from .io_utils import atomic_dir, check_output_location, read_json, write_json
from .merge_checks import (
    COPIED_KINDS,
    MergeInput,
    check_alpha,
    check_compatible,
    check_forward,
    check_inputs,
    compile_patterns,
    copied_kind,
    copy_side_files,
    open_inputs,
)
from .merge_methods import MERGE_METHODS, MergeMethod, get_method
from .provenance import FORMAT_VERSION, PROVENANCE_FILE, check_parents, inherited, lineage_entry, parent_notes
from .safetensors_io import (
    DEFAULT_MAX_SHARD,
    ShardedWriter,
    Spec,
    all_finite,
    check_finite,
    parse_size,
    safetensors_order,
)

# ----------------------------------------------------------------------------------------
# The one tensor merge: a point on the line from theta0 to a method's target
# ----------------------------------------------------------------------------------------


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
# The interpolation path: in memory for `sweep` and library users, key by key for folders
# ----------------------------------------------------------------------------------------


def _spec_of(sd: dict[str, torch.Tensor]) -> Spec:
    return {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()}


def _family(family: str | None) -> FamilyInfo | None:
    return None if family is None else family_info(family)


class InterpolationPath:
    """The straight line from theta0 to a method's target: THE tensor merge of speechft.

    Built once over whole state dicts (the method's work: task vectors, trimming, drop masks);
    `at(alpha)` then costs one lerp per tensor, which is what an alpha sweep needs.
    `merge_encoders` streams folders key by key through the same `point()`. Copied tensors
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
        info = _family(family)
        patterns = compile_patterns(exclude)
        pre = _spec_of(theta0)
        for i, sd in enumerate(thetas):
            check_compatible("theta0", pre, f"thetas[{i}]", _spec_of(sd), info, patterns)
        self.theta0 = theta0
        self.copied: dict[str, str] = {
            k: kind for k, t in theta0.items() if (kind := copied_kind(k, t.dtype, info, patterns))
        }
        self.targets: dict[str, torch.Tensor] = {}
        merged = [k for k in theta0 if k not in self.copied]

        def task_vectors():
            for k in merged:
                t0 = theta0[k].detach().float()
                yield [sd[k].detach().float() - t0 for sd in thetas]

        # Non-finite inputs are refused below, key by key; statistics over them are never used.
        self.statistics = self.method.prepare(self.params, task_vectors)
        run = {**self.params, **self.statistics}
        for k in merged:
            t0 = theta0[k].detach().float()
            check_finite(t0, "theta0", k)
            ts = []
            for i, sd in enumerate(thetas):
                x = sd[k].detach().float()
                check_finite(x, f"thetas[{i}]", k)
                ts.append(x)
            self.targets[k] = self.method.target(k, t0, ts, run)

    @staticmethod
    def point(
        key: str, theta0: torch.Tensor, target: torch.Tensor | None, alpha: float, t0f: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One tensor at `alpha` on the line theta0 -> target (None: a copied tensor, theta0 itself).

        fp32 arithmetic, result in theta0's dtype; alpha = 0 is theta0 itself. `t0f`, when given, is
        an fp32 copy of theta0 the caller owns (the streaming merge): the result is computed in it."""
        if target is None or alpha == 0:
            return theta0
        if t0f is None:
            t0f = theta0.detach().float()
            owned = t0f.data_ptr() != theta0.data_ptr()  # a caller's fp32 state dict is never modified
        else:
            owned = True
        return interpolate(key, t0f, target, alpha, theta0.dtype, inplace=owned)

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
        patterns = compile_patterns(exclude)
        inputs = open_inputs(pretrained, finetuned)
        try:
            check_inputs(inputs, patterns)
            state = [{k: _read_checked(i, k) for k in i.ckpt.spec()} for i in inputs]
        finally:
            for i in inputs:
                i.ckpt.close()
        return cls(state[0], state[1:], method=method, family=inputs[0].family, exclude=exclude, **params)

    def at(self, alpha: float | None = None) -> dict[str, torch.Tensor]:
        alpha = self.params["alpha"] if alpha is None else self.method.resolve({"alpha": alpha})["alpha"]
        return {k: self.point(k, t, self.targets.get(k), alpha) for k, t in self.theta0.items()}


def merge_state_dicts(
    theta0: dict[str, torch.Tensor],
    thetas: Sequence[dict[str, torch.Tensor]],
    method: str = "linear",
    family: str | None = None,
    exclude: Iterable[str] = (),
    **params,
) -> dict[str, torch.Tensor]:
    """Merge state dicts in memory (same rules as `merge_encoders`): the path's point at the
    method's alpha. `family` names the encoder family whose pre-training-only parameters stay
    theta0's."""
    return InterpolationPath(theta0, thetas, method=method, family=family, exclude=exclude, **params).at()


# ----------------------------------------------------------------------------------------
# Merging encoder folders
# ----------------------------------------------------------------------------------------


def _read_checked(inp: MergeInput, key: str) -> torch.Tensor:
    t = inp.ckpt.read(key)
    check_finite(t, str(inp.ckpt.file_of(key)), key)
    return t


def merge_encoders(
    pretrained: str | os.PathLike,
    finetuned: Sequence[str | os.PathLike],
    method: str = "linear",
    out: str | os.PathLike | None = None,
    exclude: Iterable[str] = (),
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    progress: bool | None = None,
    allow_foreign_parent: bool = False,
    **params,
) -> Path:
    """Merge fine-tuned encoder folders into their pre-trained folder; write `out`.

    Everything is validated from headers and configs before a byte is written; the
    output appears only when complete (temp folder + rename). `params` are the method's
    (alpha, k, scope, p, combine, seed); `progress` None shows a bar on a terminal only. A fine-tuned
    folder whose speechft.json records another pre-trained parent is refused unless
    `allow_foreign_parent` (then recorded); an extrapolated merge (alpha outside [0, 1]) warns and has
    its forward pass checked finite before it is renamed into place. Returns `out`."""
    if out is None:
        raise SpeechFTError("merge needs an output folder (--out)")
    finetuned = [finetuned] if isinstance(finetuned, (str, os.PathLike)) else list(finetuned)
    if not finetuned:
        raise SpeechFTError("merge needs at least one fine-tuned encoder (--finetuned)")
    out = Path(out)
    pretrained, finetuned = resolve_encoder(pretrained), [resolve_encoder(f) for f in finetuned]  # Hub ids
    check_output_location(out, {"--pretrained": pretrained, "--finetuned": finetuned})
    m = get_method(method)
    resolved = m.resolve(params)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    patterns = compile_patterns(exclude)
    shard_limit = parse_size(max_shard_size)
    if out.exists() and not overwrite:  # fail before the (possibly long) validation
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")

    inputs = open_inputs(pretrained, finetuned)
    try:
        pre, fts = inputs[0], inputs[1:]
        kinds = check_inputs(inputs, patterns)
        ft_paths = [i.path for i in fts]
        if pre.provenance.get("weights_sha256"):  # cheap pre-check on theta0's record; the streamed hash confirms
            check_parents(pre.path, ft_paths, allow_foreign_parent, pre.provenance["weights_sha256"])
        pre_spec = pre.ckpt.spec()
        order = safetensors_order(pre_spec)
        walks = _FileTaskVectors(inputs, [k for k in order if not kinds[k]], progress)
        statistics = m.prepare(resolved, walks)  # global TIES: two walks over the files; others: none
        with atomic_dir(out, overwrite=overwrite) as tmp:
            writer = ShardedWriter(tmp, pre_spec, order, shard_limit)
            try:
                _stream(m, {**resolved, **statistics}, pre, fts, kinds, order, writer, progress)
                out_hashes = writer.close()
            except BaseException:
                writer.abort()
                raise
            in_hashes = walks.sha256 or [i.ckpt.sha256() for i in inputs]
            foreign = check_parents(pre.path, ft_paths, allow_foreign_parent, in_hashes[0])  # before the rename
            code = copy_side_files(pre.path, tmp)
            prov = _provenance(m, resolved, statistics, inputs, in_hashes, out_hashes, kinds, exclude)
            prov["merge"].update({"remote_code_sha256": code} if code else {})
            prov["merge"].update({"foreign_parents": foreign} if foreign else {})
            write_json(tmp / PROVENANCE_FILE, prov)
            if not 0 <= resolved["alpha"] <= 1:
                check_forward(tmp, out)
        check_alpha(resolved["alpha"])  # warnings only once the merge is in place: a refusal stays one line
        parent_notes(pre.path, ft_paths, foreign)
    finally:
        for i in inputs:
            i.ckpt.close()
    return out


class _FileTaskVectors:
    """The merged tensors' task vectors (theta_i - theta0, fp32), read from the files key by key
    at every call: the walks a method's `prepare` makes (TIES' global threshold). Memory: one
    key's tensors. The first walk reads every file in order, which completes the inputs'
    single-pass sha256, so the hashes are taken there (`sha256`): later walks and the merge
    itself re-read from the start, which would cost a separate hashing pass."""

    def __init__(self, inputs: list[MergeInput], keys: list[str], progress: bool | None):
        self.inputs, self.keys, self.progress = inputs, keys, progress
        self.sha256: list[dict[str, str]] | None = None
        self.walks = 0

    def __call__(self) -> Iterable[list[torch.Tensor]]:
        from .progress import progress_bar

        self.walks += 1
        disable = None if self.progress is None else not self.progress
        bar = progress_bar(self.keys, desc=f"task vectors, pass {self.walks}", leave=False, disable=disable)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in _stream: memory-bound work that torch's threads only slow down
        try:
            # One reader per file reads (and, on the first walk, hashes) the next key while this one is counted.
            with concurrent.futures.ThreadPoolExecutor(len(self.inputs), thread_name_prefix="merge-walk") as pool:
                pending = [pool.submit(i.ckpt.read, self.keys[0]) for i in self.inputs] if self.keys else []
                for n, _ in enumerate(bar):
                    t0, *ts = (f.result().float() for f in pending)
                    if n + 1 < len(self.keys):
                        pending = [pool.submit(i.ckpt.read, self.keys[n + 1]) for i in self.inputs]
                    yield [t.sub_(t0) for t in ts]
        finally:
            torch.set_num_threads(threads)
            bar.close()
        if self.sha256 is None:
            self.sha256 = [i.ckpt.sha256() for i in self.inputs]


def _stream(
    m: MergeMethod,
    params: dict,
    pre: MergeInput,
    fts: list[MergeInput],
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
    from .progress import progress_bar

    def read(inp: MergeInput, key: str) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        alpha = params["alpha"]
        target = None if kinds[key] or alpha == 0 else m.target(key, t0f, [f for _, f in ts], params)
        # t0f is ours (a fresh read or its fp32 copy): the point is computed into it, no new buffer.
        return InterpolationPath.point(key, raw, target, alpha, t0f)

    def write(key, t):
        writer.write(key, t)
        bar.update(writer.nbytes[key])

    bar = progress_bar(
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


def _provenance(
    m: MergeMethod,
    params: dict,
    statistics: dict,
    inputs: list[MergeInput],
    in_hashes: list[dict],
    out_hashes: dict,
    kinds: dict,
    exclude,
) -> dict:
    pre = inputs[0]
    copied: dict[str, list[str]] = {k: [] for k in COPIED_KINDS}
    for key, kind in kinds.items():
        if kind:
            copied[kind].append(key)
    step = {
        "method": m.name,
        "params": params,
        **({"statistics": statistics} if statistics else {}),  # what `prepare` measured: TIES' thresholds
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


@dataclass
class MergeConfig:
    """What `speechft merge` does (its inputs and output stay flags: --pretrained, --finetuned, --out)."""

    method: str = "linear"
    # Validated by the method's own declared parameter (None: the method's default, 0.25 for linear).
    alpha: Any = None
    # The method's other parameters, e.g. {k: 20, scope: tensor} for ties, {p: 0.3, seed: 1} for dare.
    params: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)  # regexes (search) of tensor names that keep theta0's
    max_shard_size: str = "5GB"


# argparse dest -> MergeConfig key
_FLAGS = {"method": "method", "alpha": "alpha", "exclude": "exclude", "max_shard_size": "max_shard_size"}


def _methods_help() -> str:
    import textwrap

    return "\n".join(
        textwrap.fill(m.describe(), width=100, initial_indent="  ", subsequent_indent="      ")
        for m in MERGE_METHODS.values()
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_quiet_option

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "methods:\n" + _methods_help()
    p.add_argument(
        "--pretrained",
        required=True,
        metavar="DIR",
        help="pre-trained encoder folder (theta0) or Hugging Face Hub id org/name[@revision]",
    )
    p.add_argument(
        "--finetuned",
        required=True,
        nargs="+",
        metavar="DIR",
        help="fine-tuned encoder folder(s) of the same architecture",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output encoder folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_config_options(p, MergeConfig, "method=ties alpha=0.5")
    p.add_argument("--method", default=None, choices=list(MERGE_METHODS), help="merge method (default: linear)")
    p.add_argument(
        "--alpha",
        default=None,
        help="merge coefficient (default: the method's, 0.25 for linear); outside [0, 1] it extrapolates "
        "beyond theta0 or the fine-tuned model: allowed with a warning, and the result's forward pass is checked",
    )
    p.add_argument(
        "--allow-foreign-parent",
        action="store_true",
        help="merge a fine-tuned encoder whose speechft.json records another pre-trained parent (recorded)",
    )
    p.add_argument(
        "--param",
        dest="param",
        nargs="+",
        action="extend",
        default=[],
        metavar="PARAM=VALUE",
        help="method parameters, e.g. --param k=20 scope=tensor (ties), --param p=0.3 seed=1 (dare); "
        "added to the config's `params`",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=None,
        metavar="REGEX",
        help="tensor names (regex search) that keep theta0's weights",
    )
    p.add_argument("--max-shard-size", default=None, help="largest weight file before sharding (default 5GB)")
    add_quiet_option(p)


def _method_params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpeechFTError(f"--param {item!r}: expected PARAM=VALUE, e.g. --param k=20")
        params[name.strip()] = value.strip()
    return params


def main(args) -> int:
    cfg = config_from_args(MergeConfig, args, _FLAGS)
    params: dict[str, Any] = {**cfg.params, **_method_params(args.param)}
    if cfg.alpha is not None:
        params["alpha"] = cfg.alpha
    out = merge_encoders(
        args.pretrained,
        args.finetuned,
        method=cfg.method,
        out=args.out,
        exclude=cfg.exclude,
        overwrite=args.overwrite,
        max_shard_size=cfg.max_shard_size,
        progress=False if args.quiet else None,
        allow_foreign_parent=args.allow_foreign_parent,
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
