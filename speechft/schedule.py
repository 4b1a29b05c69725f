"""The learning-rate schedule and step counts of a fine-tuning run, as pure functions of the step.

Speech-FT's "stable" schedule: linear warm-up from 0 over the first 10% of the steps,
constant until 50%, then linear decay to 0 at the last step. Because the multiplier is a
function of (step, total) alone, resuming a run needs only the step number - there is no
scheduler object whose state could drift from the optimizer's.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total: int, warmup: float = 0.1, hold_until: float = 0.5) -> float:
    """Multiplier in [0, 1] for the update made at `step` (0-based) of a `total`-step run.

    p = step / total: p < warmup -> p / warmup; warmup <= p < hold_until -> 1;
    p >= hold_until -> (1 - p) / (1 - hold_until). So the values at 0, 10%, 50% and 100%
    of the run are 0, 1, 1 and 0 with the defaults (step 0 is a zero-LR update, as in the
    usual linear warm-up).
    """
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    p = min(max(step / total, 0.0), 1.0)
    if p < warmup:
        return p / warmup
    if p < hold_until:
        return 1.0
    if hold_until >= 1.0:
        return 1.0
    return max(0.0, (1.0 - p) / (1.0 - hold_until))


def fraction_steps(fraction: float, total: int) -> int:
    """ceil(fraction * total) steps, robust to float noise (0.2 * 30 = 6.000000000000001 -> 6)."""
    return min(total, max(0, math.ceil(fraction * total - 1e-9)))
