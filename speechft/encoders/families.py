"""What speechft knows about each encoder family, as plain data: importable without torch or transformers.

Commands that only move tensors or read folders (`speechft merge`, doctor's weight checks, sweep's
merge step) need a family's parameter-name patterns and its folder detection, not its model code;
importing the adapters would pull in transformers (~6 s of an 8 s merge). The adapters
(hubert/wav2vec2.py, whisper.py, decoar2.py) read their patterns from here, so each is written once.

Patterns are regexes matched (re.match) against parameter names of the HF model, which are the keys
of the folder's model.safetensors.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpeechFTError
from ..io_utils import read_json
from ..provenance import read_provenance


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    model_type: str  # config.json's model_type
    # The parameters of the waveform front end (wav2vec2's conv stack, Whisper's convs): never trained
    # (Speech-FT freezes the feature extractor for the whole run). Empty where the front end has none.
    frontend_patterns: tuple[str, ...] = ()
    # Parameters that exist only for pre-training (masked-prediction heads, quantizers): never
    # fine-tuned, and a merge keeps theta0's values.
    pretraining_only_patterns: tuple[str, ...] = ()
    # Constants stored as parameters (e.g. Whisper's sinusoidal positions): never trained.
    fixed_patterns: tuple[str, ...] = ()
    # Waveform samples per output frame (sanity checks and docs; real lengths always come from the
    # model's own arithmetic).
    nominal_hop: int = 320

    def is_frontend(self, key: str) -> bool:
        return _matches(self.frontend_patterns, key)

    def is_pretraining_only(self, key: str) -> bool:
        return _matches(self.pretraining_only_patterns, key)

    def is_fixed(self, key: str) -> bool:
        return _matches(self.fixed_patterns, key)


@functools.cache
def _compiled(patterns: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def _matches(patterns: tuple[str, ...], key: str) -> bool:
    rx = _compiled(patterns)
    return bool(rx and rx.match(key))


_WAV2VEC2_FRONTEND = (r"feature_extractor\.",)
FAMILY_INFO: dict[str, FamilyInfo] = {
    f.name: f
    for f in (
        # fairseq/s3prl HuBERT checkpoints also carry the masked-prediction heads.
        FamilyInfo(
            "hubert", "hubert", _WAV2VEC2_FRONTEND, (r"masked_spec_embed$", r"final_proj\.", r"label_embs_concat")
        ),
        FamilyInfo(
            "wav2vec2",
            "wav2vec2",
            _WAV2VEC2_FRONTEND,
            (r"masked_spec_embed$", r"quantizer\.", r"project_q\.", r"project_hid\."),
        ),
        FamilyInfo("wavlm", "wavlm", _WAV2VEC2_FRONTEND, (r"masked_spec_embed$",)),
        FamilyInfo("data2vec", "data2vec-audio", _WAV2VEC2_FRONTEND, (r"masked_spec_embed$",)),
        # transformers builds Whisper's positions with requires_grad=False, but from_pretrained hands
        # them back trainable; they are fixed sinusoids. One frame per 2 log-mel hops of 160 samples.
        FamilyInfo("whisper", "whisper", (r"conv1\.", r"conv2\."), (), (r"embed_positions\.",), nominal_hop=320),
        # No front end to freeze: the official Speech-FT code freezes only parameters named
        # `feature_extractor*`, and DeCoAR 2.0's fbank has no parameters; its input projection
        # (`feature_projection`, s3prl's post_extract_proj) trains like the transformer. One frame per
        # 2 fbank hops of 160 samples (s3prl keeps every second frame and reports a 320-sample rate).
        FamilyInfo("decoar2", "decoar2", (), nominal_hop=320),
    )
}
# config.json model_type -> family
MODEL_TYPES: dict[str, str] = {f.model_type: f.name for f in FAMILY_INFO.values()}


def family_info(family: str) -> FamilyInfo:
    if family not in FAMILY_INFO:
        raise SpeechFTError(f"unknown encoder family '{family}'; choose one of {', '.join(FAMILY_INFO)}")
    return FAMILY_INFO[family]


def detect_family(path: str | os.PathLike) -> str:
    """The family of an encoder folder: speechft.json's `family`, else config.json's model_type."""
    path = Path(path)
    if not path.exists():
        s = str(path)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", s) and not s.startswith((".", "/")):
            raise SpeechFTError(
                f"'{s}' is not a local folder; a Hugging Face Hub id becomes one through "
                "speechft.encoders.resolve_encoder, as every command's encoder option does"
            )
        raise SpeechFTError(
            f"{path}: encoder folder not found; pass a folder written by `speechft encoder "
            "default|tiny|convert`, `finetune` or `merge`"
        )
    if not path.is_dir():
        raise SpeechFTError(f"{path}: is a file; an encoder is a folder with config.json and model.safetensors")
    prov = read_provenance(path)
    cfg_path = path / "config.json"
    if prov.get("family"):
        fam = prov["family"]
        if fam not in FAMILY_INFO:
            raise SpeechFTError(f"{path}/speechft.json: unknown family '{fam}'; known: {', '.join(FAMILY_INFO)}")
        # Loading hubert weights as wav2vec2 (same tensor names) would succeed and silently compute the
        # wrong model, so the two files must agree.
        model_type = read_json(cfg_path).get("model_type") if cfg_path.is_file() else None
        if model_type in MODEL_TYPES and MODEL_TYPES[model_type] != fam:
            raise SpeechFTError(
                f"{path}/speechft.json: family '{fam}' contradicts config.json's model_type "
                f"'{model_type}' ({MODEL_TYPES[model_type]}); fix or delete speechft.json's family"
            )
        return fam
    if not cfg_path.exists() and (path / "checkpoints").is_dir():  # a killed `finetune`/`pretrain` run
        raise SpeechFTError(
            f"{path}: this run has not finished (checkpoints but no model): continue it with "
            f"`speechft finetune --resume` (or `speechft pretrain --resume`)"
        )
    if not cfg_path.exists():
        raise SpeechFTError(
            f"{cfg_path}: missing; an encoder folder needs config.json and model.safetensors "
            "(convert fairseq/s3prl checkpoints with `speechft encoder convert`)"
        )
    model_type = read_json(cfg_path).get("model_type")
    if model_type not in MODEL_TYPES:
        raise SpeechFTError(
            f"{cfg_path}: model_type '{model_type}' is not a supported speech encoder; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]


# config.json keys that describe no architecture (bookkeeping, or training-time noise settings).
_CONFIG_BOOKKEEPING = (
    "transformers_version",
    "_name_or_path",
    "architectures",
    "torch_dtype",
    "dtype",
    "auto_map",
    "layerdrop",
    "encoder_layerdrop",
    "mask_time_prob",
    "mask_feature_prob",
    "apply_spec_augment",
)


def config_summary(path: str | os.PathLike) -> dict:
    """config.json without bookkeeping keys, for comparing two folders' architectures."""
    cfg = read_json(Path(path) / "config.json")
    for k in _CONFIG_BOOKKEEPING:
        cfg.pop(k, None)
    return json.loads(json.dumps(cfg, sort_keys=True))
