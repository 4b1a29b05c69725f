"""The wav2vec 2.0 family: HuBERT, wav2vec 2.0, WavLM and data2vec-audio.

All four share transformers' convolutional waveform front end (`feature_extractor`) and
its output-length arithmetic; each adapter only names its classes (its parameter-name
patterns are in families.py).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from .base import Encoder, fit_frame_mask


class Wav2Vec2StyleAdapter(Encoder):
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        # The model's own conv arithmetic (kernel/stride per layer), never samples/320.
        return self.model._get_feat_extract_output_lengths(lengths).long()

    @property
    def normalize_waveform(self) -> bool:
        """Models trained on normalized audio (HF's `do_normalize`, e.g. wav2vec2 large-lv60)."""
        return bool(self.provenance.get("normalize_waveform", False))

    def _forward(self, wavs, lengths, frame_mask=None):
        valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]
        if self.normalize_waveform:
            # Per-utterance zero mean / unit variance over the valid samples only.
            n = lengths[:, None].clamp(min=1).to(wavs.dtype)
            mean = (wavs * valid).sum(1, keepdim=True) / n
            var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / n
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        with self._masking(frame_mask):
            out = self.model(wavs, attention_mask=valid.long(), output_hidden_states=True)
        return out.hidden_states

    @contextlib.contextmanager
    def _masking(self, frame_mask):
        """Replace the projected conv features under `frame_mask` before the transformer sees them.

        This is where HuBERT/wav2vec 2.0 pre-training masks (transformers' `mask_time_indices`). That
        argument is not used: the model's masking step that reads it is replaced by one that masks nothing
        (base.py: no SpecAugment in any family), and it would also switch on feature masking in training
        mode when a config has mask_feature_prob > 0. A forward hook on `feature_projection` does just the
        time masking. The mask value is the model's
        own learned `masked_spec_embed` (pre-training-only, so it stays frozen); a model without one
        (its config had mask_time_prob = mask_feature_prob = 0) gets zeros, not a new parameter, so
        the saved folder keeps exactly the parameters of its parent and merges with it.
        """
        if frame_mask is None:
            yield
            return
        embed = getattr(self.model, "masked_spec_embed", None)

        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            m = fit_frame_mask(frame_mask, hidden.shape[1])[..., None]
            token = embed.to(hidden.dtype) if embed is not None else hidden.new_zeros(hidden.shape[-1])
            hidden = torch.where(m, token, hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = self.model.feature_projection.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @classmethod
    def tiny_config(cls, **overrides):
        # Layer-norm front end so a padded batch gives the same outputs as each item alone
        # (group-norm front ends, as in the Base models, normalise over time and cannot).
        kw = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32, 32, 32, 32),
            conv_stride=(5, 4, 4, 4),
            conv_kernel=(10, 8, 4, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            feat_extract_norm="layer",
            do_stable_layer_norm=False,
        )
        kw.update(overrides)
        return cls.config_class(**kw)


class HubertAdapter(Wav2Vec2StyleAdapter):
    family, config_class, model_class = "hubert", HubertConfig, HubertModel


class Wav2Vec2Adapter(Wav2Vec2StyleAdapter):
    family, config_class, model_class = "wav2vec2", Wav2Vec2Config, Wav2Vec2Model


class WavLMAdapter(Wav2Vec2StyleAdapter):
    family, config_class, model_class = "wavlm", WavLMConfig, WavLMModel

    @classmethod
    def tiny_config(cls, **overrides):
        return super().tiny_config(**{"num_buckets": 32, "max_bucket_distance": 200, **overrides})


class Data2VecAudioAdapter(Wav2Vec2StyleAdapter):
    family, config_class, model_class = "data2vec", Data2VecAudioConfig, Data2VecAudioModel

    @classmethod
    def tiny_config(cls, **overrides):
        # data2vec's front end is always layer-normed; its positional embedding is a
        # stack of small convs.
        kw = dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2)
        kw.pop("feat_extract_norm", None)
        return super().tiny_config(**{**kw, **overrides})
