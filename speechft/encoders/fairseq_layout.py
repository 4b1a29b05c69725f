"""fairseq checkpoints in transformers' terms: model configs and parameter names (for convert.py).

fairseq (and s3prl, which wraps it) describes a model with its own config keys and names its
parameters its own way; transformers' wav2vec2-family models and speechft's DeCoAR 2.0 have
others. This module holds the two tables: fairseq config -> transformers config (reading what a
file leaves out off the weight shapes) and fairseq name -> transformers name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..errors import SpeechFTError

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


# Every published front end has 7 convolutions; a config with far more is corrupt or hostile.
MAX_CONV_LAYERS = 64


def _repeated_size(a, b) -> int:
    """The length of `a * b` (a list times a count, or a count times a number), computed without building it."""
    if isinstance(a, (list, tuple)) and isinstance(b, int):
        return len(a) * b
    if isinstance(b, (list, tuple)) and isinstance(a, int):
        return len(b) * a
    return 0


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
                if isinstance(node.op, ast.Mult) and _repeated_size(a, b) > MAX_CONV_LAYERS:
                    # `[(512, 10, 5)] * 10**12` is a few bytes of a checkpoint's config and terabytes of list.
                    raise ValueError(f"more than {MAX_CONV_LAYERS} layers")
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
        if not layers or len(layers) > MAX_CONV_LAYERS or any(len(t) != 3 for t in layers):
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
# Pre-training-only parameters of the original models; not part of the encoder (HuBERT's final_proj and
# label_embs_concat are kept beside it by convert.py: pretraining_heads.py).
FAIRSEQ_PRETRAINING_ONLY = re.compile(
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
        elif FAIRSEQ_PRETRAINING_ONLY.match(name) or (family == "decoar2" and not name.startswith("encoder.")):
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
