"""`speechft encoder convert`: fairseq / s3prl / Speech-FT checkpoints -> encoder folders.

Accepted containers (detected from their keys; `--from` says which toolkit made the file):

- fairseq originals: ``{'cfg': {'model': ..., 'task': ...}, 'model': state}`` (HuBERT, newer
  wav2vec 2.0) or ``{'args': Namespace, 'model': state}`` (older wav2vec 2.0), including
  fine-tuned CTC models (``w2v_encoder.w2v_model.*``; the CTC projection is dropped);
  the unilm WavLM release ``{'cfg': flat dict, 'model': state}`` (s3prl hosts it as is).
- s3prl "converted" containers: ``{'task_cfg', 'model_cfg', 'model_weight'[,
  'dictionaries_symbols']}`` (s3prl/upstream/{hubert,wav2vec2}/convert.py).
- s3prl downstream checkpoints (``states-*.ckpt``, ``dev-best.ckpt``): the fine-tuned
  encoder is ``ckpt['Upstream']`` (present only when the run trained the upstream), keyed
  ``model.<fairseq name>``. These hold no architecture config: it is read from ``--like``
  (the pre-trained checkpoint or encoder folder) or, failing that, inferred from the
  weight shapes (standard front-end strides assumed; recorded in the provenance).
- the official Speech-FT merged checkpoints (nervjack2/Speech-FT ``merged_model.pt``): the
  s3prl container of the base model with its weights replaced (``model_weight`` for
  HuBERT / wav2vec 2.0, ``model`` for WavLM / DeCoAR 2.0); a ``config.yaml`` beside it
  (the merge recipe: alpha, method, fine-tuned paths) is copied into the provenance.
- DeCoAR 2.0 s3prl checkpoints ``{'model': state}`` (fairseq-style transformer keys) ->
  the speechft DeCoAR 2.0 folder (decoar2_hf.py).

Pre-training-only weights never enter the encoder (``dropped_keys`` in the provenance). HuBERT's
masked-prediction head (``final_proj`` + ``label_embs_concat``, with the label dictionary when the file
has it: s3prl's ``dictionaries_symbols`` or fairseq's pickled ``Dictionary`` state) is kept beside the
encoder in ``pretraining_heads/`` for ``speechft pretrain`` (speechft.encoders.pretraining_heads).

Safety: files are read with ``torch.load(weights_only=True)``, never plain unpickling. Two
kinds of harmless non-tensor objects occur in these containers and are allowed through
``torch.serialization.safe_globals`` for the duration of the load only: ``argparse.Namespace``
(fairseq ``args``, s3prl ``Args``; a plain attribute bag), and fairseq bookkeeping objects
(``Dictionary`` in ``task_state``, logging meters in ``extra_state``), which are *not*
imported: an inert stand-in keeps their pickled state as data and runs nothing. Anything
else is refused with one line naming the object; if you trust the file, re-save its weights
and config as plain data with the recipe in ``speechft encoder convert --help``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, check_output_location, sha256_file
from ..safetensors_io import load_tensors
from .fairseq_layout import (
    decoar2_config,
    hf_config,
    infer_fairseq_cfg,
    map_state_dict,
)
from .pretraining_heads import HEADS_DIR, hubert_heads, write_pretraining_heads

SOURCES = ("s3prl", "fairseq")
CONVERTIBLE = ("hubert", "wav2vec2", "wavlm", "decoar2")

RESAVE_RECIPE = (
    "python -c \"import torch; from omegaconf import OmegaConf as O; c = torch.load('IN.pt', weights_only=False); "
    "cfg = c.get('cfg'); cfg = O.to_container(cfg, resolve=True, enum_to_str=True) if O.is_config(cfg) else cfg; "
    "torch.save({'cfg': cfg, 'args': c.get('args'), 'model': c['model']}, 'OUT.pt')\""
)


# ---------------------------------------------------------------------------------------
# Loading without executing anything from the file
# ---------------------------------------------------------------------------------------
class _Inert:
    """Stand-in for fairseq bookkeeping objects: keeps their pickled state as data, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


# Fully qualified names of the fairseq objects that appear in released checkpoints but
# carry nothing the conversion needs.
_INERT_NAMES = (
    "fairseq.data.dictionary.Dictionary",
    "fairseq.logging.meters.AverageMeter",
    "fairseq.logging.meters.TimeMeter",
    "fairseq.logging.meters.StopwatchMeter",
    "fairseq.logging.meters.MetersDict",
)


def _safe_globals():
    return [argparse.Namespace] + [(_Inert, name) for name in _INERT_NAMES]


def load_checkpoint(path: str | Path):
    """Load a checkpoint's object tree with tensors only (plus the allow-list above)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechFTError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_tensors(path)
        except SpeechFTError as e:
            detail = str(e).removeprefix(f"{path}: ")
            raise SpeechFTError(f"{path}: not a readable safetensors file ({detail})") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = (
            re.search(r"GLOBAL ([\w.]+)", str(e))
            or re.search(r"but got (<[^>]+>)", str(e))
            or re.search(r"unrecognized function (\S+)", str(e))
        )
        if m is None:  # not a refusal: the bytes are not a pickle/zip checkpoint at all
            detail = next((ln for ln in reversed(str(e).splitlines()) if ln.strip() and "documentation" not in ln), "")
            raise SpeechFTError(f"{path}: not a readable PyTorch checkpoint ({detail.strip()[:200]})") from None
        what = m.group(1)
        raise SpeechFTError(
            f"{path}: refused to unpickle '{what}': the file holds an object that is neither a tensor, "
            "a plain container "
            "nor a known-harmless config type, and loading it would run code from the file. If you trust the file, "
            "re-save its weights and config as plain data (recipe: speechft encoder convert --help) and convert that"
        ) from None
    except Exception as e:
        # (IndexError, KeyError, TypeError, struct.error, zipfile.BadZipFile, ...): all mean "not a checkpoint".
        raise SpeechFTError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


# ---------------------------------------------------------------------------------------
# Recognising the container
# ---------------------------------------------------------------------------------------
@dataclass
class Found:
    kind: str  # fairseq | fairseq-finetuned | unilm-wavlm | s3prl-converted | s3prl-downstream | state-dict
    weights: dict  # fairseq parameter names -> tensors
    model_cfg: dict | None  # fairseq model config (flat), None when the file has none
    normalize: bool | None  # the task's waveform normalisation, when known
    family_hint: str | None = None
    dropped: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    dictionaries: list[list[str]] | None = None  # HuBERT's label dictionaries (symbols), when the file has them


def _as_dict(cfg) -> dict | None:
    if cfg is None:
        return None
    if isinstance(cfg, argparse.Namespace):
        return dict(vars(cfg))
    if isinstance(cfg, dict):
        return dict(cfg)
    return None


def _tensors_only(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _family_from_name(name) -> str | None:
    name = str(name or "").lower()
    for fam in ("wavlm", "hubert", "decoar2"):
        if fam in name:
            return fam
    return "wav2vec2" if "wav2vec" in name else None  # wav2vec2, wav2vec_ctc


def _identify(obj, path: Path, source: str) -> Found:
    if not isinstance(obj, dict) or not obj:
        raise SpeechFTError(f"{path}: expected a checkpoint dictionary, found {type(obj).__name__}")
    keys = set(obj)
    if {"model_weight", "model_cfg"} <= keys:
        cfg = _as_dict(obj["model_cfg"]) or {}
        task = _as_dict(obj.get("task_cfg")) or {}
        hint = "hubert" if "dictionaries_symbols" in obj else _family_from_name(cfg.get("_name"))
        found = Found("s3prl-converted", _tensors_only(obj["model_weight"]), cfg, task.get("normalize"), hint)
        found.dictionaries = _symbol_lists(obj.get("dictionaries_symbols"))
        return found
    if "Upstream" in keys or "Downstream" in keys:
        if "Upstream" not in keys:
            raise SpeechFTError(
                f"{path}: this s3prl downstream checkpoint has no 'Upstream' weights (the upstream was "
                "frozen in that run; s3prl saves it only with --upstream_trainable); convert the "
                "pre-trained checkpoint instead"
            )
        if source == "fairseq":
            raise SpeechFTError(f"{path}: this is an s3prl downstream checkpoint, not a fairseq one; pass --from s3prl")
        weights, dropped = {}, []
        for k, v in _tensors_only(obj["Upstream"]).items():
            if k.startswith("model."):
                weights[k[len("model.") :]] = v
            else:
                dropped.append(k)  # e.g. DeCoAR's feature-extraction buffers
        args = _as_dict(obj.get("Args")) or {}
        return Found(
            "s3prl-downstream",
            weights,
            None,
            None,
            _family_from_name(args.get("upstream")),
            dropped,
            {
                "s3prl_upstream": args.get("upstream"),
                "s3prl_upstream_ckpt": args.get("upstream_ckpt"),
                "s3prl_step": obj.get("Step"),
            },
        )
    if isinstance(obj.get("model"), dict):
        weights = _tensors_only(obj["model"])
        cfg, args = _as_dict(obj.get("cfg")), _as_dict(obj.get("args"))
        if cfg is not None and isinstance(cfg.get("model"), (dict, argparse.Namespace)):
            model_cfg, task = _as_dict(cfg["model"]), _as_dict(cfg.get("task")) or {}
            kind = "fairseq"
        elif cfg is not None:  # unilm WavLM: one flat config dict
            model_cfg, task, kind = cfg, cfg, "unilm-wavlm"
        elif args is not None:
            model_cfg, task, kind = args, args, "fairseq"
        else:
            model_cfg, task, kind = None, {}, "fairseq"
        hint = _family_from_name((model_cfg or {}).get("_name") or (model_cfg or {}).get("arch"))
        dropped = []
        w2v = (model_cfg or {}).get("w2v_args")
        if any(k.startswith("w2v_encoder.") for k in weights):  # fine-tuned (CTC) fairseq model
            kind = "fairseq-finetuned"
            inner = {}
            for k, v in weights.items():
                if k.startswith("w2v_encoder.w2v_model."):
                    inner[k[len("w2v_encoder.w2v_model.") :]] = v
                else:
                    dropped.append(k)  # the CTC output projection
            weights = inner
            w2v = _as_dict(w2v)
            if w2v is not None:
                model_cfg = _as_dict(w2v.get("model")) or w2v
                task = _as_dict(w2v.get("task")) or task
            else:
                model_cfg = None
        found = Found(kind, weights, model_cfg, (task or {}).get("normalize"), hint, dropped)
        state = obj.get("task_state") if isinstance(obj.get("task_state"), dict) else {}
        dicts = state.get("dictionaries") if isinstance(state.get("dictionaries"), (list, tuple)) else []
        found.dictionaries = _symbol_lists(
            [st.get("symbols") if isinstance(st := getattr(d, "state", None), dict) else None for d in dicts]
        )
        return found
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Found("state-dict", dict(obj), None, None, None)
    raise SpeechFTError(
        f"{path}: unrecognised checkpoint layout (top-level keys: {', '.join(sorted(map(str, keys))[:8])});"
        " expected a fairseq ('cfg'/'args' + 'model'), s3prl converted ('model_cfg' + 'model_weight') "
        "or s3prl downstream ('Upstream') checkpoint"
    )


def _symbol_lists(value) -> list[list[str]] | None:
    """Label dictionaries as lists of symbols: s3prl's dictionaries_symbols, or the symbols kept from fairseq's
    pickled Dictionary objects (the inert stand-in's state); None when any is missing or not a list."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(d, (list, tuple)) and all(isinstance(s, str) for s in d) for d in value):
        return None
    return [list(d) for d in value]


def _detect_family(w: dict, hint: str | None, path: Path) -> str:
    if any(k.startswith("post_extract_proj.") for k in w) and not any(k.startswith("feature_extractor.") for k in w):
        return "decoar2"
    if any(".self_attn.grep_linear." in k or ".self_attn.relative_attention_bias." in k for k in w):
        return "wavlm"
    if "label_embs_concat" in w or any(k.startswith("label_embs") for k in w):
        return "hubert"
    if any(k.startswith(("quantizer.", "project_q.")) for k in w):
        return "wav2vec2"
    if hint in CONVERTIBLE:
        return hint
    if not any(k.startswith("feature_extractor.conv_layers.") for k in w):
        raise SpeechFTError(
            f"{path}: no speech-encoder weights found (no feature_extractor.* or post_extract_proj.*); "
            f"first keys: {', '.join(sorted(w)[:4])}"
        )
    raise SpeechFTError(
        f"{path}: cannot tell HuBERT from wav2vec 2.0 from these weights alone (no pre-training "
        "head); pass --family hubert or --family wav2vec2"
    )


# ---------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------
def _config_from_like(like: Path, family: str):
    """(transformers config, normalize) from an encoder folder or a checkpoint."""
    from ..provenance import read_provenance
    from . import detect_family, family_class

    like = Path(like)
    if like.is_dir():
        fam = detect_family(like)
        if fam != family:
            raise SpeechFTError(f"{like}: --like is a {fam} encoder but the checkpoint is {family}")
        cfg = family_class(family).config_class.from_pretrained(like)
        return cfg, bool(read_provenance(like).get("normalize_waveform", False))
    found = _identify(load_checkpoint(like), like, "s3prl")
    fam = _detect_family(found.weights, found.family_hint, like)
    if fam != family:
        raise SpeechFTError(f"{like}: --like is a {fam} checkpoint but the checkpoint to convert is {family}")
    if family == "decoar2":
        return decoar2_config(found.weights, found.model_cfg), False
    fcfg = found.model_cfg if found.model_cfg is not None else infer_fairseq_cfg(found.weights, family, like)
    return hf_config(family, fcfg, "mask_emb" in found.weights), bool(found.normalize)


def convert_checkpoint(
    path: str | Path,
    source: str,
    out: str | Path,
    family: str | None = None,
    overwrite: bool = False,
    like: str | Path | None = None,
) -> Path:
    """Convert a fairseq / s3prl / Speech-FT checkpoint into a speechft encoder folder."""
    from . import family_class

    path, out = Path(path), Path(out)
    if source not in SOURCES:
        raise SpeechFTError(f"--from '{source}' is not one of {', '.join(SOURCES)}")
    if family is not None and family not in CONVERTIBLE:
        raise SpeechFTError(f"--family '{family}' cannot be converted; choose one of {', '.join(CONVERTIBLE)}")
    check_output_location(out, {"checkpoint": path, "--like": [like] if like is not None else []})
    if out.exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    found = _identify(load_checkpoint(path), path, source)
    if source == "fairseq" and found.kind == "s3prl-converted":
        raise SpeechFTError(
            f"{path}: this is an s3prl converted checkpoint (model_cfg + model_weight); pass --from s3prl"
        )
    detected = _detect_family(found.weights, family or found.family_hint, path)
    if (
        family is not None
        and detected != family
        and not (
            {detected, family} <= {"hubert", "wav2vec2"}
            and "label_embs_concat" not in found.weights
            and not any(k.startswith("quantizer.") for k in found.weights)
        )
    ):
        raise SpeechFTError(f"{path}: the weights are a {detected} model but --family says {family}")
    family = family or detected
    cls = family_class(family)

    config_from = "checkpoint config"
    normalize = bool(found.normalize) if found.normalize is not None else False
    if like is not None:
        config, normalize = _config_from_like(Path(like), family)
        config_from = f"--like {like}"
    elif family == "decoar2":
        config = decoar2_config(found.weights, found.model_cfg)
        config_from = "weight shapes (DeCoAR 2.0 layout)"
    elif found.model_cfg is not None:
        config = hf_config(family, found.model_cfg, "mask_emb" in found.weights)
    else:
        config = hf_config(family, infer_fairseq_cfg(found.weights, family, path), "mask_emb" in found.weights)
        normalize = config.feat_extract_norm == "layer"  # the pre-LN large models were trained on normalised audio
        config_from = "weight shapes (no config in the file; pass --like to take it from the pre-trained model)"
        print(
            f"speechft: note: {path.name} carries no architecture config; inferred it from the weight shapes "
            "(pass --like PRETRAINED to copy it exactly)",
            file=sys.stderr,
        )
    if family != "decoar2" and "mask_emb" not in found.weights:
        config.mask_time_prob = config.mask_feature_prob = 0.0  # so the model has no masked_spec_embed to fill

    torch.manual_seed(0)
    model = cls.model_class(config)
    model_keys = set(model.state_dict())
    state, dropped = map_state_dict(found.weights, family, model_keys, path)
    expected = model.state_dict()
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise SpeechFTError(
                f"{path}: weight for '{k}' has shape {tuple(t.shape)} but the config implies "
                f"{tuple(expected[k].shape)}; the checkpoint's config does not match its weights"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SpeechFTError(f"{path}: weight for '{k}' contains NaN or infinite values; the checkpoint is corrupt")
    model.load_state_dict(state, strict=True)
    model.eval()

    provenance = {
        "source": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "source_format": found.kind,
        "source_toolkit": source,
        "converted_by": "speechft encoder convert",
        "config_from": config_from,
        "dropped_keys": sorted(set(dropped + found.dropped)),
        "normalize_waveform": bool(normalize),
        **{k: v for k, v in found.extra.items() if v is not None},
    }
    merge_cfg = _reference_merge_config(path)
    if merge_cfg is not None:
        provenance["source_format"] = f"speechft-reference-merged ({found.kind})"
        provenance["reference_merge_config"] = merge_cfg
    heads = _pretraining_heads(found, config) if family == "hubert" else None
    return _save(cls(model, provenance), heads, out, overwrite)


def _save(enc, heads, out: Path, overwrite: bool) -> Path:
    """The encoder folder, with the pre-training head (tensors, info) in its subfolder when there is one."""
    if heads is None:
        return enc.save(out, overwrite=overwrite)
    with atomic_dir(out, overwrite=overwrite) as tmp:  # the encoder and its head appear together or not at all
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.heads.", dir=tmp.parent))
        try:
            enc.save(tmp, provenance={"pretraining_heads": write_pretraining_heads(staged, *heads)}, overwrite=True)
            os.replace(staged / HEADS_DIR, tmp / HEADS_DIR)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return out


def _pretraining_heads(found: Found, config):
    """(tensors, info) of HuBERT's masked-prediction head when the file has a usable one (kept beside the
    encoder: speechft.encoders.pretraining_heads), else None; a head speechft cannot continue is announced."""
    tensors, info = hubert_heads(found.weights, found.model_cfg, found.dictionaries, int(config.hidden_size))
    if tensors is None:
        if "final_proj.weight" in found.weights or "label_embs_concat" in found.weights:
            print(f"speechft: note: the checkpoint's pre-training head is not kept ({info})", file=sys.stderr)
        return None
    return tensors, info


def _reference_merge_config(path: Path) -> dict | None:
    """The Speech-FT reference code writes merged_model.pt + config.yaml (alpha, method, ...). Read like
    every user YAML (config.read_yaml_file: no aliases, UTF-8): one it cannot read is refused, in one line."""
    from ..config import read_yaml_file

    cfg_path = path.with_name("config.yaml")
    if not cfg_path.is_file():
        return None
    try:
        cfg = read_yaml_file(cfg_path)
    except SpeechFTError as e:
        raise SpeechFTError(
            f"{e} (read as the Speech-FT merge config beside the checkpoint; move it away to convert without it)"
        ) from None
    if isinstance(cfg, dict) and ({"alpha", "merge_method", "finetune_model_paths"} & set(cfg)):
        return cfg
    return None


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(p):
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Checkpoints are loaded with torch.load(weights_only=True). A file holding other Python objects is "
        "refused; if you trust it, re-save its weights and config as plain data and convert that:\n  " + RESAVE_RECIPE
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=SOURCES,
        help="the toolkit that wrote the checkpoint (s3prl also covers Speech-FT's merged checkpoints)",
    )
    p.add_argument("checkpoint", help="the .pt / .ckpt file")
    p.add_argument("--out", required=True, help="output encoder folder")
    p.add_argument(
        "--family", choices=CONVERTIBLE, default=None, help="model family (detected from the weights when omitted)"
    )
    p.add_argument(
        "--like",
        default=None,
        help="take the architecture config from this pre-trained checkpoint or encoder folder "
        "(needed for s3prl downstream checkpoints of non-standard models)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args):
    from . import load_encoder

    out = convert_checkpoint(
        args.checkpoint, args.source, args.out, family=args.family, overwrite=args.overwrite, like=args.like
    )
    enc = load_encoder(out)
    n = sum(p.numel() for p in enc.model.parameters())
    print(
        f"converted {enc.provenance.get('source_format')} {enc.family} checkpoint ({enc.num_layers} layers, "
        f"hidden {enc.hidden_size}, {n:,} parameters) to {out}"
    )
    if heads := enc.provenance.get("pretraining_heads"):
        print(
            f"kept its pre-training head beside the encoder ({HEADS_DIR}/: {heads['units']} units; "
            "speechft pretrain continues it when units.clusters matches)"
        )
