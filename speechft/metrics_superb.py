"""SUPERB's metrics for the tasks that are not plain transcription or classification.

Each is a pure function of references and system outputs, defined as SUPERB's scoring
code (s3prl's downstream experts and the tools they call) defines it; the docstrings say
where and where we deviate. `metrics.compute_metric` dispatches to them by the names in
task.yaml (refs = ground truth, hyps = system output):

    slot_type_f1, slot_value_cer   SF   refs, hyps: tagged transcripts (see `parse_slots`)
    min_dcf (and metrics.eer)      ASV  refs: same-speaker flags, hyps: trial scores
    der                            SD   refs, hyps: per recording a [T, S] 0/1 activity matrix
    mtwv                           QbE  refs: [Q, D] bool, query q occurs in document d;
                                        hyps: [Q, D] detection scores

The score configs (speechft/configs/superb_leaderboard.yaml, superb_speechft.yaml) key on
task-folder names and these metric names, so task folders and results.json use them:
task `sf` metric `slot_type_f1` with `slot_value_cer` among its `metrics`; `asv` metric
`eer` (with `min_dcf`); `sd` metric `der`; `qbe` metric `mtwv`.

All take and return fractions (DER 0.0588, not 5.88); score configs in percent multiply
by 100, MTWV included (SUPERB prints MTWV as a fraction: 0.0736 is 7.36 in a config).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------- slot filling

# A slot in a transcript: `B-<type> value words E-<type>`, tags as their own
# space-separated tokens (s3prl's downstream/ctc SNIPS format, regex `B\-(\S+) (.+?) E\-\1`).
_SLOT = re.compile(r"B-(\S+) (.+?) E-\1(?= |$)")
_TAG = re.compile(r"(^| )[BE]-\S+(?= |$)")


def parse_slots(text: str) -> list[tuple[str, str]]:
    """The (slot type, value) pairs of a tagged transcript, in order.

    Accepted format (SUPERB SF, s3prl downstream/ctc/metric.py `parse`): words separated by
    spaces; a slot's value is the words between a `B-<type>` token and the next `E-<type>`
    token of the same type, e.g. "set an alarm for B-time seven am E-time". Runs of spaces
    count as one; a `B-` without its `E-` is no slot; tags nested inside a value are
    removed from it (s3prl cleans hypothesis values so). Unlike s3prl, a value may contain
    ':' or ';' (s3prl joins pairs with them and would split such a value apart).
    """
    text = re.sub(r" +", " ", text.strip())
    return [(t, _TAG.sub("", v).strip()) for t, v in _SLOT.findall(text)]


def strip_slots(text: str) -> str:
    """The transcript without its slot tags (s3prl `clean`)."""
    return re.sub(r" +", " ", _TAG.sub(" ", re.sub(r" +", " ", text.strip()))).strip()


def slot_type_f1(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """SUPERB SF slot-type F1 (s3prl `slot_type_f1`): per utterance, the F1 of the *set* of
    slot types in the hypothesis against the set in the reference (1 when both have none,
    0 when only one has none), averaged over utterances."""
    _same_length(refs, hyps)
    if not refs:
        raise ValueError("slot-type F1 needs at least one utterance")
    f1s = []
    for r, h in zip(refs, hyps):
        rt, ht = {t for t, _ in parse_slots(r)}, {t for t, _ in parse_slots(h)}
        if not rt and not ht:
            f1s.append(1.0)
        elif not rt or not ht:
            f1s.append(0.0)
        else:
            both = len(rt & ht)
            p, rc = both / len(ht), both / len(rt)
            f1s.append(0.0 if both == 0 else 2 * p * rc / (p + rc))
    return float(np.mean(f1s))


def slot_value_cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """SUPERB SF slot-value CER (s3prl `slot_value_cer`): every reference slot value is
    paired with the hypothesis value of the same type that has the lowest CER against it
    (the first such; '' when the hypothesis has no slot of that type), and the CER is
    corpus-level over those pairs: total character edits / total reference characters
    (spaces inside a value count as characters)."""
    from .metrics import edit_distance

    _same_length(refs, hyps)
    edits = total = 0
    for r, h in zip(refs, hyps):
        by_type: dict[str, list[str]] = {}
        for t, v in parse_slots(h):
            by_type.setdefault(t, []).append(v)
        for t, v in parse_slots(r):
            edits += min((edit_distance(v, c) for c in by_type.get(t, [""])), default=len(v))
            total += len(v)
    if total == 0:
        raise ValueError("the references hold no slot value: slot-value CER is undefined")
    return edits / total


# --------------------------------------------------------------------- speaker verification


def min_dcf(
    scores: Sequence[float], same: Sequence[bool], p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Minimum normalised detection cost of verification trials (higher score = more
    likely the same speaker), as Kaldi's compute_min_dcf.py and the VoxCeleb/SUPERB ASV
    tooling define it:

        C_det(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)
        minDCF   = min_t C_det(t) / min(c_miss * p_target, c_fa * (1 - p_target))

    with a trial accepted when its score >= t; t runs over every distinct score and +inf
    (accept nothing), so tied scores are accepted or rejected together."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("min_dcf needs one score per trial label")
    if y.all() or (~y).all():
        raise ValueError("minDCF needs both target and non-target trials")
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    thresholds = np.r_[np.unique(s), np.inf]
    p_miss = (s[y][None, :] < thresholds[:, None]).mean(axis=1)
    p_fa = (s[~y][None, :] >= thresholds[:, None]).mean(axis=1)
    c_det = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    return float(c_det.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


# ----------------------------------------------------------------------------- diarization


def best_assignment(gain: np.ndarray) -> list[tuple[int, int]]:
    """Rows matched one-to-one with columns to maximise the summed `gain` (Hungarian
    method, exact; a rectangular matrix leaves the surplus rows or columns unmatched)."""
    gain = np.asarray(gain, dtype=np.float64)
    n_r, n_c = gain.shape
    n = max(n_r, n_c)
    if n == 0:
        return []
    cost = np.zeros((n + 1, n + 1))
    cost[1 : n_r + 1, 1 : n_c + 1] = -gain
    # Shortest augmenting paths with potentials (Kuhn-Munkres, O(n^3)); 1-based with a
    # dummy column 0, as the textbook version.
    u, v, match, way = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1, int), np.zeros(n + 1, int)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv, used = np.full(n + 1, np.inf), np.zeros(n + 1, bool)
        while match[j0] != 0:
            used[j0] = True
            i0 = match[j0]
            cur = cost[i0, 1:] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    return sorted((int(match[j]) - 1, j - 1) for j in range(1, n + 1) if match[j] <= n_r and j <= n_c)


def diarization_errors(ref: np.ndarray, hyp: np.ndarray) -> dict[str, float]:
    """Frame counts of one recording's diarization errors (EEND's calc_diarization_error,
    which s3prl's SD expert reports), after mapping hypothesis speakers to reference
    speakers one-to-one so that they agree on the most active frames (the mapping that
    minimises the error; PIT over binary decisions).

    ref [T, S_ref], hyp [T, S_hyp]: speaker activity, > 0.5 = speaking. Per frame with
    n_ref, n_hyp active speakers and n_correct mapped pairs both active:
    miss = max(n_ref - n_hyp, 0), false_alarm = max(n_hyp - n_ref, 0),
    confusion = min(n_ref, n_hyp) - n_correct, scored = n_ref (overlap counts per speaker).
    """
    ref, hyp = np.asarray(ref) > 0.5, np.asarray(hyp) > 0.5
    if ref.ndim != 2 or hyp.ndim != 2 or len(ref) != len(hyp):
        raise ValueError(f"diarization needs [T, S] reference and hypothesis, got {ref.shape} and {hyp.shape}")
    agree = ref.T.astype(np.int64) @ hyp.astype(np.int64)  # [S_ref, S_hyp] frames both speak
    pairs = best_assignment(agree)
    n_ref, n_hyp = ref.sum(1), hyp.sum(1)
    n_correct = sum((ref[:, r] & hyp[:, h]).astype(np.int64) for r, h in pairs) if pairs else np.zeros(len(ref))
    return {
        "miss": float(np.maximum(n_ref - n_hyp, 0).sum()),
        "false_alarm": float(np.maximum(n_hyp - n_ref, 0).sum()),
        "confusion": float((np.minimum(n_ref, n_hyp) - n_correct).sum()),
        "scored": float(n_ref.sum()),
    }


def der_frames(ref: np.ndarray | Sequence[np.ndarray], hyp: np.ndarray | Sequence[np.ndarray]) -> float:
    """Frame-level DER = (miss + false alarm + confusion) / scored speaker frames, of one
    recording ([T, S] arrays) or summed over a list of recordings (each mapped on its own);
    see `diarization_errors`. Collar 0, overlap scored: SUPERB SD's setting."""
    if isinstance(ref, np.ndarray) and ref.ndim == 2:
        ref, hyp = [ref], [hyp]
    _same_length(ref, hyp)
    tot = {"miss": 0.0, "false_alarm": 0.0, "confusion": 0.0, "scored": 0.0}
    for r, h in zip(ref, hyp):
        for k, v in diarization_errors(r, h).items():
            tot[k] += v
    if tot["scored"] == 0:
        raise ValueError("the reference has no speech: DER is undefined")
    return (tot["miss"] + tot["false_alarm"] + tot["confusion"]) / tot["scored"]


Segments = Sequence[tuple[float, float, str]]


def der(
    reference: Segments | Mapping[str, Segments],
    hypothesis: Segments | Mapping[str, Segments],
    collar: float = 0.0,
    skip_overlap: bool = False,
) -> float:
    """Time-based DER of (start, end, speaker) segments (seconds), as NIST md-eval and
    dscore (which s3prl's SD scoring runs) define it; SUPERB reports collar 0 with overlap
    scored (the defaults). A mapping {recording: segments} scores a corpus: errors and
    scored time summed over recordings, speakers mapped per recording.

    Time is cut at every segment boundary; in each piece with n_ref reference and n_hyp
    hypothesis speakers, n_correct of them mapped pairs, the error is
    duration * (max(n_ref, n_hyp) - n_correct) and the scored time duration * n_ref. The
    one-to-one speaker mapping maximises the scored time the pairs speak together (which
    minimises the error). Not scored: time within `collar` seconds of a reference
    boundary, and with skip_overlap, time where more than one reference speaker talks.
    """
    if isinstance(reference, Mapping) != isinstance(hypothesis, Mapping):
        raise ValueError("reference and hypothesis must both be segment lists or both {recording: segments}")
    if not isinstance(reference, Mapping):
        reference, hypothesis = {"": reference}, {"": hypothesis}
    err = scored = 0.0
    for rec, ref_segs in reference.items():
        e, s = _segment_errors(ref_segs, hypothesis.get(rec, []), collar, skip_overlap)
        err, scored = err + e, scored + s
    if scored == 0:
        raise ValueError("the reference has no scored speech: DER is undefined")
    return err / scored


def _segment_errors(ref: Segments, hyp: Segments, collar: float, skip_overlap: bool) -> tuple[float, float]:
    for s, e, _ in list(ref) + list(hyp):
        if not e >= s:
            raise ValueError(f"segment ({s}, {e}) ends before it starts")
    r_spk, h_spk = sorted({x[2] for x in ref}), sorted({x[2] for x in hyp})
    ref_bounds = sorted({t for s, e, _ in ref for t in (s, e)})
    cuts = {t for s, e, _ in list(ref) + list(hyp) for t in (s, e)}
    if collar > 0:
        cuts |= {t + d for t in ref_bounds for d in (-collar, collar)}
    cuts = np.array(sorted(cuts))
    if len(cuts) < 2:
        return 0.0, 0.0
    mid, dur = (cuts[1:] + cuts[:-1]) / 2, np.diff(cuts)

    def activity(segs, speakers):
        act = np.zeros((len(mid), len(speakers)), bool)
        for s, e, spk in segs:
            act[:, speakers.index(spk)] |= (mid > s) & (mid < e)
        return act

    ra, ha = activity(ref, r_spk), activity(hyp, h_spk)
    keep = np.ones(len(mid), bool)
    for t in ref_bounds if collar > 0 else []:
        keep &= np.abs(mid - t) >= collar
    if skip_overlap:
        keep &= ra.sum(1) <= 1
    ra, ha, dur = ra[keep], ha[keep], dur[keep]
    pairs = best_assignment((ra.T * dur) @ ha) if len(r_spk) and len(h_spk) else []
    n_correct = sum((ra[:, r] & ha[:, h]).astype(float) for r, h in pairs) if pairs else np.zeros(len(dur))
    err = (dur * (np.maximum(ra.sum(1), ha.sum(1)) - n_correct)).sum()
    return float(err), float((dur * ra.sum(1)).sum())


# -------------------------------------------------------------------- query-by-example STD


def mtwv(scores: np.ndarray, occurs: np.ndarray, beta: float = 999.9, n_trials: int | None = None) -> float:
    """Maximum term-weighted value of query-by-example detections (NIST STD 2006 and
    QUESST 2014, the scoring SUPERB QbE runs; beta = C / V * (1 / P_target - 1) = 999.9 for
    C = 0.1, V = 1, P_target = 1e-4):

        TWV(t) = 1 - 1/|Q| * sum_q [ P_miss(q, t) + beta * P_fa(q, t) ]
        P_miss(q, t) = 1 - N_hit(q, t) / N_true(q)
        P_fa(q, t)   = N_fa(q, t) / (N_trials - N_true(q))
        MTWV = max_t TWV(t)

    scores [Q, D]: detection score of query q in document d (higher = more confident;
    -inf or NaN = not detected); occurs [Q, D]: whether q truly occurs in d. A detection
    is score >= t, t over every distinct score and +inf (TWV 0: detect nothing, so
    MTWV >= 0). Trials: as QUESST, one per (query, document), so N_trials = D per query;
    `n_trials` overrides it (e.g. NIST STD's one trial per second of speech). Queries with
    no true occurrence are left out of the mean, as NIST does.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(occurs, dtype=bool)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"mtwv needs [queries, documents] scores and truth, got {s.shape} and {y.shape}")
    s = np.where(np.isnan(s), -np.inf, s)
    n_true = y.sum(1)
    q = n_true > 0
    if not q.any():
        raise ValueError("no query occurs in any document: MTWV is undefined")
    s, y, n_true = s[q], y[q], n_true[q]
    n_trials = s.shape[1] if n_trials is None else n_trials
    if np.any(n_trials - n_true <= 0):
        raise ValueError("a query occurs in every trial: its false-alarm rate is undefined")
    finite = s[np.isfinite(s)]
    thresholds = np.r_[np.unique(finite), np.inf]
    det = s[None, :, :] >= thresholds[:, None, None]  # [thresholds, Q, D]
    hits = (det & y).sum(2)
    fas = (det & ~y).sum(2)
    twv = 1 - np.mean(1 - hits / n_true + beta * fas / (n_trials - n_true), axis=1)
    return float(twv.max())


def _same_length(refs, hyps) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
