"""Metrics: error rates by edit distance, accuracy, macro-F1, EER; SUPERB's slot filling,
minDCF, DER and MTWV live in metrics_superb.py and are dispatched from here too.

Error rates are corpus-level: total edits / total reference tokens (what jiwer and
SUPERB report), not a mean of per-utterance rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Lower is better for these; the SUPERB score and "best" marks need to know.
LOWER_IS_BETTER = {"per", "cer", "wer", "eer", "min_dcf", "der", "slot_value_cer"}


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("references are all empty: the error rate is undefined")
    return edits / total


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    # Characters including inner spaces; leading/trailing whitespace is not text (jiwer.cer
    # strips it too, and the two must agree).
    return error_rate([list(r.strip()) for r in refs], [list(h.strip()) for h in hyps])


def per(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Phone error rate: transcripts are space-separated phones."""
    return wer(refs, hyps)


def accuracy(refs: Sequence, hyps: Sequence) -> float:
    if len(refs) != len(hyps) or not refs:
        raise ValueError("accuracy needs equally many (>0) references and predictions")
    return float(np.mean([r == h for r, h in zip(refs, hyps)]))


def macro_f1(refs: Sequence, hyps: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: classes seen in refs or hyps)."""
    labels = sorted(set(refs) | set(hyps)) if labels is None else list(labels)
    f1s = []
    for c in labels:
        tp = sum(r == c and h == c for r, h in zip(refs, hyps))
        fp = sum(r != c and h == c for r, h in zip(refs, hyps))
        fn = sum(r == c and h != c for r, h in zip(refs, hyps))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def eer(scores: Sequence[float], same: Sequence[bool]) -> float:
    """Equal error rate of verification scores (higher = more likely the same speaker)."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if same.all() or (~same).all():
        raise ValueError("EER needs both target and non-target trials")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # Evaluate only at the last index of each run of tied scores.
    last = np.r_[s[1:] != s[:-1], True]
    frr = np.r_[1.0, 1 - tp[last] / y.sum()]
    far = np.r_[0.0, fp[last] / (~y).sum()]
    # FRR falls and FAR rises along the thresholds, so frr - far crosses zero once: take
    # the first point at or past the crossing and interpolate linearly from the one before
    # (the ROC segment between two thresholds is a straight line).
    d = frr - far
    j = int(np.argmax(d <= 0))  # exists: the last point has frr = 0, far = 1
    if d[j] == 0:
        return float(far[j])
    t = d[j - 1] / (d[j - 1] - d[j])
    return float(far[j - 1] + t * (far[j] - far[j - 1]))


def compute_metric(name: str, refs: Sequence, hyps: Sequence, labels: Sequence | None = None) -> float:
    """Dispatch by the task.yaml metric name; refs = ground truth, hyps = system output.

    Besides transcripts and labels: `eer`/`min_dcf` take trial labels (same speaker) and
    scores, `der` lists of [T, S] reference and hypothesis activity matrices, `mtwv` a
    [Q, D] occurrence matrix and a [Q, D] score matrix, `slot_type_f1`/`slot_value_cer`
    tagged transcripts (metrics_superb.py documents each)."""
    from . import metrics_superb as sup

    simple = {"per": per, "cer": cer, "wer": wer, "accuracy": accuracy}
    if name in simple:
        return simple[name](refs, hyps)
    if name == "macro_f1":
        return macro_f1(refs, hyps, labels)
    if name in ("eer", "min_dcf"):
        return (eer if name == "eer" else sup.min_dcf)(hyps, refs)
    if name == "der":
        return sup.der_frames(list(refs), list(hyps))
    if name == "mtwv":
        return sup.mtwv(hyps, refs)
    if name in ("slot_type_f1", "slot_value_cer"):
        return getattr(sup, name)(refs, hyps)
    raise ValueError(f"unknown metric '{name}'")


def is_better(metric: str, a: float, b: float) -> bool:
    """True if value `a` is strictly better than `b` for `metric`."""
    return a < b if metric in LOWER_IS_BETTER else a > b
