"""Feature similarity and weight deviation between a pre-trained encoder and models derived from it.

The paper explains Speech-FT this way: a merged model moves far from theta_0 in weight
space, yet its features stay close to the pre-trained encoder's, layer by layer. This
module measures both sides:

* linear CKA per layer (Kornblith et al. 2019) between each model's hidden states and the
  pre-trained model's on the same audio, plus the mean cosine similarity of aligned
  frames. Frames are aligned by construction: every model runs the same padded batch
  and must report the same frame lengths; only valid (unpadded) frames are compared.
* ||theta - theta_0|| per transformer layer and in total, absolute and relative to
  ||theta_0||, over the parameters fine-tuning may change (front end and
  pre-training-only parameters excluded).

CKA over thousands of utterances uses the minibatch estimator of Nguyen, Raghu and
Kornblith, "Do Wide and Deep Networks Learn the Same Things? Uncovering How Neural
Network Representations Vary with Width and Depth", ICLR 2021 (arXiv 2010.15327): the
unbiased HSIC estimator of Song et al. (JMLR 2012) is averaged over minibatches and
CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) * mean HSIC(L, L)). For the linear kernel
every term of that estimator reduces to feature-space products (X^T Y, row norms,
column sums), so a minibatch of n frames costs O(n d + d^2) memory, never an n x n Gram
matrix. The same pass also keeps exact full-data co-moments (float64, merged with
Chan et al.'s pairwise update), so the ordinary full-data CKA is reported too.

`speechft analyze --pretrained DIR --models DIR [DIR ...] (--task TASKDIR | --audio MANIFEST.tsv) --out DIR`
writes analysis.json, analysis.md and PNG plots.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, read_json, write_json

CKA_REFERENCE = (
    "Nguyen, Raghu & Kornblith (2021), Do Wide and Deep Networks Learn the Same Things?, ICLR; "
    "unbiased HSIC of Song et al. (2012)"
)
# The unbiased HSIC estimator divides by n(n-3) and (n-1)(n-2): it needs 4 samples.
MIN_FRAMES = 4


# ---------------------------------------------------------------------------------------------------
# Linear CKA
# ---------------------------------------------------------------------------------------------------
def _matrix(x, name: str = "X") -> torch.Tensor:
    """(n, d) numpy array or tensor -> float64 tensor (on its own device)."""
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a (samples, features) matrix, got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _matrix(x, "X"), _matrix(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must hold the same samples (rows): {x.shape[0]} vs {y.shape[0]}")
    return x, y.to(x.device)


def _ratio(xy: float, xx: float, yy: float) -> float:
    # A constant representation has zero self-similarity: CKA is undefined there.
    if not (xx > 0 and yy > 0):
        return float("nan")
    return xy / math.sqrt(xx * yy)


def hsic_unbiased_gram(K, L) -> float:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) on n x n Gram matrices.

    The reference form, O(n^2) memory: `StreamingCKA` computes the same quantity in
    feature space, and the tests hold the two against each other.
    """
    K, L = _pair(K, L)
    n = K.shape[0]
    if n < MIN_FRAMES:
        raise ValueError(f"the unbiased HSIC estimator needs at least {MIN_FRAMES} samples, got {n}")
    K = K.clone().fill_diagonal_(0)
    L = L.clone().fill_diagonal_(0)
    one = torch.ones(n, dtype=K.dtype, device=K.device)
    trace = (K * L).sum()
    value = trace + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ K @ (L @ one))
    return float(value / (n * (n - 3)))


def linear_cka(X, Y, unbiased: bool = False) -> float:
    """Linear CKA between two representations of the same n samples, X (n, dx), Y (n, dy).

    Default: the standard (biased) estimator of Kornblith et al. 2019,
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc.
    `unbiased=True`: the unbiased HSIC estimator on the full Gram matrices (n x n memory).
    """
    X, Y = _pair(X, Y)
    # Both estimators are invariant to shifting X or Y; centring first keeps the Gram
    # matrices free of large constant terms that would cancel in floating point.
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    if unbiased:
        return _ratio(
            hsic_unbiased_gram(X @ X.T, Y @ Y.T),
            hsic_unbiased_gram(X @ X.T, X @ X.T),
            hsic_unbiased_gram(Y @ Y.T, Y @ Y.T),
        )
    # HSIC_biased(K, L) is proportional to ||Yc^T Xc||_F^2; the normaliser cancels in the ratio.
    return _ratio(float((Y.T @ X).square().sum()), float((X.T @ X).square().sum()), float((Y.T @ Y).square().sum()))


def frame_cosines(X, Y, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of each pair of aligned rows (frames), float64, shape (n,)."""
    X, Y = _pair(X, Y)
    return (X * Y).sum(1) / (X.norm(dim=1) * Y.norm(dim=1)).clamp(min=eps)


def mean_frame_cosine(X, Y) -> float:
    """Mean cosine similarity between aligned frames X[i] and Y[i]."""
    return float(frame_cosines(X, Y).mean())


def _hsic_terms(X: torch.Tensor, Y: torch.Tensor, gxy: torch.Tensor) -> float:
    """Unbiased HSIC of the linear kernels K = X X^T, L = Y Y^T, without forming K or L.

    With K~ = K minus its diagonal kx (kx_i = ||x_i||^2), sx = X^T 1:
      tr(K~ L~)   = ||X^T Y||_F^2 - kx . ly
      1^T K~ 1    = ||sx||^2 - sum(kx)
      1^T K~ L~ 1 = (X sx - kx) . (Y sy - ly)
    which are the three terms of Song et al.'s estimator. `gxy` is X^T Y, passed in so
    callers can reuse it.
    """
    n = X.shape[0]
    kx, ly = X.square().sum(1), Y.square().sum(1)
    sx, sy = X.sum(0), Y.sum(0)
    trace = gxy.square().sum() - kx @ ly
    k1 = sx @ sx - kx.sum()
    l1 = sy @ sy - ly.sum()
    cross = (X @ sx - kx) @ (Y @ sy - ly)
    value = trace + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
    return float(value / (n * (n - 3)))


class StreamingCKA:
    """Linear CKA over data that arrives in minibatches (the frames of a batch of utterances).

    Minibatch estimator (Nguyen et al. 2021, cited at the top of this module): each
    `update(X, Y)` is one minibatch; the unbiased HSIC estimates of (K, L), (K, K) and
    (L, L) are averaged over minibatches (equal weights, as in the paper) and
    `value` = mean HSIC_xy / sqrt(mean HSIC_xx * mean HSIC_yy). Unbiased estimates make the
    average over small minibatches converge to the full-data value instead of being
    dominated by each minibatch's finite-sample bias. Minibatches smaller than 4 rows are
    held back and joined to the next one.

    With `full=True` it also keeps exact running co-moments of X and Y (float64, merged
    pairwise, Chan et al. 1979) so `full_value` equals `linear_cka(all X, all Y)` for any
    split into minibatches, at d_x*d_y + d_x^2 + d_y^2 float64 numbers of memory.

    Memory for the minibatch estimator: the minibatch itself plus d x d products.
    """

    def __init__(self, full: bool = False):
        self.full = full
        self.sum_xy = self.sum_xx = self.sum_yy = 0.0  # Python floats: float64 accumulators
        self.minibatches = 0
        self.frames = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        # full-data co-moments
        self._n = 0
        self._mean_x = self._mean_y = None
        self._mxx = self._myy = self._mxy = None

    @property
    def pending_frames(self) -> int:
        """Rows received but not yet used (fewer than 4 so far)."""
        return 0 if self._pending is None else int(self._pending[0].shape[0])

    def update(self, X, Y) -> None:
        X, Y = _pair(X, Y)
        if self._pending is not None:
            X = torch.cat([self._pending[0].to(X.device), X])
            Y = torch.cat([self._pending[1].to(Y.device), Y])
            self._pending = None
        n = X.shape[0]
        if n < MIN_FRAMES:
            self._pending = (X, Y)
            return
        # HSIC is invariant to shifting either representation; centring each minibatch keeps
        # the large-magnitude terms of the estimator from cancelling in floating point.
        mx, my = X.mean(0), Y.mean(0)
        Xc, Yc = X - mx, Y - my
        gxy, gxx, gyy = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
        self.sum_xy += _hsic_terms(Xc, Yc, gxy)
        self.sum_xx += _hsic_terms(Xc, Xc, gxx)
        self.sum_yy += _hsic_terms(Yc, Yc, gyy)
        self.minibatches += 1
        self.frames += n
        if self.full:
            self._merge(n, mx, my, gxx, gyy, gxy)

    def _merge(self, n, mx, my, gxx, gyy, gxy) -> None:
        if self._n == 0:
            self._n, self._mean_x, self._mean_y = n, mx, my
            self._mxx, self._myy, self._mxy = gxx.clone(), gyy.clone(), gxy.clone()
            return
        total = self._n + n
        dx, dy = mx - self._mean_x, my - self._mean_y
        w = self._n * n / total
        self._mxx += gxx + w * torch.outer(dx, dx)
        self._myy += gyy + w * torch.outer(dy, dy)
        self._mxy += gxy + w * torch.outer(dx, dy)
        self._mean_x = self._mean_x + dx * (n / total)
        self._mean_y = self._mean_y + dy * (n / total)
        self._n = total

    @property
    def value(self) -> float:
        """Minibatch (unbiased-HSIC) CKA; NaN before the first full minibatch."""
        if self.minibatches == 0:
            return float("nan")
        return _ratio(self.sum_xy, self.sum_xx, self.sum_yy)

    @property
    def full_value(self) -> float:
        """Exact full-data (biased, Kornblith et al. 2019) linear CKA; needs `full=True`."""
        if not self.full:
            raise RuntimeError("StreamingCKA(full=False) keeps no full-data statistics")
        if self._n == 0:
            return float("nan")
        return _ratio(float(self._mxy.square().sum()), float(self._mxx.square().sum()), float(self._myy.square().sum()))


# ---------------------------------------------------------------------------------------------------
# Weight distance
# ---------------------------------------------------------------------------------------------------
# Transformer layer index from a parameter name: `encoder.layers.3.` (wav2vec2 family,
# DeCoAR) or a leading `layers.3.` (Whisper's encoder). Anchored so that e.g. data2vec's
# `encoder.pos_conv_embed.layers.2.` or `feature_extractor.conv_layers.2.` are not layers.
_LAYER_RE = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.|^layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """0-based transformer layer of a parameter (its output is hidden state index + 1), or None."""
    m = _LAYER_RE.search(name)
    if not m:
        return None
    return int(m.group(1) if m.group(1) is not None else m.group(2))


class _Weights:
    """Lazy name -> tensor access to an encoder folder (safetensors, possibly sharded) or a state dict."""

    def __init__(self, src):
        self.where = "state dict"
        self.family = None
        self._files: dict[str, Path] = {}
        self._state: Mapping | None = None
        if isinstance(src, torch.nn.Module):
            model = getattr(src, "model", src)
            self.family = getattr(src, "family", None)
            self._state = model.state_dict()
        elif isinstance(src, Mapping):
            self._state = src
        else:
            from .encoders import detect_family

            path = Path(src)
            self.where = str(path)
            self.family = detect_family(path)
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise SpeechFTError(
                    f"{path}: no *.safetensors weights; re-save the encoder with speechft "
                    "(`speechft encoder convert`) to get a model.safetensors"
                )
            from safetensors import safe_open

            for f in files:
                try:
                    with safe_open(str(f), framework="pt") as h:
                        for k in h.keys():
                            self._files[k] = f
                except Exception as e:  # safetensors raises its own error types
                    raise SpeechFTError(
                        f"{f}: unreadable safetensors file ({str(e).splitlines()[0][:200]}); "
                        "the file is truncated or corrupt"
                    ) from None
        self._open: dict[Path, object] = {}

    def keys(self) -> list[str]:
        return list(self._state.keys()) if self._state is not None else list(self._files)

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return torch.as_tensor(self._state[key])
        f = self._files[key]
        if f not in self._open:
            from safetensors import safe_open

            self._open[f] = safe_open(str(f), framework="pt").__enter__()
        return self._open[f].get_tensor(key)

    def close(self) -> None:
        for h in self._open.values():
            h.__exit__(None, None, None)
        self._open.clear()


def _norms(sq_diff: float, sq_ref: float, params: int) -> dict:
    dist, norm = math.sqrt(sq_diff), math.sqrt(sq_ref)
    return {"distance": dist, "norm0": norm, "relative": dist / norm if norm > 0 else float("nan"), "params": params}


def weight_distance(theta0, theta, encoder_family: str | None = None) -> dict:
    """||theta - theta0|| per transformer layer and in total, absolute and relative to ||theta0||.

    `theta0`, `theta`: encoder folders, Encoder objects or state dicts (name -> tensor; the
    names of the folder's model.safetensors). Only floating-point tensors that fine-tuning
    can change count: the family's front end and pre-training-only parameters are left
    out (`family_class(f).is_frontend / is_pretraining_only`). Layers are 0-based as in the
    parameter names; everything outside a transformer layer is grouped as "other".
    """
    from .encoders import family_class

    w0, w1 = _Weights(theta0), _Weights(theta)
    family = encoder_family or w0.family or w1.family
    if family is None:
        raise ValueError("weight_distance on state dicts needs encoder_family= (e.g. 'hubert')")
    for w in (w0, w1):
        if w.family is not None and w.family != family:
            raise SpeechFTError(
                f"{w.where}: a {w.family} encoder, but the comparison is for {family}; "
                "compare models of the same family"
            )
    cls = family_class(family)
    keys0, keys1 = set(w0.keys()), set(w1.keys())
    for a, b, missing in ((w0, w1, sorted(keys0 - keys1)), (w1, w0, sorted(keys1 - keys0))):
        if missing:
            raise SpeechFTError(
                f"{b.where}: lacks weight '{missing[0]}' found in {a.where} ({len(missing)} keys "
                "differ); the two are not the same architecture"
            )
    groups: dict[int | str, list[float]] = {}
    excluded = {"frontend": 0, "pretraining_only": 0, "non_float": 0}
    total = [0.0, 0.0, 0]
    try:
        for key in sorted(keys0):
            if cls.is_frontend(key):
                excluded["frontend"] += 1
                continue
            if cls.is_pretraining_only(key):
                excluded["pretraining_only"] += 1
                continue
            t0, t1 = w0.get(key), w1.get(key)
            if not t0.is_floating_point():
                excluded["non_float"] += 1
                continue
            if t0.shape != t1.shape:
                raise SpeechFTError(
                    f"{w1.where}: weight '{key}' has shape {tuple(t1.shape)}, {w0.where} has "
                    f"{tuple(t0.shape)}; the two are not the same architecture"
                )
            t0, t1 = t0.to(torch.float64), t1.to(torch.float64)
            for w, t in ((w0, t0), (w1, t1)):
                if not torch.isfinite(t).all():
                    raise SpeechFTError(
                        f"{w.where}: weight '{key}' contains NaN or infinite values; the checkpoint "
                        "is corrupt (re-export or re-train it)"
                    )
            sq_diff, sq_ref = float((t1 - t0).square().sum()), float(t0.square().sum())
            idx = layer_index(key)
            g = groups.setdefault("other" if idx is None else idx, [0.0, 0.0, 0])
            for acc in (g, total):
                acc[0] += sq_diff
                acc[1] += sq_ref
                acc[2] += t0.numel()
    finally:
        w0.close()
        w1.close()
    layers = sorted(k for k in groups if k != "other")
    return {
        "family": family,
        "total": _norms(*total),
        "per_layer": [{"layer": i, **_norms(*groups[i])} for i in layers],
        "other": _norms(*groups["other"]) if "other" in groups else None,
        "excluded_tensors": excluded,
    }


# ---------------------------------------------------------------------------------------------------
# Which audio to run
# ---------------------------------------------------------------------------------------------------
def read_audio_manifest(path: str | os.PathLike) -> list[tuple[str, Path, float | None]]:
    """A TSV with a header holding a `path` column (relative to the manifest's folder) and,
    optionally, `duration` in seconds. Returns (id, absolute path, duration or None)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechFTError(f"{path}: audio manifest not found; pass a .tsv with a 'path' column (or use --task)")
    rows = [
        r
        for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t", quoting=csv.QUOTE_NONE)
        if r and any(c.strip() for c in r)
    ]
    if not rows:
        raise SpeechFTError(f"{path}: empty; it needs a header row with a 'path' column and at least one row")
    header = [h.strip() for h in rows[0]]
    if "path" not in header:
        raise SpeechFTError(f"{path}: header {header} has no 'path' column")
    if len(rows) == 1:
        raise SpeechFTError(f"{path}: lists no audio (only a header)")
    ip, idur = header.index("path"), header.index("duration") if "duration" in header else None
    items, seen = [], set()
    for lineno, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise SpeechFTError(f"{path}: line {lineno} has {len(r)} fields, the header has {len(header)}")
        rel = r[ip].strip()
        if rel in seen:
            raise SpeechFTError(f"{path}: line {lineno}: path '{rel}' is listed twice")
        seen.add(rel)
        audio = path.parent / rel
        if not audio.exists():
            raise SpeechFTError(f"{path}: line {lineno}: audio file '{rel}' not found")
        dur = None
        if idur is not None:
            try:
                dur = float(r[idur])
            except ValueError:
                raise SpeechFTError(f"{path}: line {lineno}: duration '{r[idur]}' is not a number") from None
        items.append((rel, audio, dur))
    return items


def _audio_items(audio, split: str) -> tuple[list[tuple[str, Path, float | None]], dict]:
    from .data import Task, load_task

    if isinstance(audio, Task) or (Path(audio).is_dir()):
        task = audio if isinstance(audio, Task) else load_task(audio)
        if split not in task.splits:
            raise SpeechFTError(f"{task.root}: no split '{split}'; choose one of {', '.join(task.splits)}")
        items = [(e.id, e.path, e.duration) for e in task.split(split)]
        return items, {"task": str(task.root), "task_name": task.name, "split": split}
    return read_audio_manifest(audio), {"manifest": str(audio)}


def _durations(items) -> list[float]:
    import soundfile as sf

    out = []
    for _rid, p, d in items:
        if d is None:
            try:
                d = sf.info(str(p)).duration
            except Exception:
                raise SpeechFTError(f"{p}: cannot read the audio header; use wav, flac or ogg") from None
        out.append(float(d))
    return out


# ---------------------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------------------
def _labels(models: list, labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(models):
            raise SpeechFTError(f"--labels gives {len(labels)} names for {len(models)} models; give one per model")
        if len(set(labels)) != len(labels):
            raise SpeechFTError(f"--labels repeats a name: {labels}; labels must be distinct")
        return list(labels)
    out = [Path(m).name for m in models]
    if len(set(out)) != len(out):  # e.g. run1/model, run2/model
        out = [f"{Path(m).parent.name}/{Path(m).name}" for m in models]
    if len(set(out)) != len(out):
        out = [f"{i}:{o}" for i, o in enumerate(out)]
    return out


def read_sweep(path: str | os.PathLike) -> dict:
    """Validate sweep output: {"results": [{"alpha", "target_metric", "cka_mean", "cka_per_layer"}, ...]}."""
    data = read_json(path)
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise SpeechFTError(
            f"{path}: needs a non-empty 'results' list of {{alpha, target_metric, cka_mean, "
            "cka_per_layer}} (the format `speechft sweep` writes)"
        )
    for i, r in enumerate(rows):
        for key in ("alpha", "cka_mean"):
            if not isinstance(r, dict) or not isinstance(r.get(key), (int, float)):
                raise SpeechFTError(f"{path}: results[{i}] has no numeric '{key}'")
    return data


def analyze(
    pretrained,
    models: list,
    audio,
    out=None,
    *,
    split: str = "dev",
    labels: list[str] | None = None,
    max_utterances: int | None = 1000,
    batch_size: int = 8,
    cka_estimator: str = "minibatch",
    sweep=None,
    device: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Compare each model in `models` with `pretrained` on the same audio.

    `audio`: a task folder (or `Task`; `split` chooses the manifest) or an audio manifest
    TSV. Up to `max_utterances` are drawn at random (seeded), run in duration-sorted
    batches of `batch_size` through every encoder; per layer the valid frames feed a
    `StreamingCKA` (one minibatch per batch) and the frame cosine. All encoders are held
    in memory together so the pre-trained model runs once per batch.

    Both CKA estimates are stored (`cka_minibatch_per_layer`, `cka_full_per_layer`);
    `cka_estimator` ("minibatch" or "full") picks the one reported as `cka_per_layer` and
    plotted. A minibatch holds the frames of `batch_size` utterances: with one utterance
    per minibatch it only sees within-utterance variation and reads low (measured on tiny
    encoders: 0.923 vs 0.985 full-data); from about 8 utterances on the two agree to
    about 0.001 (benchmarks/README.md, "analysis").

    Writes `out`/analysis.json, analysis.md and PNG plots when `out` is given; returns the
    same dict.
    """
    from tqdm import tqdm

    from .data import BucketBatchSampler, collate_waveforms, load_audio
    from .encoders import load_encoder

    models = [Path(m) for m in models]
    if not models:
        raise SpeechFTError("give at least one model folder to compare with the pre-trained encoder (--models)")
    if batch_size < 1:
        raise SpeechFTError(f"--batch-size must be at least 1, got {batch_size}")
    if cka_estimator not in ("minibatch", "full"):
        raise SpeechFTError(f"--cka '{cka_estimator}' is not an estimator; use minibatch or full")
    if max_utterances is not None and max_utterances < 1:
        raise SpeechFTError(f"--max-utterances must be at least 1, got {max_utterances}")
    names = _labels(models, labels)
    sweep_data = read_sweep(sweep) if sweep is not None else None
    if out is not None and Path(out).exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    items, source = _audio_items(audio, split)
    if max_utterances is not None and len(items) > max_utterances:
        keep = sorted(random.Random(seed).sample(range(len(items)), max_utterances))
        items = [items[i] for i in keep]
    durations = _durations(items)

    # Weights first: cheap, and it catches mismatched checkpoints before any audio runs.
    distances = [weight_distance(pretrained, m) for m in models]

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ref = load_encoder(pretrained).to(dev).eval()
    encs = [load_encoder(m).to(dev).eval() for m in models]
    for m, e in zip(models, encs):
        if e.num_layers != ref.num_layers:
            raise SpeechFTError(
                f"{m}: {e.num_layers} layers, the pre-trained encoder has {ref.num_layers}; "
                "layer-wise comparison needs the same depth"
            )
    n_states = ref.num_layers + 1
    ckas = [[StreamingCKA(full=True) for _ in range(n_states)] for _ in encs]
    cos_sum = [[0.0] * n_states for _ in encs]
    frames, seconds = 0, 0.0
    batches = BucketBatchSampler(durations, batch_size=batch_size, shuffle=False).batches(0)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="analyze", unit="batch", disable=not progress):
            wavs, lengths = collate_waveforms([load_audio(items[i][1]) for i in batch])
            wavs, lengths = wavs.to(dev), lengths.to(dev)
            base = ref(wavs, lengths)
            valid = base.padding_mask
            xs = [h[valid] for h in base.hidden_states]
            for k, enc in enumerate(encs):
                o = enc(wavs, lengths)
                if not torch.equal(o.frame_lengths, base.frame_lengths):
                    raise SpeechFTError(
                        f"{models[k]}: produces different frame counts from the pre-trained encoder "
                        "on the same audio; frames cannot be aligned (different front end?)"
                    )
                for layer, h in enumerate(o.hidden_states):
                    y = h[valid]
                    ckas[k][layer].update(xs[layer], y)
                    cos_sum[k][layer] += float(frame_cosines(xs[layer], y).sum())
            frames += int(valid.sum())
            seconds += float(lengths.sum()) / 16000.0
    if ckas[0][0].minibatches == 0:
        raise SpeechFTError(
            f"only {frames} frames of audio: CKA needs at least {MIN_FRAMES}; give more or longer audio"
        )

    results = []
    for k, (path, name) in enumerate(zip(models, names)):
        minibatch = [c.value for c in ckas[k]]
        full = [c.full_value for c in ckas[k]]
        per_layer = minibatch if cka_estimator == "minibatch" else full
        cos = [s / frames for s in cos_sum[k]]
        results.append(
            {
                "label": name,
                "path": str(path),
                "cka_per_layer": per_layer,
                "cka_mean": float(np.nanmean(per_layer)),
                "cka_minibatch_per_layer": minibatch,
                "cka_full_per_layer": full,
                "cosine_per_layer": cos,
                "cosine_mean": float(np.mean(cos)),
                "weight_distance": distances[k],
            }
        )
    report = {
        "pretrained": {
            "path": str(pretrained),
            "family": ref.family,
            "num_layers": ref.num_layers,
            "hidden_size": ref.hidden_size,
        },
        "audio": {
            **source,
            "utterances": len(items),
            "seconds": round(seconds, 3),
            "frames": frames,
            "frames_in_cka": ckas[0][0].frames,
            "minibatches": ckas[0][0].minibatches,
            "batch_size": batch_size,
            "seed": seed,
        },
        "cka": {
            "estimator": cka_estimator,
            "cka_minibatch_per_layer": "unbiased-HSIC linear CKA averaged over minibatches of valid frames, "
            f"one minibatch per batch of utterances ({CKA_REFERENCE})",
            "cka_full_per_layer": "exact full-data linear CKA (Kornblith et al. 2019), same frames",
            "layers": "hidden state index: 0 = input to the first transformer layer, i = output of layer i",
        },
        "weight_distance": {
            "over": "parameters fine-tuning can change (front end and pre-training-only excluded)",
            "per_layer": "0-based transformer layers as in the parameter names (layer i produces hidden state i + 1)",
        },
        "models": results,
    }
    if sweep_data is not None:
        report["sweep"] = {"path": str(sweep), **sweep_data}
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write_json(tmp / "analysis.json", report)
            with atomic_file(tmp / "analysis.md") as f:
                f.write(markdown_table(report))
            plot_cka_per_layer(results, tmp / "cka_per_layer.png")
            plot_cosine_per_layer(results, tmp / "cosine_per_layer.png")
            plot_distance_per_layer(results, tmp / "weight_distance_per_layer.png")
            plot_distance_vs_cka(results, tmp / "weight_distance_vs_cka.png")
            if sweep_data is not None:
                plot_sweep(sweep_data, tmp / "alpha_vs_cka.png")
        report["out"] = str(out)
    return report


def markdown_table(report: dict) -> str:
    rows = ["| model | mean CKA | min-layer CKA | mean cosine | ‖θ−θ₀‖ | ‖θ−θ₀‖ / ‖θ₀‖ |", "|---|---|---|---|---|---|"]
    for r in report["models"]:
        wd = r["weight_distance"]["total"]
        rows.append(
            f"| {r['label']} | {r['cka_mean']:.4f} | {np.nanmin(r['cka_per_layer']):.4f} | "
            f"{r['cosine_mean']:.4f} | {wd['distance']:.4g} | {wd['relative']:.4f} |"
        )
    a = report["audio"]
    head = (
        f"# Feature similarity and weight distance to {report['pretrained']['path']}\n\n"
        f"{a['utterances']} utterances, {a['seconds']:.1f} s, {a['frames']} frames; "
        f"CKA estimator: {report['cka']['estimator']} (see analysis.json).\n\n"
    )
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot global state, no display)
# ---------------------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _per_layer_plot(
    results: list[dict],
    values_of: Callable[[dict], list],
    ylabel: str,
    title: str,
    path,
    xlabel: str = "layer (hidden state index)",
) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot()
    for r in results:
        values = values_of(r)
        ax.plot(range(len(values)), values, marker="o", label=r["label"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_cka_per_layer(results: list[dict], path) -> Path:
    """One line per model: linear CKA with the pre-trained encoder at each layer."""
    return _per_layer_plot(
        results, lambda r: r["cka_per_layer"], "linear CKA vs pre-trained", "Feature similarity per layer", path
    )


def plot_cosine_per_layer(results: list[dict], path) -> Path:
    return _per_layer_plot(
        results,
        lambda r: r["cosine_per_layer"],
        "mean frame cosine vs pre-trained",
        "Frame cosine similarity per layer",
        path,
    )


def plot_distance_per_layer(results: list[dict], path) -> Path:
    """One line per model: ||theta - theta0|| / ||theta0|| per transformer layer."""
    return _per_layer_plot(
        results,
        lambda r: [g["relative"] for g in r["weight_distance"]["per_layer"]],
        "‖θ − θ₀‖ / ‖θ₀‖",
        "Relative weight distance per layer",
        path,
        xlabel="transformer layer (0-based)",
    )


def plot_distance_vs_cka(results: list[dict], path) -> Path:
    """One labelled point per model: total weight distance (x) against mean CKA over layers (y)."""
    fig = _figure()
    ax = fig.add_subplot()
    for r in results:
        x, y = r["weight_distance"]["total"]["distance"], r["cka_mean"]
        ax.scatter([x], [y], s=40)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    ax.set_xlabel("weight distance ‖θ − θ₀‖ (changeable parameters)")
    ax.set_ylabel("mean linear CKA over layers")
    ax.margins(0.2)  # room for the labels of the outermost points
    ax.set_title("Weight distance vs feature similarity")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(sweep: dict, path) -> Path:
    """alpha vs mean CKA (and the target metric on a second axis); per-layer CKA curves beside it."""
    rows = sorted(sweep["results"], key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rows]
    per_layer = [r.get("cka_per_layer") for r in rows]
    has_layers = all(isinstance(p, list) and p for p in per_layer) and len({len(p) for p in per_layer}) == 1
    fig = _figure(11.0 if has_layers else 6.4, 4.2)
    ax = fig.add_subplot(1, 2 if has_layers else 1, 1)
    ax.plot(alphas, [r["cka_mean"] for r in rows], marker="o", color="C0", label="mean CKA")
    ax.set_xlabel("α (weight of the fine-tuned model)")
    ax.set_ylabel("mean linear CKA vs pre-trained", color="C0")
    ax.grid(alpha=0.3)
    metric = [r.get("target_metric") for r in rows]
    if all(isinstance(m, (int, float)) for m in metric):
        ax2 = ax.twinx()
        ax2.plot(alphas, metric, marker="s", color="C1", label="target metric")
        ax2.set_ylabel(f"target metric{' (' + str(sweep['metric']) + ')' if sweep.get('metric') else ''}", color="C1")
    ax.set_title("Merge coefficient sweep")
    if has_layers:
        from matplotlib import colormaps

        ax3 = fig.add_subplot(1, 2, 2)
        n = len(per_layer[0])
        cmap = colormaps["viridis"]
        for layer in range(n):
            ax3.plot(alphas, [p[layer] for p in per_layer], color=cmap(layer / max(1, n - 1)), label=f"layer {layer}")
        ax3.set_xlabel("α")
        ax3.set_ylabel("linear CKA")
        ax3.set_title("Per layer")
        ax3.grid(alpha=0.3)
        ax3.legend(fontsize="x-small", ncol=2)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# CLI: speechft analyze
# ---------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--pretrained", required=True, help="the pre-trained encoder folder (theta_0)")
    p.add_argument("--models", required=True, nargs="+", help="encoder folders to compare with it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a task folder; its --split manifest gives the audio")
    src.add_argument("--audio", help="an audio manifest .tsv with a 'path' column (relative to the manifest)")
    p.add_argument("--split", default="dev", help="split of --task to use (default: dev)")
    p.add_argument("--out", required=True, help="output folder (analysis.json, analysis.md, PNG plots)")
    p.add_argument(
        "--max-utterances",
        type=int,
        default=1000,
        help="random (seeded) subset of at most this many utterances (default: 1000)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="utterances per batch = one CKA minibatch; keep it >= 8 for the minibatch estimator (default: 8)",
    )
    p.add_argument(
        "--cka",
        choices=("minibatch", "full"),
        default="minibatch",
        help="CKA reported and plotted: minibatch (unbiased HSIC averaged over minibatches, Nguyen et al. "
        "2021) or full (exact full-data linear CKA); both are saved (default: minibatch)",
    )
    p.add_argument("--labels", nargs="+", help="names for the models in plots and tables (default: folder names)")
    p.add_argument("--sweep", help="sweep.json from `speechft sweep`: also plot alpha vs CKA")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for the utterance subset (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def main(args) -> int:
    from .data import load_task

    # --task must name a task folder (load_task says what is wrong with it); --audio a manifest.
    audio = load_task(args.task) if args.task else args.audio
    report = analyze(
        args.pretrained,
        args.models,
        audio,
        args.out,
        split=args.split,
        labels=args.labels,
        max_utterances=args.max_utterances,
        batch_size=args.batch_size,
        cka_estimator=args.cka,
        sweep=args.sweep,
        device=args.device,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    print(markdown_table(report))
    print(f"wrote {args.out}/analysis.json, analysis.md and plots")
    return 0
