"""Which tensors a merge merges, and whether its inputs can merge at all (speechft.merge's checks).

Every check runs on safetensors headers and config.json before a byte is written, and a refusal is
one line naming the file and tensor: a fine-tuned checkpoint saved with a prefix (DDP's `module.`),
another architecture, a shape or dtype that cannot be interpolated. `open_inputs` opens the input
folders (headers only) and `check_inputs` runs these checks over them. Also here: which .py files a
merge may copy (`remote_code_files`, `copy_side_files`), the extrapolation warning (`check_alpha`) and the forward-pass
check of an extrapolated merge (`check_forward`).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .encoders.families import FamilyInfo, config_summary, detect_family, family_info
from .encoders.hub import resolve_encoder
from .errors import SpeechFTError
from .io_utils import sha256_file
from .provenance import read_provenance
from .safetensors_io import Checkpoint, Spec

# Config keys that change no weight: fine-tuning may set them differently from theta0.
_CONFIG_KEYS_IGNORED = re.compile(r"dropout|^layerdrop$|^mask_|^apply_spec_augment$|^use_cache$")


COPIED_KINDS = ("integer", "pretraining-only", "excluded")


def compile_patterns(patterns: Iterable[str] | str) -> list[re.Pattern]:
    out = []
    for p in [patterns] if isinstance(patterns, str) else (patterns or ()):
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise SpeechFTError(f"--exclude pattern {p!r} is not a valid regular expression ({e})") from None
    return out


def copied_kind(key: str, dtype: torch.dtype, family: FamilyInfo | None, exclude: list[re.Pattern]) -> str | None:
    """Why `key` keeps theta0's value (None: it is merged)."""
    if not dtype.is_floating_point:
        return "integer"
    if family is not None and family.is_pretraining_only(key):
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
    family: FamilyInfo | None,
    exclude: list[re.Pattern],
    ft_file: Callable[[str], object] | None = None,
) -> None:
    """Refuse, in one line, a fine-tuned checkpoint whose tensors cannot merge into `pre`.
    `ft_file(key)` names the file holding a key (a shard), for the per-tensor messages."""
    where = ft_file or (lambda k: ft_name)
    copied = {k for k, (dt, _) in pre.items() if copied_kind(k, dt, family, exclude)}
    missing = sorted(set(pre) - set(ft) - copied)
    unexpected = sorted(k for k in set(ft) - set(pre) if not (family is not None and family.is_pretraining_only(k)))
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


def config_diff(pre: dict, ft: dict) -> list[str]:
    """The config.json values two folders disagree on, ignoring keys that change no weight."""
    keys = sorted(k for k in set(pre) | set(ft) if not _CONFIG_KEYS_IGNORED.search(k))
    return [
        f"{k} {json.dumps(ft.get(k, '(absent)'))} vs {json.dumps(pre.get(k, '(absent)'))}"
        for k in keys
        if pre.get(k) != ft.get(k)
    ]


@dataclass
class MergeInput:
    path: Path
    family: str
    ckpt: Checkpoint
    provenance: dict = field(default_factory=dict)


def open_inputs(pretrained, finetuned) -> list[MergeInput]:
    """Open every folder's weights (headers only) and check families and configs agree."""
    inputs: list[MergeInput] = []
    try:
        for p in [pretrained, *finetuned]:
            p = resolve_encoder(p)  # a Hub id: its converted folder
            fam = detect_family(p)  # refuses missing folders and unknown model types
            inputs.append(MergeInput(p, fam, Checkpoint(p), read_provenance(p)))
        pre = inputs[0]
        pre_cfg = config_summary(pre.path)
        for ft in inputs[1:]:
            if ft.family != pre.family:
                raise SpeechFTError(
                    f"{ft.path} is a {ft.family} encoder but {pre.path} is {pre.family}; "
                    "merge fine-tuned encoders into the pre-trained encoder they came from"
                )
            diff = config_diff(pre_cfg, config_summary(ft.path))
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


def check_inputs(inputs: list[MergeInput], patterns: list[re.Pattern]) -> dict[str, str | None]:
    """Refuse fine-tuned checkpoints whose tensors cannot merge into theta0's; returns, per
    theta0 tensor, why it is copied (None: merged)."""
    pre = inputs[0]
    info = family_info(pre.family)
    pre_spec = pre.ckpt.spec()
    for ft in inputs[1:]:
        shard_of = ft.ckpt.file_of  # per-tensor messages name the shard holding the key
        check_compatible(str(pre.path), pre_spec, str(ft.path), ft.ckpt.spec(), info, patterns, shard_of)
    return {k: copied_kind(k, dt, info, patterns) for k, (dt, _) in pre_spec.items()}


def remote_code_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the .py modules config.json's auto_map names, the other .py files) of a pre-trained folder.

    Only the named modules are loaded by transformers (DeCoAR 2.0's decoar2_hf.py), so only they are
    copied into a merge; any other .py beside the weights is skipped with a warning rather than refused,
    as it changes nothing the merged folder computes and blocking the merge over it helps no one."""
    auto_map = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    refs = auto_map.values() if isinstance(auto_map, dict) else ()
    named = {str(r).split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if isinstance(r, str)}
    py = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".py")
    return [p for p in py if p.name in named], [p for p in py if p.name not in named]


def copy_side_files(src: Path, dst: Path) -> dict[str, str]:
    """config.json byte for byte, preprocessing configs, and the remote-code modules config.json's
    auto_map names (DeCoAR 2.0's decoar2_hf.py), so the folder loads like its pre-trained parent.
    Returns the copied modules' sha256 (code that runs on load belongs in provenance)."""
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name in ("config.json", "preprocessor_config.json", "generation_config.json"):
            shutil.copy2(p, dst / p.name)
    code, others = remote_code_files(src)
    for p in others:
        print(
            f"speechft: warning: {p}: not copied into the merge (config.json's auto_map does not name it)",
            file=sys.stderr,
        )
    for p in code:
        shutil.copy2(p, dst / p.name)
    return {p.name: sha256_file(dst / p.name) for p in code}


def check_alpha(alpha: float) -> None:
    """alpha outside [0, 1] extrapolates past theta0 or the fine-tuned model: allowed, with a warning line."""
    if not 0 <= alpha <= 1:
        print(
            f"speechft: warning: alpha={alpha:g} is outside [0, 1]: the merge extrapolates beyond "
            f"{'theta0' if alpha < 0 else 'the fine-tuned model'} (its forward pass was checked finite)",
            file=sys.stderr,
        )


def check_forward(folder: Path, out: Path, seconds: float = 1.0) -> None:
    """Refuse a merged encoder whose forward pass on a second of noise is not finite.

    Run for extrapolated merges only (alpha outside [0, 1]): there, finite weights can still give a
    non-finite forward (alpha = 1e30 scales every task vector into overflowing activations). Imports
    transformers, which merges inside [0, 1] never need."""
    from .data.audio import SAMPLE_RATE
    from .encoders import load_encoder

    enc = load_encoder(folder).eval()
    wav = torch.randn(1, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        o = enc(wav, torch.tensor([wav.shape[1]]))
    for i, h in enumerate(o.hidden_states):
        if not torch.isfinite(h).all():
            raise SpeechFTError(
                f"--out {out}: the merged encoder's layer-{i} output is not finite on test audio "
                "(the alpha extrapolates too far); use an alpha nearer [0, 1]; nothing was written"
            )
