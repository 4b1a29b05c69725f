"""Every knob of a fine-tuning (or continued pre-training) run, as dataclasses, and their validation.

Recipes are YAML files with these keys (any subset; configs/paper/*.yaml); `--set a.b=v` overrides single
values; the resolved config is stored in the run folder as config.yaml. This module is importable without
the training loop, accelerate or transformers (speechft.pretrain, speechft.demo and the recipe tests use it);
speechft.engine runs what it describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .config import from_dict, to_dict
from .errors import SpeechFTError
from .heads import HeadConfig
from .schedule import fraction_steps

# The fine-tuning methods (speechft.train's module docstring says what each does); merge methods are another
# registry (speechft.merge_methods).
FINETUNE_METHODS = ("stable", "regular", "l2sp", "lora", "dora", "early-stop")
# Methods whose encoder starts with a frozen phase by default (TrainConfig.frozen_fraction = null).
FROZEN_BY_DEFAULT = {"stable": 0.1, "early-stop": 0.1}
PROBING_LR = 1e-3  # an encoder LR above this is what SUPERB probes use, and it wrecks a pre-trained encoder
# Accelerate's trackers (accelerate.utils.LoggerType; "all" = every one installed); speechft.tracking runs them.
TRACKERS = ("all", "tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # Adam learning rate of the encoder and the heads
    encoder_lr: float | None = None  # null = lr; the encoder's (or its adapters') own LR
    head_lr: float | None = None  # null = lr; the task heads' own LR
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm (0 = no clipping)
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class ScheduleConfig:
    warmup: float = 0.1  # linear warm-up from 0 over this fraction of the steps
    hold_until: float = 0.5  # constant LR until this fraction, then linear decay to 0 at the last step


@dataclass
class DataConfig:
    batch_size: int = 8  # utterances per micro-batch, over all processes together
    eval_batch_size: int = 16
    max_seconds: float | None = None  # training clips longer than this are cropped (ctc: skipped)
    # How a classification training clip longer than max_seconds is cropped: "random" = a window at a start
    # drawn per (seed, epoch, clip), as s3prl's VoxCeleb1 dataset does; "start" = its first max_seconds every
    # epoch. None (the default) = the objective's own: random for fine-tuning, start for speechft pretrain
    # (its units are labelled once, on that crop). Dev clips are never cropped.
    crop: Literal["random", "start"] | None = None
    num_workers: int = 0  # DataLoader worker processes for audio decoding
    multitask: Literal["interleave", "mixed"] = "interleave"  # one task per step in turn | every task every step


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module-name suffixes: attention and feed-forward linears of every supported family
    # (wav2vec2/HuBERT/WavLM/data2vec/DeCoAR 2.0 name the FFN intermediate_dense/output_dense,
    # Whisper fc1/fc2). Names a family lacks are ignored; none matching is an error.
    targets: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "out_proj",
            "intermediate_dense",
            "output_dense",
            "fc1",
            "fc2",
        ]
    )


@dataclass
class EvalConfig:
    every: int = 0  # dev evaluation every this many steps (0 = 10 evaluations per run); always at the end
    log_every: int = 10  # training loss / LR lines in metrics.jsonl and the progress bar


@dataclass
class CheckpointConfig:
    every: int = 0  # resumable checkpoint every this many steps (0 = at every evaluation)
    keep_last: int = 1  # resumable checkpoints kept while running (more: a trajectory for analysis)
    keep_at_end: bool = False  # keep checkpoints/ after a successful run (it holds the optimizer state)


@dataclass
class TrainConfig:
    method: Literal["stable", "regular", "l2sp", "lora", "dora", "early-stop"] = "stable"
    steps: int = 1000  # optimizer updates of the full schedule
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 = autocast with fp32 master weights
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    frozen_fraction: float | None = None  # encoder frozen for this fraction of steps; null = method default
    early_stop_fraction: float = 0.2  # early-stop: the result is the checkpoint at this fraction of the steps
    l2sp_lambda: float = 0.01  # l2sp: weight of lambda/2 * ||theta - theta_0||^2
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Experiment trackers that get metrics.jsonl's rows too (--log-with; speechft.tracking). Not part of what is
    # computed: --resume may change it.
    log_with: list[Literal[TRACKERS]] = field(default_factory=list)


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Validate `cfg` and fill every 'null = default' with its value, so the stored config says exactly what ran.
    Raises a one-line SpeechFTError naming the bad key."""
    cfg = from_dict(type(cfg), to_dict(cfg))  # a validated copy (of a TrainConfig or a subclass, e.g. PretrainConfig)
    o = cfg.optim

    def bad(key, value, what):
        raise SpeechFTError(f"config {key}={value!r}: {what}")

    if cfg.method not in FINETUNE_METHODS:
        bad("method", cfg.method, f"unknown method; choose one of {', '.join(FINETUNE_METHODS)}")
    if cfg.steps < 1:
        bad("steps", cfg.steps, "a run needs at least 1 step (--steps N)")
    for key, lr in (("optim.lr", o.lr), ("optim.encoder_lr", o.encoder_lr), ("optim.head_lr", o.head_lr)):
        if lr is not None and not (math.isfinite(lr) and 0 < lr <= 1):
            bad(key, lr, "a learning rate must be a number in (0, 1]; Speech-FT uses 1e-4")
    o.encoder_lr = o.lr if o.encoder_lr is None else o.encoder_lr
    o.head_lr = o.lr if o.head_lr is None else o.head_lr
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        bad("optim.betas", o.betas, "Adam needs two betas in [0, 1)")
    if o.clip < 0 or o.eps <= 0:
        bad("optim.clip" if o.clip < 0 else "optim.eps", o.clip if o.clip < 0 else o.eps, "must be positive")
    if o.grad_accum < 1:
        bad("optim.grad_accum", o.grad_accum, "must be >= 1")
    s = cfg.schedule
    if not (0 <= s.warmup <= s.hold_until <= 1):
        bad("schedule", f"warmup={s.warmup}, hold_until={s.hold_until}", "need 0 <= warmup <= hold_until <= 1")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        bad("data.batch_size", cfg.data.batch_size, "must be >= 1")
    if cfg.data.max_seconds is not None and cfg.data.max_seconds <= 0:
        bad("data.max_seconds", cfg.data.max_seconds, "must be positive (or null for no cropping)")
    if cfg.data.num_workers < 0:
        bad("data.num_workers", cfg.data.num_workers, "must be >= 0")
    if cfg.frozen_fraction is None:
        cfg.frozen_fraction = FROZEN_BY_DEFAULT.get(cfg.method, 0.0)
    if not 0 <= cfg.frozen_fraction < 1:
        bad("frozen_fraction", cfg.frozen_fraction, "must be in [0, 1): the encoder has to train at some point")
    if not 0 < cfg.early_stop_fraction <= 1:
        bad("early_stop_fraction", cfg.early_stop_fraction, "must be in (0, 1]")
    if fraction_steps(cfg.frozen_fraction, cfg.steps) >= run_steps(cfg):
        bad(
            "frozen_fraction",
            cfg.frozen_fraction,
            f"the encoder would stay frozen for all {run_steps(cfg)} steps "
            "of this run; lower frozen_fraction or raise steps",
        )
    if not (math.isfinite(cfg.l2sp_lambda) and cfg.l2sp_lambda >= 0):
        bad("l2sp_lambda", cfg.l2sp_lambda, "must be a number >= 0")
    if cfg.lora.rank < 1 or cfg.lora.alpha <= 0 or not 0 <= cfg.lora.dropout < 1 or not cfg.lora.targets:
        bad("lora", to_dict(cfg.lora), "need rank >= 1, alpha > 0, 0 <= dropout < 1 and at least one target")
    run = run_steps(cfg)
    if cfg.eval.every < 0 or cfg.checkpoint.every < 0 or cfg.eval.log_every < 1:
        bad("eval/checkpoint", f"every={cfg.eval.every}/{cfg.checkpoint.every}", "must be >= 0 (log_every >= 1)")
    cfg.eval.every = cfg.eval.every or max(1, run // 10)
    cfg.checkpoint.every = cfg.checkpoint.every or cfg.eval.every
    if cfg.checkpoint.keep_last < 1:
        bad("checkpoint.keep_last", cfg.checkpoint.keep_last, "must be >= 1")
    cfg.log_with = list(dict.fromkeys(cfg.log_with))  # each tracker once, in the order given
    return cfg


def run_steps(cfg: TrainConfig) -> int:
    """Updates actually made: all of them, or up to the early-stop checkpoint."""
    return fraction_steps(cfg.early_stop_fraction, cfg.steps) if cfg.method == "early-stop" else cfg.steps
