"""Slot filling (SUPERB SF): CTC over characters plus slot markers, scored by slot-type F1 and slot-value CER.

A slot-filling task folder is a ctc task with `tokenizer: slots` (data/tasks.py): its transcripts read
`wake me at B-time seven am E-time`, and the head (heads.CTCHead, the same as ASR's) learns to emit the
markers among the characters. Its metrics follow SUPERB's definitions (s3prl's slot-filling metrics):

- slot_type_f1: per utterance, F1 between the *set* of slot types in the reference and in the
  hypothesis (1 when both have none, 0 when only one has none), averaged over utterances.
- slot_value_cer: for every slot value of the reference, the hypothesis value of the same type with the
  lowest CER ("" when the hypothesis has no slot of that type); the corpus CER over these pairs.

A slot is `B-type words E-type` (the same type closing it; the words between, stripped of any other
marker). The task's main metric (task.yaml `metric`, default for such folders slot_type_f1, as SUPERB
selects its SF checkpoints) picks the epoch and the LR; both metrics are reported (result `metrics`).

These metrics live here until speechft.metrics has them (then `compute_metric` dispatches to them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .data.tasks import SLOT_METRICS
from .metrics_superb import slot_type_f1, slot_value_cer

_SLOT = re.compile(r"B-(\S+) (.+?) E-\1(?=\s|$)")
_MARKER = re.compile(r"(^|\s)[BE]-\S+(?=\s|$)")


def is_slot_task(task) -> bool:
    return task.type == "ctc" and getattr(task, "tokenizer", None) == "slots"


def slots(text: str) -> dict[str, list[str]]:
    """{slot type: [values in order]} of a tagged transcript."""
    out: dict[str, list[str]] = {}
    for kind, value in _SLOT.findall(" ".join(text.split())):
        out.setdefault(kind, []).append(" ".join(_MARKER.sub(" ", value).split()))
    return out


def plain_text(text: str) -> str:
    """The transcript without its slot markers."""
    return " ".join(_MARKER.sub(" ", text).split())


def slot_metrics(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    return {"slot_type_f1": slot_type_f1(refs, hyps), "slot_value_cer": slot_value_cer(refs, hyps)}


def train_sf_probe(provider, lr: float, seed: int, cfg, on_epoch=None, device="cpu") -> dict:
    """probe_train.train_probe for a slot-filling task: the same head, loss and epochs; the epoch with the
    best dev value of the task's metric is kept; returns also the test value of both slot metrics."""
    from .heads import TaskHead
    from .probe_special import keep_best
    from .probe_train import _predict, _train_epoch, probe_epochs

    task, source = provider.task, provider.source
    if task.metric not in SLOT_METRICS:
        raise ValueError(f"{task.root}: a slot task is scored by {' or '.join(SLOT_METRICS)}, not {task.metric}")
    torch.manual_seed(seed)
    head = TaskHead.for_task(task, source.dim, source.num_states, cfg.head_config(task.type))
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    targets = [task.encode(ex.target) for ex in task.split("train")]

    def evaluate(split: str) -> dict[str, float]:
        refs = [ex.target for ex in task.split(split)]
        return slot_metrics(refs, _predict(head, task, provider.get(split), cfg))

    def train_epoch(epoch: int) -> None:
        _train_epoch(head, opt, provider.get("train"), task, targets, epoch, seed, gen, cfg)

    return keep_best(head, probe_epochs(task, cfg), train_epoch, evaluate, task.metric, on_epoch)
