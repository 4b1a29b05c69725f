"""DeCoAR 2.0 adapter: the model itself lives in decoar2_hf.py (a transformers model with
remote code, so its folders load with `AutoModel.from_pretrained(dir, trust_remote_code=True)`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from ..io_utils import read_json
from .base import Encoder
from .decoar2_hf import DeCoAR2Config, DeCoAR2Model

# Saving writes auto_map into config.json and copies decoar2_hf.py into the folder.
DeCoAR2Config.register_for_auto_class()
DeCoAR2Model.register_for_auto_class("AutoModel")
try:  # lets AutoModel load DeCoAR folders in-process when speechft is imported
    AutoConfig.register("decoar2", DeCoAR2Config)
    AutoModel.register(DeCoAR2Config, DeCoAR2Model)
except ValueError:
    pass


_TOLD: set[str] = set()


class DeCoAR2Adapter(Encoder):
    family, config_class, model_class = "decoar2", DeCoAR2Config, DeCoAR2Model

    @classmethod
    def load(cls, path, check_finite: bool = True):
        enc = super().load(path, check_finite)
        # Folders saved before the front end followed s3prl lack the key and load with the reference's
        # (DeCoAR2Config's defaults). Said once per folder: a model fine-tuned on the old input changes.
        if "frame_subsampling" not in read_json(Path(path) / "config.json") and str(path) not in _TOLD:
            _TOLD.add(str(path))
            print(
                f"speechft: warning: {path}: DeCoAR 2.0 folder from before speechft used s3prl's front end; it "
                "now runs with it (Hamming window, one frame per 20 ms), so earlier results from it are not "
                "comparable; its own decoar2_hf.py (used outside speechft) still has the old one",
                file=sys.stderr,
            )
        return enc

    def frame_lengths(self, lengths):
        return self.model.get_output_lengths(lengths)

    def _forward(self, wavs, lengths, frame_mask=None):
        valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]
        kw = {} if frame_mask is None else {"frame_mask": frame_mask}
        return self.model(wavs, attention_mask=valid.long(), output_hidden_states=True, **kw).hidden_states

    @classmethod
    def tiny_config(cls, **overrides):
        kw = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        )
        kw.update(overrides)
        return DeCoAR2Config(**kw)
