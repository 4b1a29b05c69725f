"""DeCoAR 2.0 as a transformers model (self-contained: this file is copied into every
saved DeCoAR 2.0 folder, so `AutoModel.from_pretrained(folder, trust_remote_code=True)`
loads it without speechft installed).

Architecture, from the published model (Ling & Liu, "DeCoAR 2.0: Deep Contextualized
Acoustic Representations with Vector Quantization", 2020; s3prl's `decoar2` upstream):
80-dim Kaldi-style log-mel filterbank (25 ms / 10 ms, povey window, pre-emphasis 0.97)
with per-utterance mean/variance normalisation -> linear projection to the model width ->
wav2vec2-style convolutional positional embedding -> post-LN transformer layers. One
frame every 10 ms.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2EncoderLayer, Wav2Vec2PositionalConvEmbedding

FRAME, SHIFT, NFFT = 400, 160, 512


class DeCoAR2Config(PretrainedConfig):
    model_type = "decoar2"

    def __init__(
        self,
        num_mel_bins=80,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        feat_proj_dropout=0.1,
        layer_norm_eps=1e-5,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        feat_extract_activation="gelu",
        sample_rate=16000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_mel_bins = num_mel_bins
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.feat_proj_dropout = feat_proj_dropout
        self.layer_norm_eps = layer_norm_eps
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.feat_extract_activation = feat_extract_activation
        self.sample_rate = sample_rate


@functools.lru_cache(maxsize=8)
def kaldi_mel_banks(n_mels: int, sample_rate: int, low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters (mel = 1127 ln(1 + f/700)), shape (NFFT//2 + 1, n_mels)."""
    high = sample_rate / 2 + high if high <= 0 else high

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(low), mel(high)
    delta = (hi - lo) / (n_mels + 1)
    freqs = torch.arange(NFFT // 2, dtype=torch.float64) * sample_rate / NFFT
    m = 1127.0 * torch.log1p(freqs / 700.0)
    banks = torch.zeros(NFFT // 2 + 1, n_mels, dtype=torch.float64)
    for j in range(n_mels):
        left, center, right = lo + j * delta, lo + (j + 1) * delta, lo + (j + 2) * delta
        up = (m - left) / (center - left)
        down = (right - m) / (right - center)
        banks[: NFFT // 2, j] = torch.clamp(torch.minimum(up, down), min=0.0)
    return banks.float()


def fbank_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Frames per item with Kaldi's snip_edges=True: 1 + (T - 400) // 160 (0 if shorter)."""
    return torch.where(
        lengths >= FRAME, torch.div(lengths - FRAME, SHIFT, rounding_mode="floor") + 1, torch.zeros_like(lengths)
    )


def kaldi_fbank(wavs: torch.Tensor, lengths: torch.Tensor, banks: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, F, n_mels) log filterbank energies with per-utterance CMVN over valid frames."""
    frames = fbank_frames(lengths)
    f = int(frames.max()) if len(frames) else 0
    x = wavs[:, : (f - 1) * SHIFT + FRAME].unfold(1, FRAME, SHIFT) if f > 0 else wavs.new_zeros(wavs.shape[0], 0, FRAME)
    x = x - x.mean(dim=-1, keepdim=True)  # remove DC offset per frame
    x = torch.cat([x[..., :1] * (1 - 0.97), x[..., 1:] - 0.97 * x[..., :-1]], dim=-1)  # pre-emphasis
    n = torch.arange(FRAME, device=wavs.device, dtype=wavs.dtype)
    window = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (FRAME - 1))) ** 0.85  # povey
    power = torch.fft.rfft(x * window, n=NFFT).abs() ** 2
    feats = torch.log(torch.clamp(power @ banks.to(power.dtype), min=torch.finfo(torch.float32).eps))
    valid = (torch.arange(f, device=wavs.device)[None, :] < frames[:, None])[..., None].to(feats.dtype)
    count = frames.clamp(min=1)[:, None, None].to(feats.dtype)
    mean = (feats * valid).sum(1, keepdim=True) / count
    var = (((feats - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (feats - mean) / torch.sqrt(var + 1e-5) * valid


class DeCoAR2PreTrainedModel(PreTrainedModel):
    config_class = DeCoAR2Config
    base_model_prefix = "decoar2"
    main_input_name = "input_values"
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class DeCoAR2TransformerStack(nn.Module):
    """Positional conv, layer norm and the transformer layers (the `encoder.*` parameters)."""

    def __init__(self, config):
        super().__init__()
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([Wav2Vec2EncoderLayer(config) for _ in range(config.num_hidden_layers)])


class DeCoAR2Model(DeCoAR2PreTrainedModel):
    def __init__(self, config: DeCoAR2Config):
        super().__init__(config)
        self.feature_projection = nn.Linear(config.num_mel_bins, config.hidden_size)
        self.feature_dropout = nn.Dropout(config.feat_proj_dropout)
        self.encoder = DeCoAR2TransformerStack(config)
        self.post_init()

    def get_output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return fbank_frames(lengths)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        frame_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """frame_mask: optional (B, F) bool; the filterbank frames under it are set to 0 (the per-utterance
        mean after normalisation) before the projection - masked prediction in continued pre-training."""
        b, t = input_values.shape
        lengths = (
            attention_mask.sum(-1)
            if attention_mask is not None
            else torch.full((b,), t, dtype=torch.long, device=input_values.device)
        )
        # Filters are rebuilt from the config (cached), not kept as a buffer: transformers
        # materialises non-persistent buffers uninitialised when loading from a folder.
        banks = kaldi_mel_banks(self.config.num_mel_bins, self.config.sample_rate).to(input_values.device)
        feats = kaldi_fbank(input_values, lengths, banks)
        frames = fbank_frames(lengths)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        if frame_mask is not None:
            f = feats.shape[1]
            m = (
                frame_mask[:, :f]
                if frame_mask.shape[1] >= f
                else nn.functional.pad(frame_mask, (0, f - frame_mask.shape[1]))
            )
            feats = feats.masked_fill(m[..., None], 0.0)
        x = self.feature_dropout(self.feature_projection(feats)) * valid[..., None]
        x = x + self.encoder.pos_conv_embed(x)
        x = self.encoder.dropout(self.encoder.layer_norm(x))
        bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, torch.finfo(x.dtype).min)
        bias = bias[:, None, None, :]
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x, attention_mask=bias)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)
