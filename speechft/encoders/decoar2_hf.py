"""DeCoAR 2.0 as a transformers model (self-contained: this file is copied into every
saved DeCoAR 2.0 folder, so `AutoModel.from_pretrained(folder, trust_remote_code=True)`
loads it without speechft installed).

Architecture, from the published model (Ling & Liu, "DeCoAR 2.0: Deep Contextualized
Acoustic Representations with Vector Quantization", 2020) as s3prl runs it (s3prl/s3prl,
s3prl/upstream/decoar2/audio.py, expert.py and decoar2.py, which the official Speech-FT code
uses): 80-dim Kaldi fbank (torchaudio.compliance.kaldi.fbank: 25 ms / 10 ms, Hamming window,
pre-emphasis 0.97, DC removal, 512-point FFT, mel filters from 20 Hz to Nyquist, no dither) ->
per-utterance CMVN over all its 10 ms frames -> every second frame kept (one frame every
20 ms, 320 samples) -> linear projection to the model width -> wav2vec2-style convolutional
positional embedding -> post-LN transformer layers.

Folders written before the front end followed s3prl (povey window, every 10 ms frame) have no
`window_type` / `frame_subsampling` in config.json and load with the defaults, i.e. the
reference front end: their weights are the same s3prl checkpoints, only the input was wrong.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2EncoderLayer, Wav2Vec2PositionalConvEmbedding

FRAME, SHIFT, NFFT = 400, 160, 512  # 25 ms / 10 ms at 16 kHz; Kaldi rounds the FFT up to a power of two
PREEMPHASIS = 0.97
CMVN_EPS = 1e-10  # s3prl's CMVN adds it to the standard deviation, not the variance
WINDOWS = ("hamming", "povey")


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
        window_type="hamming",
        frame_subsampling=2,
        **kwargs,
    ):
        """window_type / frame_subsampling: the fbank window and how many 10 ms frames make one model
        frame. The defaults are s3prl's (`WINDOW_TYPE = 'hamming'`, `y[::2]`), what the released
        checkpoints were trained on. "povey" / 1 comes close to the front end speechft used before (which
        also normalised by the biased variance), for comparing with old numbers only."""
        if window_type not in WINDOWS:
            raise ValueError(f"window_type={window_type!r}: choose one of {', '.join(WINDOWS)}")
        if int(frame_subsampling) < 1:
            raise ValueError(f"frame_subsampling={frame_subsampling!r}: must be a positive integer")
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
        self.window_type = window_type
        self.frame_subsampling = int(frame_subsampling)


@functools.lru_cache(maxsize=8)
def kaldi_mel_banks(n_mels: int, sample_rate: int, low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters (mel = 1127 ln(1 + f/700)), shape (NFFT//2 + 1, n_mels), float64."""
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
    return banks


def fbank_frames(lengths: torch.Tensor) -> torch.Tensor:
    """10 ms fbank frames per item with Kaldi's snip_edges=True: 1 + (T - 400) // 160 (0 if shorter)."""
    return torch.where(
        lengths >= FRAME, torch.div(lengths - FRAME, SHIFT, rounding_mode="floor") + 1, torch.zeros_like(lengths)
    )


def model_frames(lengths: torch.Tensor, subsampling: int) -> torch.Tensor:
    """Model frames per item: fbank frames 0, k, 2k, ... (s3prl's `y[::2]` for k=2): ceil(F / k)."""
    return torch.div(fbank_frames(lengths) + subsampling - 1, subsampling, rounding_mode="floor")


def window_function(kind: str, device, dtype) -> torch.Tensor:
    """Kaldi's windows over one 400-sample frame (symmetric: divided by N - 1)."""
    n = torch.arange(FRAME, device=device, dtype=dtype)
    cos = torch.cos(2 * math.pi * n / (FRAME - 1))
    return 0.54 - 0.46 * cos if kind == "hamming" else (0.5 - 0.5 * cos) ** 0.85


def kaldi_fbank(
    wavs: torch.Tensor, lengths: torch.Tensor, banks: torch.Tensor, window: str = "hamming", subsampling: int = 2
) -> torch.Tensor:
    """(B, T) -> (B, F, n_mels) normalised log filterbank energies, one row every `subsampling` 10 ms frames.

    Per item as s3prl's FeatureExtractor does on each unpadded wav: CMVN uses the item's own 10 ms frames
    (all of them, before subsampling), so padding changes nothing. Rows past an item's frames are 0."""
    # float64 inside (MPS has none): log energies of weak bands (the low bins pre-emphasis all but removes)
    # carry float32 FFT rounding of the strong ones, which CMVN scales up to ~2e-4; cheap beside the model.
    dtype = wavs.dtype
    wavs = wavs.to(torch.float32 if wavs.device.type == "mps" else torch.float64)
    frames = fbank_frames(lengths)
    f = int(frames.max()) if len(frames) else 0
    x = wavs[:, : (f - 1) * SHIFT + FRAME].unfold(1, FRAME, SHIFT) if f > 0 else wavs.new_zeros(wavs.shape[0], 0, FRAME)
    x = x - x.mean(dim=-1, keepdim=True)  # remove DC offset per frame
    x = torch.cat([x[..., :1] * (1 - PREEMPHASIS), x[..., 1:] - PREEMPHASIS * x[..., :-1]], dim=-1)
    spectrum = torch.fft.rfft(x * window_function(window, wavs.device, wavs.dtype), n=NFFT)
    power = spectrum.real.square() + spectrum.imag.square()  # |X|^2 without abs()'s square root
    feats = torch.log(torch.clamp(power @ banks.to(power.dtype), min=torch.finfo(torch.float32).eps))  # Kaldi's floor
    valid = (torch.arange(f, device=wavs.device)[None, :] < frames[:, None])[..., None].to(feats.dtype)
    count = frames[:, None, None].to(feats.dtype)
    mean = (feats * valid).sum(1, keepdim=True) / count.clamp(min=1)
    # torch.std's unbiased estimate, as s3prl's CMVN; an item of one frame gets 0 where s3prl gets NaN.
    var = (((feats - mean) * valid) ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    feats = (feats - mean) / (torch.sqrt(var) + CMVN_EPS) * valid
    return feats[:, ::subsampling].to(dtype)


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
        return model_frames(lengths, self.config.frame_subsampling)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        frame_mask: torch.Tensor | None = None,
        **kwargs,
    ):
        """frame_mask: optional (B, F) bool over the model frames; the (subsampled) filterbank rows under
        it are set to 0 (the per-utterance mean after normalisation) before the projection - masked
        prediction in continued pre-training."""
        b, t = input_values.shape
        lengths = (
            attention_mask.sum(-1)
            if attention_mask is not None
            else torch.full((b,), t, dtype=torch.long, device=input_values.device)
        )
        # Filters are rebuilt from the config (cached), not kept as a buffer: transformers
        # materialises non-persistent buffers uninitialised when loading from a folder.
        banks = kaldi_mel_banks(self.config.num_mel_bins, self.config.sample_rate).to(input_values.device)
        cfg = self.config
        feats = kaldi_fbank(input_values, lengths, banks, cfg.window_type, cfg.frame_subsampling)
        frames = model_frames(lengths, cfg.frame_subsampling)
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
