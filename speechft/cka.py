"""Linear CKA and frame cosines: the maths of feature similarity, no I/O and no plotting.

linear CKA (Kornblith et al. 2019) between two representations of the same samples; over
thousands of utterances the minibatch estimator of Nguyen, Raghu and Kornblith, "Do Wide
and Deep Networks Learn the Same Things? Uncovering How Neural Network Representations
Vary with Width and Depth", ICLR 2021 (arXiv 2010.15327): the unbiased HSIC estimator of
Song et al. (JMLR 2012) is averaged over minibatches and
CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K) * mean HSIC(L, L)). For the linear kernel
every term of that estimator reduces to feature-space products (X^T Y, row norms,
column sums), so a minibatch of n frames costs O(n d + d^2) memory, never an n x n Gram
matrix. The same pass also keeps exact full-data co-moments (float64, merged with
Chan et al.'s pairwise update), so the ordinary full-data CKA is available too.

`LayerwiseCKA` runs one `StreamingCKA` per hidden state (and sums frame cosines): the loop
`speechft analyze` and `speechft sweep` both need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

CKA_REFERENCE = (
    "Nguyen, Raghu & Kornblith (2021), Do Wide and Deep Networks Learn the Same Things?, ICLR; "
    "unbiased HSIC of Song et al. (2012)"
)
# The unbiased HSIC estimator divides by n(n-3) and (n-1)(n-2): it needs 4 samples.
MIN_FRAMES = 4


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


class LayerwiseCKA:
    """One StreamingCKA per hidden state between a reference encoder and another one on the same
    frames, plus the summed cosine of aligned frames. `update` takes one minibatch: the valid
    (unpadded) frames of each state, (n, d) per state, reference first."""

    def __init__(self, num_states: int, full: bool = False, cosines: bool = False):
        self.layers = [StreamingCKA(full=full) for _ in range(num_states)]
        self.cosine_sums = [0.0] * num_states if cosines else None
        self.cosine_frames = 0

    def update(self, reference: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> None:
        if len(reference) != len(states) or len(states) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} states, got {len(reference)} and {len(states)}")
        for layer, (x, y) in enumerate(zip(reference, states)):
            self.layers[layer].update(x, y)
            if self.cosine_sums is not None:
                self.cosine_sums[layer] += float(frame_cosines(x, y).sum())
        if self.cosine_sums is not None:
            self.cosine_frames += int(reference[0].shape[0])

    @property
    def values(self) -> list[float]:
        """Minibatch (unbiased-HSIC) CKA per state."""
        return [c.value for c in self.layers]

    @property
    def full_values(self) -> list[float]:
        """Exact full-data CKA per state (needs full=True)."""
        return [c.full_value for c in self.layers]

    @property
    def mean_cosines(self) -> list[float]:
        """Mean frame cosine per state over every frame seen (needs cosines=True)."""
        if self.cosine_sums is None:
            raise RuntimeError("LayerwiseCKA(cosines=False) keeps no frame cosines")
        return [s / self.cosine_frames for s in self.cosine_sums]

    @property
    def minibatches(self) -> int:
        return self.layers[0].minibatches

    @property
    def frames(self) -> int:
        return self.layers[0].frames
