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
import ast
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SpeechFTError
from ..io_utils import sha256_file

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
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise SpeechFTError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
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
    except Exception as e:  # noqa: BLE001 - on damaged bytes torch's unpickler raises almost anything
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
        return Found("s3prl-converted", _tensors_only(obj["model_weight"]), cfg, task.get("normalize"), hint)
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
        return Found(kind, weights, model_cfg, (task or {}).get("normalize"), hint, dropped)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Found("state-dict", dict(obj), None, None, None)
    raise SpeechFTError(
        f"{path}: unrecognised checkpoint layout (top-level keys: {', '.join(sorted(map(str, keys))[:8])});"
        " expected a fairseq ('cfg'/'args' + 'model'), s3prl converted ('model_cfg' + 'model_weight') "
        "or s3prl downstream ('Upstream') checkpoint"
    )


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
# Configs: fairseq names -> transformers configs
# ---------------------------------------------------------------------------------------
# fairseq's defaults for the Base models (wav2vec2.py / hubert.py dataclasses), used for
# keys an older checkpoint does not spell out.
FAIRSEQ_DEFAULTS = dict(
    extractor_mode="default",
    encoder_layers=12,
    encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12,
    activation_fn="gelu",
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.0,
    dropout_input=0.0,
    conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] + [(512, 2, 2)]",
    conv_bias=False,
    conv_pos=128,
    conv_pos_groups=16,
    layer_norm_first=False,
    num_buckets=320,
    max_distance=800,
)
# kernel sizes -> strides of the one front end every published model uses
STANDARD_FRONTEND = {(10, 3, 3, 3, 3, 2, 2): (5, 2, 2, 2, 2, 2, 2)}


def parse_conv_layers(spec) -> list[tuple[int, int, int]]:
    """fairseq's conv_feature_layers, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", evaluated
    without eval(): only list/tuple literals, integers, + and * are accepted."""
    if isinstance(spec, (list, tuple)):
        value = spec
    else:

        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return node.value
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [ev(e) for e in node.elts]
                return items if isinstance(node, ast.List) else tuple(items)
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
                a, b = ev(node.left), ev(node.right)
                return a + b if isinstance(node.op, ast.Add) else a * b
            raise ValueError(ast.dump(node)[:60])

        try:
            value = ev(ast.parse(str(spec), mode="eval"))
        except (SyntaxError, ValueError, TypeError) as e:
            raise SpeechFTError(
                f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) tuples ({e})"
            ) from None
    try:
        layers = [tuple(int(x) for x in t) for t in value]
        if not layers or any(len(t) != 3 for t in layers):
            raise ValueError
    except (TypeError, ValueError):
        raise SpeechFTError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride) tuples") from None
    return layers


def _count_layers(w: dict, prefix: str = "encoder.layers.") -> int:
    ids = {int(m.group(1)) for k in w if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _pos_conv(w: dict) -> tuple[int, int] | None:
    """(kernel, groups) of the convolutional positional embedding, from its weight shape."""
    for k in (
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv.0.parametrizations.weight.original1",
        "encoder.pos_conv.0.weight",
    ):
        if k in w:
            out_ch, in_per_group, kernel = w[k].shape
            return int(kernel), int(out_ch // in_per_group)
    return None


def infer_fairseq_cfg(w: dict, family: str, path: Path) -> dict:
    """A fairseq model config read off the weight shapes (for files that carry none)."""
    hidden = int(w["post_extract_proj.weight"].shape[0])
    convs = []
    while f"feature_extractor.conv_layers.{len(convs)}.0.weight" in w:
        out_ch, _, kernel = w[f"feature_extractor.conv_layers.{len(convs)}.0.weight"].shape
        convs.append((int(out_ch), int(kernel)))
    strides = STANDARD_FRONTEND.get(tuple(k for _, k in convs))
    if strides is None:
        raise SpeechFTError(
            f"{path}: carries no config and its front end (kernels {[k for _, k in convs]}) is not the "
            "standard one, so the strides are unknown; pass --like with the pre-trained checkpoint or "
            "encoder folder it was fine-tuned from"
        )
    layer_norm_frontend = "feature_extractor.conv_layers.1.2.1.weight" in w
    kernel, groups = _pos_conv(w) or (128, 16)
    cfg = dict(
        encoder_embed_dim=hidden,
        encoder_layers=_count_layers(w),
        encoder_attention_heads=max(1, hidden // 64),
        encoder_ffn_embed_dim=int(w["encoder.layers.0.fc1.weight"].shape[0]),
        conv_feature_layers=[(d, k, s) for (d, k), s in zip(convs, strides)],
        conv_bias="feature_extractor.conv_layers.0.0.bias" in w,
        extractor_mode="layer_norm" if layer_norm_frontend else "default",
        # Every published model with a layer-normed front end (wav2vec 2.0 LV-60, HuBERT
        # Large, WavLM Large) is also pre-LN; Base models are post-LN.
        layer_norm_first=layer_norm_frontend,
        conv_pos=kernel,
        conv_pos_groups=groups,
    )
    if family == "wavlm" and "encoder.layers.0.self_attn.relative_attention_bias.weight" in w:
        cfg["num_buckets"] = int(w["encoder.layers.0.self_attn.relative_attention_bias.weight"].shape[0])
    return cfg


def hf_config(family: str, fcfg: dict, has_mask_emb: bool):
    """transformers config for a wav2vec2-family model from a fairseq model config."""
    from . import family_class

    c = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in fcfg.items() if v is not None}}
    convs = parse_conv_layers(c["conv_feature_layers"])
    mode = str(c["extractor_mode"])
    if mode not in ("default", "layer_norm"):
        raise SpeechFTError(f"extractor_mode '{mode}' is not supported (expected default or layer_norm)")
    kw = dict(
        hidden_size=int(c["encoder_embed_dim"]),
        num_hidden_layers=int(c["encoder_layers"]),
        num_attention_heads=int(c["encoder_attention_heads"]),
        intermediate_size=int(c["encoder_ffn_embed_dim"]),
        hidden_act=str(c["activation_fn"]),
        hidden_dropout=float(c["dropout"]),
        attention_dropout=float(c["attention_dropout"]),
        activation_dropout=float(c["activation_dropout"]),
        feat_proj_dropout=float(c["dropout_input"]),
        layerdrop=0.0,
        feat_extract_norm="group" if mode == "default" else "layer",
        feat_extract_activation="gelu",
        conv_dim=[d for d, _, _ in convs],
        conv_kernel=[k for _, k, _ in convs],
        conv_stride=[s for _, _, s in convs],
        conv_bias=bool(c["conv_bias"]),
        num_conv_pos_embeddings=int(c["conv_pos"]),
        num_conv_pos_embedding_groups=int(c["conv_pos_groups"]),
        do_stable_layer_norm=bool(c["layer_norm_first"]),
    )
    if not has_mask_emb:  # no masked_spec_embed parameter in the model then
        kw.update(mask_time_prob=0.0, mask_feature_prob=0.0)
    if family == "wavlm":
        kw.update(num_buckets=int(c["num_buckets"]), max_bucket_distance=int(c["max_distance"]))
    if family == "hubert":
        kw.update(feat_proj_layer_norm=True)
    return family_class(family).config_class(**kw)


def decoar2_config(w: dict, fcfg: dict | None):
    from .decoar2_hf import DeCoAR2Config

    hidden, mels = (int(x) for x in w["post_extract_proj.weight"].shape)
    kernel, groups = _pos_conv(w) or (128, 16)
    c = {**{k: v for k, v in (fcfg or {}).items() if v is not None}}
    return DeCoAR2Config(
        num_mel_bins=mels,
        hidden_size=hidden,
        num_hidden_layers=_count_layers(w),
        num_attention_heads=int(c.get("encoder_attention_heads", max(1, hidden // 64))),
        intermediate_size=int(w["encoder.layers.0.fc1.weight"].shape[0]),
        hidden_act=str(c.get("activation_fn", "gelu")),
        num_conv_pos_embeddings=kernel,
        num_conv_pos_embedding_groups=groups,
    )


# ---------------------------------------------------------------------------------------
# Parameter names: fairseq -> transformers
# ---------------------------------------------------------------------------------------
# Pre-training-only parameters of the original models; not part of the encoder.
PRETRAINING_ONLY = re.compile(
    r"^(final_proj\.|label_embs|label_embs_concat$|quantizer\.|project_q\.|target_glu\.|"
    r"project_inp\.|decoder\.)"
)

_LAYER_PARTS = {
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn.grep_linear": "attention.gru_rel_pos_linear",
    "self_attn.grep_a": "attention.gru_rel_pos_const",
    "self_attn.relative_attention_bias": "attention.rel_attn_embed",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_LAYER_RE = re.compile(
    r"encoder\.layers\.(\d+)\.(" + "|".join(re.escape(p) for p in _LAYER_PARTS) + r")(\.weight|\.bias)?$"
)


def _pos_conv_names(model_keys: set[str], prefix: str) -> dict[str, str]:
    """fairseq's weight-normed positional conv -> whichever names this transformers uses."""
    new = f"{prefix}.parametrizations.weight.original0" in model_keys
    return {
        "weight_g": f"{prefix}.parametrizations.weight.original0" if new else f"{prefix}.weight_g",
        "weight_v": f"{prefix}.parametrizations.weight.original1" if new else f"{prefix}.weight_v",
        "parametrizations.weight.original0": f"{prefix}.parametrizations.weight.original0"
        if new
        else f"{prefix}.weight_g",
        "parametrizations.weight.original1": f"{prefix}.parametrizations.weight.original1"
        if new
        else f"{prefix}.weight_v",
        "bias": f"{prefix}.bias",
        "weight": f"{prefix}.weight",
    }


def map_fairseq_name(name: str, family: str, model_keys: set[str]) -> str | None:
    """The transformers name of a fairseq parameter; None if it has no counterpart."""
    if m := _LAYER_RE.match(name):
        return f"encoder.layers.{m.group(1)}.{_LAYER_PARTS[m.group(2)]}{m.group(3) or ''}"
    if name.startswith("encoder.pos_conv.0."):
        return _pos_conv_names(model_keys, "encoder.pos_conv_embed.conv").get(name[len("encoder.pos_conv.0.") :])
    if name.startswith("encoder.layer_norm."):
        return name
    if family == "decoar2":
        if name.startswith("post_extract_proj."):
            return "feature_projection." + name[len("post_extract_proj.") :]
        return None
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(\d+)\.(?:1\.)?(weight|bias)", name):
        layer, part, what = m.groups()
        if part == "0":
            return f"feature_extractor.conv_layers.{layer}.conv.{what}"
        if part == "2":  # GroupNorm (first layer only) or LayerNorm wrapped in transposes
            return f"feature_extractor.conv_layers.{layer}.layer_norm.{what}"
        return None
    if name.startswith("post_extract_proj."):
        return "feature_projection.projection." + name[len("post_extract_proj.") :]
    if name.startswith("layer_norm."):  # over the conv features, before the projection
        return "feature_projection.layer_norm." + name[len("layer_norm.") :]
    if name == "mask_emb":
        return "masked_spec_embed"
    return None


def map_state_dict(w: dict, family: str, model_keys: set[str], path: Path) -> tuple[dict, list[str]]:
    out, dropped, unknown = {}, [], []
    for name, tensor in w.items():
        new = map_fairseq_name(name, family, model_keys)
        if new is not None and new in model_keys:
            out[new] = tensor.float() if tensor.is_floating_point() else tensor
        elif PRETRAINING_ONLY.match(name) or (family == "decoar2" and not name.startswith("encoder.")):
            dropped.append(name)
        elif new is not None and new not in model_keys and name == "mask_emb":
            dropped.append(name)
        else:
            unknown.append(name if new is None else f"{name} (-> {new})")
    if unknown:
        raise SpeechFTError(
            f"{path}: {len(unknown)} weight(s) with no place in a {family} encoder: "
            f"{', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}; wrong --family, or a "
            "variant this converter does not know"
        )
    missing = sorted(model_keys - set(out))
    if missing:
        raise SpeechFTError(
            f"{path}: missing {len(missing)} weight(s) a {family} encoder needs: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; the checkpoint is "
            "incomplete or of another architecture"
        )
    return out, dropped


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
    enc = cls(model, provenance)
    return enc.save(out, overwrite=overwrite)


def _reference_merge_config(path: Path) -> dict | None:
    """The Speech-FT reference code writes merged_model.pt + config.yaml (alpha, method, ...)."""
    import yaml

    cfg_path = path.with_name("config.yaml")
    if not cfg_path.is_file():
        return None
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
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
