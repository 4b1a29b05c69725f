"""DeCoAR 2.0 as the reference runs it: s3prl's front end, and every parameter trained after the frozen phase.

The reference (s3prl/s3prl, s3prl/upstream/decoar2/audio.py, used by the official Speech-FT code) feeds
the transformer torchaudio's Kaldi fbank (80 bins, Hamming window, 25 ms / 10 ms, the Kaldi defaults
otherwise), normalised per utterance over time (CMVN: mean, unbiased std + 1e-10), and keeps every
second frame. `reference_features` below rebuilds that from the definition in numpy, float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import weights

from speechft.encoders import family_info, load_encoder, tiny_encoder
from speechft.errors import SpeechFTError
from speechft.trainable import freeze_permanently

SR, WIN, HOP, NFFT, MELS = 16000, 400, 160, 512, 80


def kaldi_mel_filters() -> np.ndarray:
    """(MELS, NFFT // 2 + 1) triangles on Kaldi's mel scale from 20 Hz to Nyquist; the Nyquist bin is unused."""

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    edges = mel(20.0) + np.arange(MELS + 2) * (mel(SR / 2) - mel(20.0)) / (MELS + 1)
    bins = mel(np.arange(NFFT // 2) * SR / NFFT)
    filters = np.zeros((MELS, NFFT // 2 + 1))
    for j in range(MELS):
        left, center, right = edges[j], edges[j + 1], edges[j + 2]
        rising, falling = (bins - left) / (center - left), (right - bins) / (right - center)
        filters[j, : NFFT // 2] = np.maximum(0.0, np.minimum(rising, falling))
    return filters


def reference_features(wav: np.ndarray) -> np.ndarray:
    """s3prl's DeCoAR 2.0 input for one unpadded waveform: (ceil(F / 2), 80)."""
    x = np.asarray(wav, dtype=np.float64)
    n = 1 + (len(x) - WIN) // HOP if len(x) >= WIN else 0
    if n == 0:
        return np.zeros((0, MELS))
    frames = np.stack([x[i * HOP : i * HOP + WIN] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames * np.hamming(WIN)  # 0.54 - 0.46 cos(2 pi n / (N - 1)), Kaldi's hamming
    power = np.abs(np.fft.rfft(frames, n=NFFT)) ** 2
    logmel = np.log(np.maximum(power @ kaldi_mel_filters().T, np.finfo(np.float32).eps))
    std = logmel.std(axis=0, ddof=1) if n > 1 else np.zeros(MELS)
    logmel = (logmel - logmel.mean(axis=0)) / (1e-10 + std)
    return logmel[::2]


def fixed_wave(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    return (chirp + 0.02 * rng.standard_normal(samples)).astype(np.float32)


def projection_input(enc, wavs: torch.Tensor, lengths: torch.Tensor):
    """What the model's input projection sees (the front end's output), and the encoder's output."""
    seen = []
    handle = enc.model.feature_projection.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            out = enc(wavs, lengths)
    finally:
        handle.remove()
    return seen[0], out


def test_front_end_matches_s3prl_on_a_fixed_waveform():
    wav = fixed_wave(SR)
    feats, out = projection_input(tiny_encoder("decoar2"), torch.from_numpy(wav)[None], torch.tensor([SR]))
    ref = reference_features(wav)
    assert ref.shape == (49, 80) and feats.shape == (1, 49, 80)  # 98 fbank frames, every second kept
    np.testing.assert_allclose(feats[0].double().numpy(), ref, atol=1e-4, rtol=0)
    assert out.frame_lengths.tolist() == [49] and out.hidden_states[-1].shape[1] == 49
    # the window matters: a povey window (speechft's old front end) is off by far more than the tolerance
    old = tiny_encoder("decoar2", window_type="povey")
    povey, _ = projection_input(old, torch.from_numpy(wav)[None], torch.tensor([SR]))
    assert (povey[0].double().numpy() - ref).__abs__().max() > 1e-2


def test_a_padded_batch_gives_each_item_its_own_frames_and_values():
    sizes = [SR, 11000, 8000, 560, 399]  # 98, 67, 48, 2 and 0 fbank frames
    wavs = [fixed_wave(n, seed=i) for i, n in enumerate(sizes)]
    batch = torch.zeros(len(sizes), max(sizes))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = torch.from_numpy(w)
    batch[3, 560:] = 5.0  # whatever lies past an item's length must not leak into its features
    enc = tiny_encoder("decoar2")
    feats, out = projection_input(enc, batch, torch.tensor(sizes))
    refs = [reference_features(w) for w in wavs]
    assert [len(r) for r in refs] == [49, 34, 24, 1, 0]
    assert out.frame_lengths.tolist() == [49, 34, 24, 1, 0]
    assert enc.frame_lengths(torch.tensor(sizes)).tolist() == [49, 34, 24, 1, 0]
    assert feats.shape[1] == out.hidden_states[0].shape[1] == 49
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(feats[i, : len(ref)].double().numpy(), ref, atol=1e-4, rtol=0)
        assert (feats[i, len(ref) :] == 0).all()


def test_frame_rate_is_one_frame_per_320_samples():
    enc = tiny_encoder("decoar2")
    assert enc.nominal_hop == family_info("decoar2").nominal_hop == 320
    seconds = torch.tensor([1, 2, 3, 10])
    assert enc.frame_lengths(seconds * SR).tolist() == (50 * seconds - 1).tolist()  # s3prl: 49 for 1 s


def test_a_folder_from_before_the_s3prl_front_end_loads_with_it(tmp_path, capsys):
    enc = tiny_encoder("decoar2", seed=4)
    folder = enc.save(tmp_path / "old")
    load_encoder(folder)
    assert "warning" not in capsys.readouterr().err
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert (cfg["window_type"], cfg["frame_subsampling"]) == ("hamming", 2)
    for key in ("window_type", "frame_subsampling"):
        del cfg[key]  # what a DeCoAR folder written before these keys existed looks like
    cfg_path.write_text(json.dumps(cfg))
    old = load_encoder(folder)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder}: DeCoAR 2.0 folder from before speechft used s3prl's front end" in err
    load_encoder(folder)
    assert capsys.readouterr().err == ""  # once per folder
    assert (old.model.config.window_type, old.model.config.frame_subsampling) == ("hamming", 2)
    wav = torch.from_numpy(fixed_wave(SR))[None]
    with torch.no_grad():
        a, b = enc(wav).hidden_states, old(wav).hidden_states
    assert a[-1].shape[1] == 49 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_an_unknown_window_is_a_one_line_error(tmp_path):
    folder = tiny_encoder("decoar2").save(tmp_path / "enc")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "window_type": "hann"}))
    with pytest.raises(SpeechFTError, match=r"enc: cannot load the decoar2 weights \(window_type='hann'") as e:
        load_encoder(folder)
    assert "\n" not in str(e.value)


# ---- what trains ------------------------------------------------------------------------------------------
def test_nothing_of_decoar2_is_frozen_permanently():
    enc = tiny_encoder("decoar2")
    freeze_permanently(enc)
    names = {n for n, _ in enc.model.named_parameters()}
    assert enc.frontend_parameters() == []
    assert {n for n, _ in enc.finetunable_parameters()} == names
    assert all(p.requires_grad for p in enc.model.parameters())
    out = enc(torch.from_numpy(fixed_wave(SR))[None])
    out.hidden_states[-1].square().mean().backward()
    grad = enc.model.feature_projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_stable_fine_tuning_trains_the_input_projection_after_the_frozen_phase(tmp_path, tiny_encoder_dir, cls_task):
    from safetensors.torch import load_file

    from speechft.config import load_config
    from speechft.train import TrainConfig, finetune

    enc = tiny_encoder_dir("decoar2")
    sets = ["steps=10", "data.batch_size=4", "head.proj_dim=16", "head.lstm_layers=0", "eval.every=10"]
    sets += ["checkpoint.every=1", "checkpoint.keep_last=100", "checkpoint.keep_at_end=true"]
    out = finetune(enc, [cls_task], tmp_path / "run", method="stable", config=load_config(TrainConfig, None, sets))

    def encoder_at(step: int) -> dict[str, torch.Tensor]:
        t = load_file(str(Path(out) / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))
        return {k[len("encoder.") :]: v for k, v in t.items() if k.startswith("encoder.")}

    before, final = weights(enc), weights(out)
    frozen, after = encoder_at(1), encoder_at(2)  # 10% of 10 steps frozen
    assert set(frozen) == set(after) == set(before)  # every encoder tensor is trainable
    proj = [k for k in before if k.startswith("feature_projection.")]
    assert proj and all(torch.equal(frozen[k], before[k]) for k in proj), "moved in the frozen phase"
    assert all(not torch.equal(after[k], before[k]) for k in proj), "the input projection did not train"
    assert all(not torch.equal(final[k], before[k]) for k in before), "a DeCoAR tensor stayed frozen"
