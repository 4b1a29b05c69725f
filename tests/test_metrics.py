"""Metrics agree with the reference implementations (jiwer, scikit-learn) on random cases."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_curve

from speechft.metrics import (
    LOWER_IS_BETTER,
    accuracy,
    cer,
    compute_metric,
    edit_distance,
    eer,
    error_rate,
    is_better,
    macro_f1,
    per,
    wer,
)

rng = np.random.default_rng(1234)


def random_sentence(rng, vocab, max_words=8, min_words=1) -> str:
    n = int(rng.integers(min_words, max_words + 1))
    words = [vocab[i] for i in rng.integers(0, len(vocab), size=n)]
    # Irregular spacing on purpose: the metrics must not depend on it where jiwer does not.
    seps = [" " * int(rng.integers(1, 3)) for _ in range(len(words))]
    text = "".join(w + s for w, s in zip(words, seps)).rstrip()
    return (" " if rng.random() < 0.2 else "") + text


VOCAB = ["a", "b", "ab", "ba", "cab", "x", "yy", "the", "cat"]


@pytest.mark.parametrize("case", range(40))
def test_wer_and_per_agree_with_jiwer(case):
    rng = np.random.default_rng(case)
    refs = [random_sentence(rng, VOCAB) for _ in range(int(rng.integers(1, 6)))]
    hyps = [random_sentence(rng, VOCAB, min_words=0) for _ in refs]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert per(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)


@pytest.mark.parametrize("case", range(40))
def test_cer_agrees_with_jiwer(case):
    rng = np.random.default_rng(1000 + case)
    refs = [random_sentence(rng, VOCAB) for _ in range(int(rng.integers(1, 6)))]
    hyps = [random_sentence(rng, VOCAB, min_words=0) for _ in refs]
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


def test_edit_distance_known_values_and_symmetry():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], list("abc")) == 3
    assert edit_distance(list("abc"), []) == 3
    assert edit_distance("flaw", "lawn") == 2
    for _ in range(50):
        a = list(rng.integers(0, 3, size=int(rng.integers(0, 9))))
        b = list(rng.integers(0, 3, size=int(rng.integers(0, 9))))
        assert edit_distance(a, b) == edit_distance(b, a)
        assert abs(len(a) - len(b)) <= edit_distance(a, b) <= max(len(a), len(b))


def test_error_rate_is_corpus_level_not_a_mean_of_rates():
    # 1 error in a 1-word ref + 0 errors in a 9-word ref = 1/10, not mean(1, 0) = 0.5
    assert wer(["a", "a b c d e f g h i"], ["b", "a b c d e f g h i"]) == pytest.approx(0.1)


def test_error_rate_rejects_bad_input():
    with pytest.raises(ValueError):
        error_rate([["a"]], [])
    with pytest.raises(ValueError):
        wer(["", " "], ["a", "b"])


@pytest.mark.parametrize("case", range(30))
def test_accuracy_and_macro_f1_agree_with_sklearn(case):
    rng = np.random.default_rng(2000 + case)
    classes = ["c0", "c1", "c2", "c3", "c4"][: int(rng.integers(2, 6))]
    n = int(rng.integers(1, 40))
    refs = [classes[i] for i in rng.integers(0, len(classes), size=n)]
    hyps = [classes[i] for i in rng.integers(0, len(classes), size=n)]
    assert accuracy(refs, hyps) == pytest.approx(accuracy_score(refs, hyps))
    assert macro_f1(refs, hyps) == pytest.approx(f1_score(refs, hyps, average="macro", zero_division=0))
    # With the full label list, classes that never occur count as F1 = 0, as in sklearn.
    assert macro_f1(refs, hyps, labels=classes) == pytest.approx(
        f1_score(refs, hyps, labels=classes, average="macro", zero_division=0)
    )


def sklearn_eer(scores, same) -> float:
    """EER from scikit-learn's ROC: where the miss rate (1 - TPR) crosses the false-alarm
    rate, interpolated linearly along the ROC segment that crosses it."""
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    fnr = 1 - tpr
    d = fnr - fpr
    for i in range(len(d) - 1):
        if d[i] == 0:
            return float(fpr[i])
        if d[i] > 0 > d[i + 1]:
            t = d[i] / (d[i] - d[i + 1])
            return float(fpr[i] + t * (fpr[i + 1] - fpr[i]))
    return float(fpr[-1])


def test_eer_known_cases():
    assert eer([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == pytest.approx(0.0)
    assert eer([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == pytest.approx(1.0)
    # targets 0.9 0.6 0.4, non-targets 0.7 0.2 0.1: at threshold 0.5 one miss of three and
    # one false alarm of three -> EER = 1/3.
    assert eer([0.9, 0.6, 0.4, 0.7, 0.2, 0.1], [True, True, True, False, False, False]) == pytest.approx(1 / 3)
    # All scores tied: no threshold separates anything -> 0.5.
    assert eer([0.5] * 4, [True, False, True, False]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        eer([0.1, 0.2], [True, True])


@pytest.mark.parametrize("case", range(30))
def test_eer_agrees_with_sklearn_roc(case):
    rng = np.random.default_rng(3000 + case)
    n_t, n_n = int(rng.integers(2, 30)), int(rng.integers(2, 30))
    # Rounded scores so that ties across classes happen too.
    scores = np.round(np.r_[rng.normal(1.0, 1.0, n_t), rng.normal(0.0, 1.0, n_n)], 1)
    same = np.r_[np.ones(n_t, bool), np.zeros(n_n, bool)]
    assert eer(scores, same) == pytest.approx(sklearn_eer(scores, same), abs=1e-9)


def test_compute_metric_dispatch_and_direction():
    assert compute_metric("wer", ["a b"], ["a c"]) == pytest.approx(0.5)
    assert compute_metric("per", ["a b"], ["a"]) == pytest.approx(0.5)
    assert compute_metric("cer", ["ab"], ["ab"]) == 0.0
    assert compute_metric("accuracy", ["x", "y"], ["x", "x"]) == pytest.approx(0.5)
    assert compute_metric("macro_f1", ["x", "y"], ["x", "y"], labels=["x", "y"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("bleu", ["a"], ["a"])
    assert {"per", "cer", "wer", "eer"} <= LOWER_IS_BETTER
    assert is_better("per", 0.1, 0.2) and not is_better("per", 0.2, 0.1)
    assert is_better("accuracy", 0.9, 0.8) and not is_better("accuracy", 0.8, 0.8)
