"""Fine-tune a speech encoder on one or more task folders: Speech-FT stage 1 and the paper's baselines.

Launch it like this:

    # one GPU, or the CPU
    speechft finetune --encoder ENC --task TASK --method stable --out runs/asr [--device cpu|cuda|cuda:N]
    # N GPUs on one node (the batch size stays the global batch: each process takes 1/N of every batch)
    accelerate launch --multi_gpu --num_processes N -m speechft finetune --encoder ENC --task TASK --out runs/asr
    # M nodes of G GPUs (run on every node; checkpoints need a shared file system)
    accelerate launch --multi_gpu --num_machines M --machine_rank R --main_process_ip HOST --main_process_port 29500 \
        --num_processes M*G -m speechft finetune ...
    # N CPU processes (tests, debugging): the same `--multi_gpu` launch works on a machine without GPUs (gloo)

Methods (all share the loop; only what differs is switched per method):

    stable      encoder frozen for the first 10% of the steps (only the head trains: LP-FT style), then every
                encoder parameter trains except the waveform front end; best-on-dev checkpoint is the result
    regular     the same without the frozen phase
    l2sp        regular + lambda/2 * ||theta_enc - theta_0||^2 over the trainable encoder parameters
    lora, dora  low-rank adapters (peft) on the attention and feed-forward linears; the base stays frozen and the
                adapters are folded into plain weights at the end, so the output is an ordinary encoder folder
    early-stop  the checkpoint at 20% of the steps is the result (an early checkpoint of the stable run: the run
                stops there, with the LR schedule of the full run)

Common to all: Adam (no weight decay), lr 1e-4, gradient-norm clip 1, the warm-up / hold / decay schedule
(schedule.py), the front end and the pre-training-only parameters frozen throughout, and the encoder in training
mode from the first step: a frozen phase runs it with its dropout but without gradients, as s3prl runs a
trainable upstream. No masking or layerdrop inside the encoder, in any family (speechft.encoders.base).

Several --task folders (`--task PR SID`) train jointly, one head per task. The knobs are speechft.train_config's
TrainConfig (`--config YAML`, `--set key=value ...`). The loop is speechft.engine's `run_training`, which asks
an objective (the protocol speechft.objective.Objective) what to optimise: this module's `TaskObjective` (task
heads on task folders) for fine-tuning; speechft.pretrain's `UnitObjective` (masked-unit prediction) for
continued pre-training, which thereby shares every method, checkpoint and process setting above.

The output folder, when finished, is itself an encoder folder (config.json, model.safetensors, speechft.json)
and also holds heads/<task>/ (the trained task heads), metrics.jsonl, config.yaml (the resolved config),
curves.png, adapter/ (lora/dora only), trackers/ (--log-with: Accelerate's trackers, speechft.tracking) and,
while the run is going, checkpoints/ (resumable state); see speechft.run_folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .cli import add_device_option, add_quiet_option
from .config import add_config_options, config_from_args
from .engine import dev_score, freeze_permanently, micro_batches, run_training, warn
from .errors import SpeechFTError
from .heads import TaskHead, ctc_misfits
from .objective import Loop
from .run_folder import stored_config
from .tracking import add_tracking_option
from .train_config import (
    FINETUNE_METHODS,
    FROZEN_BY_DEFAULT,
    PROBING_LR,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LoraSettings,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    resolve_config,
    run_steps,
)

__all__ = [  # the loop's and the config's names are re-exported: `from speechft.train import ...` keeps working
    "FINETUNE_METHODS",
    "FROZEN_BY_DEFAULT",
    "PROBING_LR",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "LoraSettings",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "resolve_config",
    "run_steps",
    "run_training",
    "dev_score",
    "micro_batches",
    "freeze_permanently",
    "finetune",
    "TaskObjective",
    "TaskStream",
    "dev_metrics",
]


# =====================================================================================================
# Command line: speechft finetune (the library entry point, finetune(), follows)
# =====================================================================================================
def add_arguments(p) -> None:
    p.add_argument(
        "--encoder",
        required=True,
        metavar="DIR",
        help="pre-trained encoder folder or Hugging Face Hub id org/name[@revision]",
    )
    p.add_argument(
        "--task",
        required=True,
        nargs="+",
        action="extend",
        metavar="TASKDIR",
        help="task folder(s); several train jointly, one head per task (--task PR SID)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder; an encoder folder when finished")
    p.add_argument("--method", metavar="NAME", help=f"{' | '.join(FINETUNE_METHODS)} (default: the config's, stable)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer updates (default: the config's, 1000)")
    add_config_options(p, TrainConfig, "optim.lr=5e-5 head.layers=weighted")
    add_device_option(p)
    add_quiet_option(p)
    add_tracking_option(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


# The command's own flags and the config keys they set (config.config_from_args).
CONFIG_FLAGS = {"method": "method", "steps": "steps", "log_with": "log_with"}


def main(args) -> int:
    if args.resume and args.overwrite:
        raise SpeechFTError("--resume and --overwrite contradict each other; pass one")
    check_method(args.method)
    given = args.config is not None or args.set or any(getattr(args, f) is not None for f in CONFIG_FLAGS)
    # --resume alone: the stored config.yaml counts. Options given with it apply on top of the stored config and
    # must not change it (so repeating some of the original options is fine; a changed one is named).
    base = stored_config(TrainConfig, Path(args.out)) if args.resume else None
    config = config_from_args(TrainConfig, args, CONFIG_FLAGS, base=base) if given or not args.resume else None
    finetune(
        args.encoder,
        args.task,
        args.out,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
    )
    return 0


# =====================================================================================================
# The run
# =====================================================================================================
def finetune(
    encoder_dir,
    task_dirs: Sequence,
    out,
    method: str | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """Fine-tune the encoder in `encoder_dir` on the task folders `task_dirs`; write the run folder `out`.

    `method` (if given) overrides `config.method`. With `resume=True` the run continues from the latest
    checkpoint in `out`; `config` may then be None (the stored one is used) or must equal the stored one.
    `device`: cpu, cuda or cuda:N (None: cuda when available). Returns `out`, which is an encoder folder
    when the run has finished.
    """
    check_method(method)
    if method is not None:
        config = dataclasses.replace(config or TrainConfig(), method=method)
    objective = TaskObjective(load_tasks(task_dirs))
    return run_training(encoder_dir, out, objective, config, resume, overwrite, progress, device)


def check_method(method: str | None) -> None:
    if method is not None and method not in FINETUNE_METHODS:
        raise SpeechFTError(f"--method {method!r}: unknown; choose one of {', '.join(FINETUNE_METHODS)}")


def load_tasks(task_dirs) -> list:
    from .data import load_task

    tasks = [load_task(t) for t in task_dirs]
    if not tasks:
        raise SpeechFTError("no task given: pass at least one --task TASKDIR")
    for t in tasks:  # probing-only task types: scored on trials or by DTW, they have no training head
        if t.type in ("verification", "qbe", "diarization"):
            raise SpeechFTError(
                f"{t.root}: a '{t.type}' task can be evaluated (speechft evaluate) but not fine-tuned on; "
                "fine-tune on a classification or ctc task (e.g. speaker identification for verification)"
            )
    names = [t.name for t in tasks]
    bad = [n for n in names if not n or "." in n or "/" in n]
    if bad:
        raise SpeechFTError(f"task name {bad[0]!r} (task.yaml) cannot name a head; use letters, digits, - and _")
    dup = sorted(n for n in names if names.count(n) > 1)
    if dup:
        raise SpeechFTError(
            f"two task folders are both named {dup[0]!r} in task.yaml; one head per task needs distinct names"
        )
    return tasks


class TaskObjective:
    """What fine-tuning optimises: one head per task folder (heads.TaskHead), its loss, its dev metric.

    It implements speechft.objective.Objective (the questions `run_training` asks);
    speechft.pretrain.UnitObjective answers the same ones for masked-unit prediction on unlabelled audio.
    """

    kind = "finetune"  # progress-bar label
    result_name = "fine-tuned"  # "wrote <result_name> encoder ... to OUT"
    data_option = "--task"  # named in resume errors
    config_class = TrainConfig

    def __init__(self, tasks: list):
        self.tasks, self.heads = tasks, None

    @staticmethod
    def resolve(cfg: TrainConfig) -> TrainConfig:
        if type(cfg) is not TrainConfig:  # e.g. a PretrainConfig: its extra sections mean nothing here
            raise SpeechFTError(f"finetune takes a TrainConfig, got a {type(cfg).__name__}; use its own command")
        return resolve_config(cfg)

    def run_info(self) -> dict:
        """What identifies the data: checked against run.json on --resume."""
        return {
            t.name: {
                "path": str(Path(t.root).resolve()),
                "train_sha256": t.manifest_hash("train"),
                "dev_sha256": t.manifest_hash("dev"),
            }
            for t in self.tasks
        }

    def build_heads(self, encoder, cfg: TrainConfig, out: Path, loop: Loop, progress: bool) -> nn.ModuleDict:
        for t in self.tasks:  # a ctc task none of whose clips has enough frames would only ever skip batches
            if t.type != "ctc":
                continue
            examples = t.split("train")
            misfits = ctc_misfits(encoder, examples, t.vocabulary)
            if len(misfits) == len(examples):
                ex, frames, need = misfits[0]
                raise SpeechFTError(
                    f"{t.root}/train.tsv: no clip has enough {encoder.family} frames for its transcript "
                    f"(e.g. '{ex.id}': {frames} frames, needs {need} for CTC); use longer clips, shorter "
                    "transcripts or an encoder with more frames per second"
                )
        self.heads = nn.ModuleDict(
            {t.name: TaskHead.for_task(t, encoder.hidden_size, encoder.num_layers + 1, cfg.head) for t in self.tasks}
        )
        return self.heads

    def streams(self, cfg: TrainConfig, loop: Loop) -> dict:
        return {
            t.name: TaskStream(t, cfg.data, cfg.seed + i, loop.rank, loop.world, loop.device)
            for i, t in enumerate(self.tasks)
        }

    def loss(self, encode, head, name: str, batch) -> torch.Tensor:
        """`encode(wavs, lengths, **kw)` runs the encoder as the step needs it; `head` is the (wrapped) head."""
        enc_out = encode(batch.wavs, batch.lengths)
        logits = head(enc_out.hidden_states, enc_out.frame_lengths)
        return self.heads[name].loss(logits, enc_out.frame_lengths, batch.targets)

    def dev_metrics(self, encoder, heads, cfg: TrainConfig, loop: Loop) -> dict:
        return dev_metrics(encoder, heads, self.tasks, cfg.data, loop)

    def save_heads(self, out: Path, heads) -> None:
        for name, head in heads.items():
            head.save(out / "heads" / name, overwrite=True)

    def provenance(self, heads) -> dict:
        return {"tasks": sorted(heads.keys())}

    def clean_up(self, out: Path) -> None:
        """Remove run-only files once the result is written (fine-tuning has none beyond checkpoints/)."""


class TaskStream:
    """Endless training batches of one task.

    Epochs of length-bucketed batches (BucketBatchSampler: little padding) in an order fixed by
    (seed, epoch), and random crops (data.crop) fixed by (seed, epoch, clip), so a checkpoint's (epoch, batch)
    position replays the rest exactly. With N processes
    each global batch is dealt out item by item: process r gets items r, r+N, ...; a batch of fewer than N
    items is skipped. The position counts the epoch's batches before that skipping, so it means the same on
    any number of processes (a --resume on another number continues the epoch where it stopped). Yields
    (batch on the device, size of the global batch).
    """

    def __init__(self, task, data_cfg: DataConfig, seed: int, rank: int, world: int, device):
        from .data.batching import BucketBatchSampler
        from .data.dataset import SplitDataset

        self.task, self.cfg, self.rank, self.world, self.device = task, data_cfg, rank, world, device
        # Classification clips are cropped as data.crop says. Unlabelled audio (speechft.pretrain) is cut at
        # the start: its unit targets were labelled once, on exactly that crop. CTC clips cannot be cropped.
        max_seconds = data_cfg.max_seconds if task.type != "ctc" else None
        crop = (data_cfg.crop or "random") if task.type == "classification" else "start"
        self.dataset = SplitDataset(task, "train", max_seconds, crop=crop, seed=seed)
        if data_cfg.max_seconds is not None and task.type == "ctc":
            # Cropping would cut words off their transcripts: long CTC clips are left out instead.
            keep = [ex for ex in self.dataset.examples if ex.duration <= data_cfg.max_seconds]
            if not keep:
                raise SpeechFTError(
                    f"{task.root}/train.tsv: every clip is longer than data.max_seconds={data_cfg.max_seconds}"
                )
            if len(keep) < len(self.dataset.examples):
                warn(
                    f"{task.name}: {len(self.dataset.examples) - len(keep)} training clips longer than "
                    f"data.max_seconds={data_cfg.max_seconds} s are skipped (ctc transcripts cannot be cropped)"
                )
            self.dataset.examples = keep
        durations = [min(d, data_cfg.max_seconds or d) for d in self.dataset.durations]
        self.sampler = BucketBatchSampler(durations, batch_size=data_cfg.batch_size, shuffle=True, seed=seed)
        self.epoch, self.index, self._it = 0, 0, None

    @property
    def position(self) -> list[int]:
        return [self.epoch, self.index]

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index, self._it = epoch, index, None

    def _epoch(self):
        from .data.dataset import split_loader

        plan = self.sampler.batches(self.epoch)
        usable = [i for i, b in enumerate(plan) if len(b) >= self.world]  # every process needs an item of each
        if not usable:
            raise SpeechFTError(f"{self.task.root}/train.tsv: too few examples for a batch on {self.world} processes")
        todo = [i for i in usable if i >= self.index]
        self.dataset.set_epoch(self.epoch)  # before the loader exists: workers copy the dataset as it is now
        loader = split_loader(
            self.dataset,
            [plan[i][self.rank :: self.world] for i in todo],
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for i, batch in zip(todo, loader):
            yield i, batch, len(plan[i])

    def __next__(self):
        while True:
            if self._it is None:
                self._it = self._epoch()
            try:
                i, batch, n = next(self._it)
            except StopIteration:
                self.epoch, self.index, self._it = self.epoch + 1, 0, None
                continue
            self.index = i + 1
            batch.wavs = batch.wavs.to(self.device, non_blocking=True)
            batch.lengths = batch.lengths.to(self.device, non_blocking=True)
            return batch, n


@torch.no_grad()
def dev_metrics(encoder, heads, tasks, data_cfg: DataConfig, loop: Loop) -> dict:
    """Dev metric per task by greedy decoding: {task: {"metric": name, "value": v}}. Processes split the
    dev batches and the main process scores the gathered predictions."""
    from .data.batching import BucketBatchSampler
    from .data.dataset import SplitDataset, split_loader
    from .metrics import compute_metric

    encoder.eval()
    heads.eval()
    results = {}
    for task in tasks:
        ds = SplitDataset(task, "dev")  # whole clips, never cropped: s3prl scores SID's dev and test clips whole
        batches = BucketBatchSampler(ds.durations, batch_size=data_cfg.eval_batch_size, shuffle=False).batches()
        loader = split_loader(ds, batches[loop.rank :: loop.world], num_workers=data_cfg.num_workers)
        pairs = []
        for batch in loader:
            with loop.autocast():
                enc_out = encoder(batch.wavs.to(loop.device), batch.lengths.to(loop.device))
                logits = heads[task.name](enc_out.hidden_states, enc_out.frame_lengths)
            pairs += zip(batch.indices, heads[task.name].predict(logits.float(), enc_out.frame_lengths))
        if loop.world > 1:
            pairs = loop.gather(pairs)
        pairs.sort(key=lambda p: p[0])
        refs = [ds.examples[i].target for i, _ in pairs]
        value = compute_metric(task.metric, refs, [h for _, h in pairs], labels=task.labels)
        results[task.name] = {"metric": task.metric, "value": round(float(value), 6)}
    return results
