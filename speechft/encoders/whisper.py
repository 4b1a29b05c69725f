"""Whisper's encoder, on variable-length audio.

transformers' `WhisperEncoder.forward` insists on exactly 30 s of log-mel input. Here the
log-mel front end is computed in torch (the same STFT, Slaney mel filters and clamping as
`WhisperFeatureExtractor`) and the encoder runs on the real length, adding the first N
position embeddings and masking padded frames in attention, so a short clip costs what
it lasts and a padded batch matches each item run alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from ..data.audio import SAMPLE_RATE
from ..errors import SpeechFTError
from .base import Encoder, fit_frame_mask, key_padding_bias

N_FFT, HOP = 400, 160


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(fb, dtype=np.float32))  # (freq, mels)


def log_mel(wavs: torch.Tensor, lengths: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, n_mels, N) Whisper log-mel, N = T_i // 160 valid frames per item.

    The STFT is centred with reflect padding. For a padded batch each item's tail is
    reflect-padded by hand so its last frames see what they would see alone; the
    dynamic-range clamp (max - 8) uses each item's valid frames only.
    """
    b, t = wavs.shape
    pad = N_FFT // 2
    x = torch.nn.functional.pad(wavs, (0, pad))
    idx = torch.arange(pad, device=wavs.device)
    for i in range(b):
        n = int(lengths[i])
        if n < t + pad:
            src = (n - 2 - idx).clamp(min=0)  # reflect: x[n+k] = x[n-2-k]
            x[i, n : n + pad] = wavs[i, src]
    window = torch.hann_window(N_FFT, device=wavs.device, dtype=wavs.dtype)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs() ** 2
    frames = lengths // HOP
    power = power[..., : int(frames.max())]  # Whisper drops the last STFT frame
    mel = filters.to(power.dtype).T @ power
    logm = torch.clamp(mel, min=1e-10).log10()
    valid = torch.arange(logm.shape[-1], device=wavs.device)[None, :] < frames[:, None]
    peak = logm.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
    logm = torch.maximum(logm, peak - 8.0)
    return ((logm + 4.0) / 4.0) * valid[:, None, :]


class WhisperAdapter(Encoder):
    """speechft's adapter over transformers' `WhisperEncoder` (the HF model it owns)."""

    family, config_class, model_class = "whisper", WhisperConfig, HFWhisperEncoder

    def __init__(self, model, provenance=None):
        super().__init__(model, provenance)
        self.register_buffer("mel_filters", mel_filters(model.config.num_mel_bins), persistent=False)

    def frame_lengths(self, lengths):
        n = lengths // HOP
        return torch.div(n - 1, 2, rounding_mode="floor") + 1  # conv2: kernel 3, stride 2, padding 1

    def features(self, wavs, lengths) -> torch.Tensor:
        return log_mel(wavs, lengths, self.mel_filters)

    def _forward(self, wavs, lengths, frame_mask=None):
        m = self.model
        mel_frames = lengths // HOP
        if int(mel_frames.min()) < 1:
            raise SpeechFTError("audio shorter than 10 ms cannot be encoded by Whisper")
        frames = self.frame_lengths(lengths)
        if int(frames.max()) > m.config.max_source_positions:
            raise SpeechFTError(
                f"audio of {int(lengths.max()) / SAMPLE_RATE:.1f} s is longer than Whisper's 30 s window; "
                "segment it first"
            )
        mel = self.features(wavs, lengths)
        if frame_mask is not None:
            # Output frame j is conv2 (stride 2) over log-mel frames 2j and 2j+1: those two are set to 0, the
            # value padding has (log-mel is (log10 + 4) / 4, so 0 is a quiet frame).
            under = fit_frame_mask(frame_mask, (mel.shape[-1] + 1) // 2).repeat_interleave(2, dim=1)[:, : mel.shape[-1]]
            mel = mel.masked_fill(under[:, None, :], 0.0)
        return self.encode_features(mel, mel_frames)

    def encode_features(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> list[torch.Tensor]:
        """Log-mel (B, n_mels, N) with valid frame counts -> L+1 hidden states.

        Padded frames are zeroed before each convolution so they act like the convs' own
        zero padding: the valid outputs then equal those of the item run alone.
        """
        m = self.model
        n = mel.shape[-1]
        valid_in = torch.arange(n, device=mel.device)[None, :] < mel_frames[:, None]
        x = nn.functional.gelu(m.conv1(mel * valid_in[:, None, :]))
        x = nn.functional.gelu(m.conv2(x * valid_in[:, None, :]))
        x = x.transpose(1, 2)
        f = x.shape[1]
        frames = torch.div(mel_frames - 1, 2, rounding_mode="floor") + 1
        valid = torch.arange(f, device=mel.device)[None, :] < frames[:, None]
        x = x + m.embed_positions.weight[:f].to(x.dtype)
        x = nn.functional.dropout(x, p=m.config.dropout, training=m.training)
        bias = key_padding_bias(valid, x.dtype)
        states = [x]
        for layer in m.layers:
            x = layer(x, bias)
            if isinstance(x, tuple):
                x = x[0]
            states.append(x)
        # Whisper's final layer norm belongs to the last layer's output (as in transformers).
        states[-1] = m.layer_norm(states[-1])
        keep = valid[..., None].to(x.dtype)
        return [s * keep for s in states]

    @classmethod
    def tiny_config(cls, **overrides):
        kw = dict(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            max_source_positions=1500,
            vocab_size=64,
            max_target_positions=32,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=3,
            begin_suppress_tokens=None,
            suppress_tokens=None,
        )
        kw.update(overrides)
        return WhisperConfig(**kw)

    @classmethod
    def from_config(cls, config, provenance=None, seed=None):
        enc = super().from_config(config, provenance, seed)
        # HF initialises the fixed sinusoidal positions in _init_weights; make sure a
        # freshly built model has them rather than random values.
        from transformers.models.whisper.modeling_whisper import sinusoids

        with torch.no_grad():
            enc.model.embed_positions.weight.copy_(sinusoids(*enc.model.embed_positions.weight.shape))
        return enc
