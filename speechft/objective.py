"""The contract between the training loop (speechft.engine) and what it optimises.

An objective (fine-tuning's speechft.train.TaskObjective, continued pre-training's
speechft.pretrain.UnitObjective) implements `Objective`; the loop hands it a `Loop` - where it runs and how
processes talk - and nothing else of its internals, so the protocol stays narrow and stable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .train_config import TrainConfig


@dataclass(frozen=True)
class Loop:
    """What an objective may know of the loop: where it runs and how processes talk. Nothing else of the
    loop's internals reaches an objective, so the protocol stays narrow."""

    device: torch.device
    rank: int  # this process, 0 .. world - 1
    world: int  # processes in the run
    autocast: Callable[[], contextlib.AbstractContextManager]  # the run's mixed precision (a no-op in fp32)
    gather: Callable[[list], list]  # every process's list, concatenated in rank order (world > 1 only)
    barrier: Callable[[], None]  # wait until every process gets here

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device="cpu") -> Loop:
        """One process in fp32, outside run_training (tests, an objective used on its own)."""
        return cls(torch.device(device), 0, 1, contextlib.nullcontext, lambda items: items, lambda: None)


@runtime_checkable
class BatchStream(Protocol):
    """Endless, resumable training batches of one task (speechft.train.TaskStream)."""

    position: list[int]  # what a checkpoint stores to replay the rest exactly

    def seek(self, epoch: int, index: int) -> None: ...

    def __next__(self) -> tuple[Any, int]:
        """(batch on the device, utterances in the global batch: all processes together)."""


@runtime_checkable
class Objective(Protocol):
    """What `run_training` asks of an objective: speechft.train.TaskObjective (task heads on task folders),
    speechft.pretrain.UnitObjective (masked-unit prediction on unlabelled audio).

    Before the loop: `resolve` validates the config (of `config_class`) and fills its defaults; `run_info`
    identifies the data (checked against run.json on --resume; `data_option` names the flag in that error);
    `build_heads` makes the trainable heads (a ModuleDict: one per stream name) once the encoder is loaded;
    `streams` gives one BatchStream per head. In the loop: `loss` is one micro-batch's mean loss, where
    `encode(wavs, lengths, **kw)` runs the encoder as this step needs it (frozen: without gradients) and
    `head` is the (possibly DDP-wrapped) head `name`; `dev_metrics` scores the dev set ({name: {"metric",
    "value"}}; every process calls it, the main one's answer counts). At the end: `save_heads` keeps what the
    result keeps of the heads, `provenance` adds to speechft.json, `clean_up` removes run-only files.
    `kind` labels the progress bar; `result_name` ends the last line ("wrote <result_name> encoder ...").
    """

    kind: str
    result_name: str
    data_option: str
    config_class: type

    def resolve(self, cfg: TrainConfig) -> TrainConfig: ...

    def run_info(self) -> dict: ...

    def build_heads(self, encoder, cfg: TrainConfig, out: Path, loop: Loop, progress: bool) -> nn.ModuleDict: ...

    def streams(self, cfg: TrainConfig, loop: Loop) -> dict[str, BatchStream]: ...

    def loss(self, encode: Callable, head: nn.Module, name: str, batch) -> torch.Tensor: ...

    def dev_metrics(self, encoder, heads: nn.ModuleDict, cfg: TrainConfig, loop: Loop) -> dict: ...

    def save_heads(self, out: Path, heads: nn.ModuleDict) -> None: ...

    def provenance(self, heads: nn.ModuleDict) -> dict: ...

    def clean_up(self, out: Path) -> None: ...
