"""`speechft encoder export-whisper ENCODER --decoder-from WHISPER_MODEL --out DIR`: a Whisper that transcribes again.

speechft fine-tunes and merges Whisper's *encoder* only (a `WhisperEncoder` folder). A Whisper user wants
the model back whole: this writes a `transformers.WhisperForConditionalGeneration` folder made of the
encoder folder's weights (bit for bit, in their own dtype) and everything else of the original model
(decoder, token embedding / tied `proj_out`, config.json, generation_config.json, tokenizer and feature
extractor files), so `WhisperForConditionalGeneration.from_pretrained(DIR)` loads it without speechft.

The decoder attends to the encoder's output, so the two must agree on what that output is: the
encoder-side hyper-parameters (`ENCODER_KEYS`) are compared one by one and a mismatch is refused, naming
the key and both values. `whisper_model_folder` turns --decoder-from into a folder (`default`: the
embedded Whisper tiny.en, converted whole once and cached; a local folder; or a Hub id's snapshot in the
Hugging Face cache, speechft.encoders.hub.hub_snapshot). ENCODER may be a Hub id too (its converted encoder).
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, check_output_location, read_json, refuse_existing_output, write_json
from ..provenance import FORMAT_VERSION, PROVENANCE_FILE, lineage_entry, read_provenance
from ..safetensors_io import Checkpoint, ShardedWriter, Spec, check_finite, safetensors_order

FULL_MODEL = "WhisperForConditionalGeneration"
# What the decoder's cross-attention relies on the encoder for (its output width and what it was trained on).
ENCODER_KEYS = (
    "d_model",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_ffn_dim",
    "num_mel_bins",
    "max_source_positions",
    "activation_function",  # one key for both halves in WhisperConfig: the decoder's config would change the encoder
)
# Files of a Whisper model folder besides its weights, copied when present (tokenizer, feature extractor).
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "processor_config.json",
)
ENCODER_HINT = (
    "export-whisper takes a Whisper encoder folder (`speechft encoder default`, or finetune or merge output from one)"
)
MODEL_HINT = (
    "pass `default` (the embedded Whisper tiny.en), a local WhisperForConditionalGeneration folder or a Hub id "
    "(openai/whisper-small)"
)


# ---- writing weights (shared with default.build_default_whisper) ------------------------------------
def write_weights(folder: Path, spec: Spec, read) -> dict[str, str]:
    """Write the tensors `read(key)` returns for every key of `spec` into `folder` (model.safetensors,
    sharded when large); returns {file name: sha256}."""
    writer = ShardedWriter(folder, spec, safetensors_order(spec))
    try:
        for key in writer.order:
            writer.write(key, read(key))
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def follow_umask(folder: Path) -> None:
    """Written files get the permissions a plain open() would give (transformers' and mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


# ---- the two inputs --------------------------------------------------------------------------------
def whisper_model_folder(name: str) -> Path:
    """--decoder-from -> a local folder holding a whole Whisper model (the one place a Hub id resolves)."""
    if name == "default":
        from .default import default_whisper_dir

        return default_whisper_dir()
    from .hub import hub_snapshot, parse_hub_id

    if parse_hub_id(name):  # org/name[@revision]: the Hub cache's snapshot, decoder and tokenizer files included
        return hub_snapshot(name, COPIED_FILES)
    path = Path(name)
    if not path.is_dir():
        what = "is a file" if path.exists() else "not found"
        raise SpeechFTError(f"--decoder-from {name}: {what}; {MODEL_HINT}")
    return path


def _config(path: Path, flag: str, hint: str) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise SpeechFTError(f"{flag} {path}: no config.json; {hint}")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("model_type") != "whisper":
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise SpeechFTError(f"{cfg_path}: model_type '{got}' is not Whisper; {hint}")
    return cfg


def _checkpoint(path: Path, flag: str) -> Checkpoint:
    try:
        return Checkpoint(path)
    except SpeechFTError as e:
        raise SpeechFTError(f"{flag} {path}: {e}") from None


def _decoder_layout(ckpt: Checkpoint, path: Path) -> str:
    """The prefix of the model's encoder/decoder names: 'model.' (WhisperForConditionalGeneration) or ''
    (a bare WhisperModel folder)."""
    for prefix in ("model.", ""):
        if any(k.startswith(f"{prefix}decoder.") for k in ckpt.where):
            return prefix
    raise SpeechFTError(
        f"--decoder-from {path}: its weights hold no decoder (an encoder folder?); {MODEL_HINT} with its decoder"
    )


def _check_encoder(path: Path) -> None:
    """ENCODER must be a Whisper encoder folder (speechft's family, WhisperEncoder's names)."""
    from .families import detect_family

    family = detect_family(path)  # a missing folder or unknown family: its own one-line error
    if family != "whisper":
        raise SpeechFTError(f"{path}: a {family} encoder folder; {ENCODER_HINT}")


def _check_dims(enc_path: Path, enc_cfg: dict, model_path: Path, model_cfg: dict) -> None:
    for key in ENCODER_KEYS:
        if enc_cfg.get(key) != model_cfg.get(key):
            raise SpeechFTError(
                f"{enc_path}: {key} = {enc_cfg.get(key)} but the decoder's model {model_path} has {key} = "
                f"{model_cfg.get(key)}; export an encoder with the decoder of the Whisper it was fine-tuned from"
            )


def _weight_plan(enc: Checkpoint, model: Checkpoint, prefix: str, enc_path: Path, model_path: Path):
    """(spec of the output folder, {output key: (checkpoint, key in it)}): every encoder tensor of the
    model replaced by the encoder folder's, everything else kept, under WhisperForConditionalGeneration's names."""
    enc_spec, model_spec = enc.spec(), model.spec()
    theirs = {k[len(prefix) + len("encoder.") :]: k for k in model_spec if k.startswith(f"{prefix}encoder.")}
    for key in sorted(set(theirs) | set(enc_spec)):
        if key not in enc_spec or key not in theirs:
            where = model_path if key not in enc_spec else enc_path
            raise SpeechFTError(
                f"{enc_path}: encoder tensor '{key}' is only in {where}; the encoder and {model_path} are not "
                "the same Whisper architecture"
            )
        if enc_spec[key][1] != model_spec[theirs[key]][1]:
            raise SpeechFTError(
                f"{enc_path}: encoder tensor '{key}' has shape {list(enc_spec[key][1])} but "
                f"{list(model_spec[theirs[key]][1])} in {model_path}; pair the encoder with its own Whisper model"
            )
    spec: Spec = {}
    source: dict[str, tuple[Checkpoint, str]] = {}
    for key, entry in model_spec.items():
        if key.startswith(f"{prefix}encoder."):
            continue
        out_key = key if key.startswith("proj_out.") else f"model.{key[len(prefix) :]}"
        spec[out_key], source[out_key] = entry, (model, key)
    for key, entry in enc_spec.items():
        spec[f"model.encoder.{key}"], source[f"model.encoder.{key}"] = entry, (enc, key)
    return spec, source


# ---- the export ------------------------------------------------------------------------------------
def export_whisper(
    encoder: str | os.PathLike, decoder_from: str, out: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """Write encoder + decoder_from's decoder as a WhisperForConditionalGeneration folder at `out`.
    Returns (out, the names of the files copied from decoder_from besides its weights)."""
    from .hub import resolve_encoder

    enc_path, out = resolve_encoder(encoder), Path(out)  # a Hub id: its converted encoder folder
    _check_encoder(enc_path)
    model_path = whisper_model_folder(decoder_from)
    check_output_location(out, {"ENCODER": enc_path, "--decoder-from": model_path})
    refuse_existing_output(out, overwrite)
    enc_cfg = _config(enc_path, "ENCODER", ENCODER_HINT)
    model_cfg = _config(model_path, "--decoder-from", MODEL_HINT)
    enc = _checkpoint(enc_path, "ENCODER")
    try:
        if any(k.startswith(("decoder.", "model.")) for k in enc.where):
            raise SpeechFTError(f"{enc_path}: holds a whole Whisper model, not its encoder; {ENCODER_HINT}")
        _check_dims(enc_path, enc_cfg, model_path, model_cfg)
        model = _checkpoint(model_path, "--decoder-from")
        try:
            return _write(enc, model, enc_path, model_path, model_cfg, out, overwrite)
        finally:
            model.close()
    finally:
        enc.close()


def _write(enc, model, enc_path, model_path, model_cfg, out, overwrite):
    prefix = _decoder_layout(model, model_path)
    spec, source = _weight_plan(enc, model, prefix, enc_path, model_path)
    if "proj_out.weight" not in spec and model_cfg.get("tie_word_embeddings") is False:
        raise SpeechFTError(
            f"--decoder-from {model_path}: no proj_out.weight and its config does not tie it to the token "
            f"embedding; {MODEL_HINT}"
        )

    def read(key):
        ckpt, name = source[key]
        t = ckpt.read(name)
        check_finite(t, str(ckpt.file_of(name)), name)
        return t

    copied = [f for f in COPIED_FILES if (model_path / f).is_file()]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hashes = write_weights(tmp, spec, read)
        write_json(tmp / "config.json", {**model_cfg, "architectures": [FULL_MODEL]})
        for name in copied:
            shutil.copyfile(model_path / name, tmp / name)
        follow_umask(tmp)
        prov = {
            "format": FORMAT_VERSION,
            "model": FULL_MODEL,
            "source": f"speechft encoder export-whisper: encoder {enc_path}, decoder from {model_path}",
            "weights_sha256": hashes,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "parents": [
                lineage_entry("encoder", enc_path, "whisper", read_provenance(enc_path), enc.sha256()),
                lineage_entry("decoder", model_path, "whisper", read_provenance(model_path), model.sha256()),
            ],
        }
        write_json(tmp / PROVENANCE_FILE, prov)
    return out, copied


# ---- CLI ---------------------------------------------------------------------------------------------
def add_arguments(p):
    p.add_argument("encoder", help="a Whisper encoder folder (default, fine-tuned or merged) or Hub id")
    p.add_argument(
        "--decoder-from",
        required=True,
        metavar="WHISPER_MODEL",
        help="the whole Whisper model whose decoder to use: `default` (the embedded Whisper tiny.en), a local "
        "WhisperForConditionalGeneration folder (a folder named default: ./default) or a Hub id org/name[@revision]",
    )
    p.add_argument("--out", required=True, help="output WhisperForConditionalGeneration folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args):
    out, copied = export_whisper(args.encoder, args.decoder_from, args.out, overwrite=args.overwrite)
    also = f" (with {', '.join(copied)})" if copied else ""
    print(f"wrote {FULL_MODEL} to {out}: encoder {args.encoder}, decoder from {args.decoder_from}{also}")
