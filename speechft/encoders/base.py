"""One encoder wrapper for every family: waveforms + lengths -> all hidden states + frame lengths.

An `Encoder` owns one Hugging Face model (`self.model`); the names of `self.model`'s
parameters are exactly the keys in the folder's model.safetensors, so freezing, merging
and analysis all speak the same names. Family adapters (wav2vec2.py, whisper.py, decoar2.py)
say only what differs: which config/model classes and how to run the forward pass. Which
parameters are the front end, which exist only for pre-training and which are fixed is plain
data in families.py (readable without transformers); each adapter class picks up its family's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, sha256_file, write_json
from ..provenance import FORMAT_VERSION, PROVENANCE_FILE, read_provenance
from ..safetensors_io import Checkpoint, all_finite, library_error_types, os_error_of
from .families import FAMILY_INFO, FamilyInfo


@dataclass
class EncoderOutput:
    hidden_states: list[torch.Tensor]  # L+1 tensors (B, F, D): input to layer 1, then each layer's output
    frame_lengths: torch.Tensor  # (B,) int64 valid frames per item

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, F) bool, True where a frame is real."""
        f = self.hidden_states[0].shape[1]
        return torch.arange(f, device=self.frame_lengths.device)[None, :] < self.frame_lengths[:, None]


def fit_frame_mask(frame_mask: torch.Tensor, frames: int) -> torch.Tensor:
    """A (B, F') frame mask cut or padded (with False) to the `frames` the model computes."""
    if frame_mask.shape[1] >= frames:
        return frame_mask[:, :frames]
    return torch.nn.functional.pad(frame_mask, (0, frames - frame_mask.shape[1]), value=False)


def key_padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, F) bool -> (B, 1, 1, F) additive attention bias (0 keep, very negative drop).

    Works with both eager and SDPA attention in transformers."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class Encoder(nn.Module):
    """Base wrapper. Subclasses set the class attributes and implement `_forward` and
    `frame_lengths`."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    model_class: ClassVar[type]
    # The family's name patterns and frame hop, from families.py (written once, there).
    info: ClassVar[FamilyInfo]
    frontend_patterns: ClassVar[tuple[str, ...]] = ()
    pretraining_only_patterns: ClassVar[tuple[str, ...]] = ()
    fixed_patterns: ClassVar[tuple[str, ...]] = ()
    nominal_hop: ClassVar[int] = 320

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            cls.info = FAMILY_INFO[cls.family]
            cls.frontend_patterns = cls.info.frontend_patterns
            cls.pretraining_only_patterns = cls.info.pretraining_only_patterns
            cls.fixed_patterns = cls.info.fixed_patterns
            cls.nominal_hop = cls.info.nominal_hop

    def __init__(self, model: nn.Module, provenance: dict | None = None):
        super().__init__()
        self.model = model
        self.provenance = dict(provenance or {})
        self._disable_training_noise()
        self.train(model.training)  # the wrapper's mode follows the model's (eval after loading)

    # ---- what the adapters provide -------------------------------------------------
    def _forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def tiny_config(cls, **overrides):
        raise NotImplementedError

    def _disable_training_noise(self) -> None:
        """Layerdrop and time/feature masking (SpecAugment) off, whatever the config says: fine-tuning in
        Speech-FT uses neither inside the encoder, and published configs often ship them on. With dropout at 0,
        training mode then computes exactly what eval mode does (tests/test_encoders.py pins it per family)."""
        cfg = self.model.config
        for key in ("layerdrop", "encoder_layerdrop"):
            if hasattr(cfg, key):
                setattr(cfg, key, 0.0)
        # The mask probabilities stay as published: they decide whether the checkpoint has
        # a `masked_spec_embed`, and changing them would make the saved folder unloadable.
        if hasattr(cfg, "apply_spec_augment"):
            cfg.apply_spec_augment = False
        # A config flag alone is not enough: data2vec-audio's config has no apply_spec_augment (transformers
        # then masks with mask_time_prob = 0.05 in training mode). So the model's own masking step is replaced,
        # on this instance only, by one that masks nothing; the pre-training mask speechft.pretrain asks for
        # is applied by the adapters themselves (wav2vec2.py's `_masking`), not by this step.
        if callable(getattr(self.model, "_mask_hidden_states", None)):
            self.model._mask_hidden_states = _no_spec_augment

    # ---- shared behaviour ----------------------------------------------------------
    def forward(
        self, wavs: torch.Tensor, lengths: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        """wavs: (B, T) float32 at 16 kHz, zero-padded; lengths: (B,) valid samples.

        frame_mask: optional (B, F) bool over the output frames, True = hide what this frame sees of the
        input (masked prediction, speechft.pretrain). Each family blanks its own input representation
        under those frames (`_forward`); None (the default) changes nothing. Columns past the frames the
        batch has are ignored; F may also be shorter (the rest stays visible).
        """
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (batch, samples), got shape {tuple(wavs.shape)}")
        if lengths is None:
            lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        lengths = lengths.to(wavs.device)
        if frame_mask is None:
            states = self._forward(wavs, lengths)
        else:
            if frame_mask.dim() != 2 or frame_mask.shape[0] != wavs.shape[0] or frame_mask.dtype != torch.bool:
                raise ValueError(
                    f"frame_mask must be a (batch, frames) bool tensor for {wavs.shape[0]} items, got "
                    f"{frame_mask.dtype} {tuple(frame_mask.shape)}"
                )
            states = self._forward(wavs, lengths, frame_mask=frame_mask.to(wavs.device))
        return EncoderOutput(list(states), self.frame_lengths(lengths).to(wavs.device))

    @property
    def num_layers(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "num_hidden_layers", None) or cfg.encoder_layers)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    @classmethod
    def is_frontend(cls, name: str) -> bool:
        return cls.info.is_frontend(name)

    @classmethod
    def is_pretraining_only(cls, name: str) -> bool:
        return cls.info.is_pretraining_only(name)

    @classmethod
    def is_fixed(cls, name: str) -> bool:
        return cls.info.is_fixed(name)

    def frontend_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if self.is_frontend(n)]

    def finetunable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Everything but the front end and the pre-training-only parameters."""
        return [
            (n, p)
            for n, p in self.model.named_parameters()
            if not self.is_frontend(n) and not self.is_pretraining_only(n)
        ]

    @classmethod
    def from_config(cls, config, provenance: dict | None = None, seed: int | None = None) -> Encoder:
        if seed is not None:
            torch.manual_seed(seed)
        model = cls.model_class(config)
        model.eval()
        return cls(model, provenance)

    # ---- save / load ---------------------------------------------------------------
    def save(
        self,
        out: str | os.PathLike,
        provenance: dict | None = None,
        overwrite: bool = False,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """Write a HF `save_pretrained` folder + speechft.json, atomically."""
        out = Path(out)
        prov = {**self.provenance, **(provenance or {})}
        with atomic_dir(out, overwrite=overwrite) as tmp:
            with quiet_transformers():
                try:
                    self.model.save_pretrained(tmp)
                except library_error_types() as e:  # safetensors' own I/O error: a full disk, a read-only folder
                    raise (os_error_of(e, tmp) or e) from e
            # transformers writes the weights through a private temp file (0600); like every other
            # speechft output they follow the umask, so a shared folder stays readable.
            umask = os.umask(0)
            os.umask(umask)
            for p in tmp.iterdir():
                if p.is_file():
                    os.chmod(p, 0o666 & ~umask)
            weights = sorted(p.name for p in tmp.glob("*.safetensors"))
            prov.update(
                {
                    "format": FORMAT_VERSION,
                    "family": self.family,
                    "weights_sha256": {w: sha256_file(tmp / w) for w in weights},
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                }
            )
            prov.setdefault("source", "unknown")
            prov.setdefault("parents", [])
            write_json(tmp / PROVENANCE_FILE, prov)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
        self.provenance = prov
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, check_finite: bool = True) -> Encoder:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise SpeechFTError(
                f"{path}/config.json: missing; an encoder folder needs config.json and "
                "model.safetensors (`speechft doctor` checks a folder)"
            )
        if not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            hint = (
                f"it holds pickled weights ({', '.join(pickled[:3])}), which speechft never unpickles: convert "
                "them with `speechft encoder convert`"
                if pickled
                else "write one with `speechft encoder default|tiny|convert`"
            )
            raise SpeechFTError(f"{path}: no model.safetensors; {hint}")
        try:
            Checkpoint(path).close()  # every header checked against its file, by speechft's own reader
            with quiet_transformers():
                # use_safetensors: never fall back to a pickled pytorch_model.bin. Mismatched shapes are
                # collected (not raised deep inside transformers) so the error below can name them.
                model, info = cls.model_class.from_pretrained(
                    path, output_loading_info=True, use_safetensors=True, ignore_mismatched_sizes=True
                )
        except (SpeechFTError, OSError, ValueError, RuntimeError, *library_error_types()) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpeechFTError(
                f"{path}: cannot load the {cls.family} weights ({first}); "
                "check that the folder is a complete, matching encoder folder"
            ) from None
        problems = []
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(_describe_key(k) for k in info.get(kind, []) or [])
            if keys:
                problems.append(f"{kind.replace('_', ' ')}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        if problems:
            why = (
                "the weights were saved with another config.json (sizes differ): pair them with their own config"
                if len(problems) == 1 and problems[0].startswith("mismatched")
                else "the weights belong to another architecture or were saved with a prefix"
            )
            raise SpeechFTError(f"{path}: model.safetensors does not match config.json ({'; '.join(problems)}); {why}")
        if check_finite:
            for name, t in model.state_dict().items():
                if not all_finite(t):
                    raise SpeechFTError(
                        f"{path}: weight '{name}' contains NaN or infinite values; "
                        "the checkpoint is corrupt (re-export or re-train it)"
                    )
        model.eval()
        return cls(model, read_provenance(path))


def _no_spec_augment(hidden_states, mask_time_indices=None, attention_mask=None):
    """Stands in for transformers' `_mask_hidden_states` (see `Encoder._disable_training_noise`)."""
    return hidden_states


def _describe_key(k) -> str:
    """A loading-info entry: a name, or (name, shape in the file, shape the config builds) for a mismatch."""
    if isinstance(k, tuple) and len(k) == 3:
        return f"{k[0]} (file {list(k[1])} vs config {list(k[2])})"
    return str(k)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars; speechft reports problems itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
