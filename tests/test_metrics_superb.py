"""SUPERB's metrics (metrics_superb.py) on hand-computed cases; the derivations are in the comments."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechft.metrics import LOWER_IS_BETTER, compute_metric, eer, is_better
from speechft.metrics_superb import (
    best_assignment,
    der,
    der_frames,
    diarization_errors,
    min_dcf,
    mtwv,
    parse_slots,
    slot_type_f1,
    slot_value_cer,
    strip_slots,
)

# ------------------------------------------------------------------------------ SF

SF_REFS = [
    "wake me up at B-time seven am E-time on B-date monday E-date",
    "play B-artist the beatles E-artist",
    "what is the weather",
]
SF_HYPS = [
    "wake me up at B-time seven a m E-time on  B-date mondey E-date",
    "play B-song the beatles E-song",
    "what is the weather",
]


def test_slots_are_parsed_as_superb_tags_them():
    assert parse_slots(SF_REFS[0]) == [("time", "seven am"), ("date", "monday")]
    assert parse_slots("B-time seven B-x am E-time") == [("time", "seven am")]  # nested tag cleaned
    assert parse_slots("B-time seven am") == []  # no E-time: no slot
    assert parse_slots("B-time  10:30 ; E-time") == [("time", "10:30 ;")]
    assert strip_slots(SF_HYPS[0]) == "wake me up at seven a m on mondey"


def test_slot_type_f1_hand_computed():
    # utt 1: {time, date} vs {time, date} -> 1; utt 2: {artist} vs {song} -> 0; utt 3: no slots on
    # either side -> 1. Mean 2/3.
    assert slot_type_f1(SF_REFS, SF_HYPS) == pytest.approx(2 / 3)
    # P = 1/2 (a of a, c), R = 1/2 (a of a, b): F1 1/2; only the hypothesis has slots: 0.
    assert slot_type_f1(["B-a x E-a B-b y E-b"], ["B-a x E-a B-c z E-c"]) == pytest.approx(0.5)
    assert slot_type_f1(["no slots"], ["B-a x E-a"]) == 0.0
    assert compute_metric("slot_type_f1", SF_REFS, SF_HYPS) == pytest.approx(2 / 3)


def test_slot_value_cer_hand_computed():
    # time: "seven am" (8 chars) vs "seven a m": 1 insertion; date: "monday" (6) vs "mondey": 1
    # substitution; artist: "the beatles" (11), no artist in the hypothesis: 11 deletions.
    # (1 + 1 + 11) / (8 + 6 + 11) = 13/25.
    assert slot_value_cer(SF_REFS, SF_HYPS) == pytest.approx(13 / 25)
    # Two values of one type: each reference value takes its closest hypothesis value:
    # paris~pari 1 edit, rome~rome 0: 1 / (5 + 4).
    ref, hyp = ["B-city paris E-city and B-city rome E-city"], ["B-city rome E-city and B-city pari E-city"]
    assert slot_value_cer(ref, hyp) == pytest.approx(1 / 9)
    assert compute_metric("slot_value_cer", SF_REFS, SF_HYPS) == pytest.approx(13 / 25)
    with pytest.raises(ValueError, match="no slot value"):
        slot_value_cer(["no slots"], ["B-a x E-a"])


# ----------------------------------------------------------------------------- ASV


def test_eer_on_a_known_score_list():
    # Sorted by score: T F F T F. (FAR, FRR) after each: (0, 1/2) (1/3, 1/2) (2/3, 1/2) (2/3, 0)
    # (1, 0). FRR - FAR changes sign between (1/3, 1/2) and (2/3, 1/2): halfway, FAR = FRR = 1/2.
    scores, same = [0.9, 0.8, 0.7, 0.6, 0.5], [True, False, False, True, False]
    assert eer(scores, same) == pytest.approx(0.5)
    # T F T T F F: after 0.7, FAR = FRR = 1/3.
    assert eer([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [True, False, True, True, False, False]) == pytest.approx(1 / 3)
    assert compute_metric("eer", same, scores) == pytest.approx(0.5)


def test_min_dcf_hand_computed():
    # Targets 0.9, 0.6; non-targets 0.8, 0.3, 0.1. (P_miss, P_fa) for t = 0.1, 0.3, 0.6, 0.8, 0.9, inf:
    # (0,1) (0,2/3) (0,1/3) (1/2,1/3) (1/2,0) (1,0).
    scores, same = [0.9, 0.6, 0.8, 0.3, 0.1], [True, True, False, False, False]
    # p_target 0.25: costs 0.75 0.5 0.25 0.375 0.125 0.25 -> 0.125 / min(0.25, 0.75) = 0.5
    assert min_dcf(scores, same, p_target=0.25) == pytest.approx(0.5)
    # p_target 0.5: costs 0.5 1/3 1/6 5/12 1/4 1/2 -> (1/6) / 0.5 = 1/3
    assert min_dcf(scores, same, p_target=0.5) == pytest.approx(1 / 3)
    # p_target 0.01 (SUPERB/VoxCeleb): t = 0.9 costs 0.005, accept-nothing 0.01 -> 0.005 / 0.01
    assert min_dcf(scores, same) == pytest.approx(0.5)
    assert compute_metric("min_dcf", same, scores) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both target and non-target"):
        min_dcf([0.1, 0.2], [True, True])


# ------------------------------------------------------------------------------ SD

# A speaks 0-10 s, B 5-15 s (5 s of overlap): 20 s of reference speaker time.
REF = [(0.0, 10.0, "A"), (5.0, 15.0, "B")]


def test_der_on_known_segments_with_overlap():
    # Hypothesis X 0-8, Y 8-15. Shared time: A-X 8, A-Y 2, B-X 3, B-Y 7 -> map A=X, B=Y.
    # 5-8: A and B speak, only X (= A) detected: 3 s missed; 8-10: only Y (= B): 2 s missed.
    hyp = [(0.0, 8.0, "X"), (8.0, 15.0, "Y")]
    assert der(REF, hyp) == pytest.approx(5 / 20)
    # The same with the speaker names permuted, or named like the reference's the wrong way round.
    assert der(REF, [(0.0, 8.0, "B"), (8.0, 15.0, "A")]) == pytest.approx(5 / 20)
    # Y also talks 15-17 where nobody does: 2 s false alarm.
    assert der(REF, hyp + [(15.0, 17.0, "Y")]) == pytest.approx(7 / 20)
    # X back at 12-15: A-X 8, B-X 6, A-Y 2, B-Y 4 -> still A=X, B=Y; 12-15 is B heard as X: 3 s
    # confusion. (3 + 2 + 3) / 20.
    hyp2 = [(0.0, 8.0, "X"), (8.0, 12.0, "Y"), (12.0, 15.0, "X")]
    assert der(REF, hyp2) == pytest.approx(8 / 20)
    # skip_overlap: 5-10 not scored, 10 s left; 12-15 still confused: 3/10.
    assert der(REF, hyp2, skip_overlap=True) == pytest.approx(3 / 10)
    # collar 0.5 s around 0, 5, 10, 15: scored A 0.5-4.5 + 5.5-9.5, B 5.5-9.5 + 10.5-14.5 = 16 s;
    # errors 5.5-8 (2.5) + 8-9.5 (1.5) missed, 12-14.5 (2.5) confused: 6.5/16.
    assert der(REF, hyp2, collar=0.5) == pytest.approx(6.5 / 16)
    # A corpus: errors and scored time summed over recordings, each mapped on its own.
    assert der({"r1": REF, "r2": REF}, {"r1": hyp, "r2": hyp2}) == pytest.approx((5 + 8) / 40)


def test_der_frames_with_a_permuted_hypothesis():
    # Hypothesis columns swapped: frames where both speak r0&h1 = 2, r1&h0 = 1 -> map r0=h1, r1=h0.
    # Frame 1: both reference speakers, one detected: 1 miss; frame 3: silence with h0 on: 1 false
    # alarm. Scored speaker frames 1 + 2 + 1 + 0 = 4.
    ref = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    hyp = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])
    assert diarization_errors(ref, hyp) == {"miss": 1.0, "false_alarm": 1.0, "confusion": 0.0, "scored": 4.0}
    assert der_frames(ref, hyp) == pytest.approx(0.5)
    assert der_frames(ref, ref[:, ::-1]) == 0.0
    # Two recordings: (2 + 0) / (4 + 4).
    assert der_frames([ref, ref], [hyp, ref]) == pytest.approx(2 / 8)
    assert compute_metric("der", [ref], [hyp]) == pytest.approx(0.5)
    # More hypothesis speakers than reference ones: the extra one is a false alarm throughout.
    extra = np.c_[ref, [1, 0, 0, 0]]
    assert diarization_errors(ref, extra)["false_alarm"] == 1.0 and der_frames(ref, extra) == pytest.approx(1 / 4)


def _frames_to_segments(act: np.ndarray) -> list:
    return [(float(t), float(t + 1), f"s{s}") for t, s in zip(*np.nonzero(act))]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_frame_and_segment_der_agree_and_the_mapping_is_optimal(n_ref, n_hyp, seed):
    rng = np.random.default_rng(seed)
    ref, hyp = rng.random((12, n_ref)) < 0.4, rng.random((12, n_hyp)) < 0.4
    if not ref.any():
        ref[0, 0] = True
    assert der_frames(ref, hyp) == pytest.approx(der(_frames_to_segments(ref), _frames_to_segments(hyp)))
    gain = rng.integers(0, 9, (n_ref, n_hyp)).astype(float)
    pairs = best_assignment(gain)
    brute = max(
        sum(gain[r, h] for r, h in zip(rows, cols))
        for rows in itertools.permutations(range(n_ref), min(n_ref, n_hyp))
        for cols in itertools.permutations(range(n_hyp), min(n_ref, n_hyp))
    )
    assert len(pairs) == min(n_ref, n_hyp) and sum(gain[r, h] for r, h in pairs) == brute


# ----------------------------------------------------------------------------- QbE

# Query 0 occurs in documents 0 and 2, query 1 in document 1; query 2 nowhere (left out).
QBE_SCORES = np.array([[0.9, 0.7, 0.5, 0.3, 0.1], [0.2, 0.8, 0.4, 0.6, 0.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
QBE_TRUE = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)


def test_mtwv_on_a_known_detection_list():
    # beta = 1, 5 trials per query. At t = 0.8: q0 detects d0 (hit) only: P_miss 1/2, P_fa 0;
    # q1 detects d1 (hit): 0, 0. TWV = 1 - (1/2 + 0)/2 = 0.75. Lower thresholds add false alarms
    # (t = 0.5: q0 costs 1/3, q1 1/4: TWV 0.708), higher ones misses (t = 0.9: 0.25).
    assert mtwv(QBE_SCORES, QBE_TRUE, beta=1.0) == pytest.approx(0.75)
    # SUPERB's beta 999.9: any false alarm is ruinous, and t = 0.8 has none.
    assert mtwv(QBE_SCORES, QBE_TRUE) == pytest.approx(0.75)
    # 10 trials per query (NIST-style): at t = 0.5 q0 costs 1/8 (d1), q1 1/9 (d3):
    # TWV = 1 - (1/8 + 1/9)/2 = 127/144, the maximum.
    assert mtwv(QBE_SCORES, QBE_TRUE, beta=1.0, n_trials=10) == pytest.approx(127 / 144)
    # Nothing detected (all -inf): TWV 0.
    assert mtwv(np.full((3, 5), -np.inf), QBE_TRUE) == 0.0
    assert compute_metric("mtwv", QBE_TRUE, QBE_SCORES) == pytest.approx(0.75)


def test_directions_are_registered():
    for m in ("der", "min_dcf", "slot_value_cer", "eer"):
        assert m in LOWER_IS_BETTER and is_better(m, 0.1, 0.2)
    for m in ("mtwv", "slot_type_f1"):
        assert m not in LOWER_IS_BETTER and is_better(m, 0.2, 0.1)


def kaldi_min_dcf(scores, same, p_target, c_miss=1.0, c_fa=1.0) -> float:
    """Kaldi's compute_min_dcf.py, written out independently: reject the k lowest scores, k = 0..n."""
    order = np.argsort(scores)
    y = np.asarray(same, dtype=float)[order]
    fnr = np.r_[0.0, np.cumsum(y) / y.sum()]
    fpr = np.r_[1.0, 1 - np.cumsum(1 - y) / (1 - y).sum()]
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(c_det.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.01, 0.05, 0.5]))
def test_min_dcf_agrees_with_kaldis_algorithm_on_distinct_scores(seed, p_target):
    rng = np.random.default_rng(seed)
    same = rng.random(30) < 0.4
    same[:2] = [True, False]
    scores = rng.normal(size=30) + same  # continuous: no ties, where Kaldi's and ours must agree
    assert min_dcf(scores, same, p_target) == pytest.approx(kaldi_min_dcf(scores, same, p_target))
