"""Fine-tune a speech encoder on one or more task folders: Speech-FT stage 1 and the paper's baselines.

One training loop, readable top to bottom in `finetune()`. Launch it like this:

    # one GPU, or the CPU
    speechft finetune --encoder ENC --task TASK --method stable --out runs/asr
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
(schedule.py), the front end and the pre-training-only parameters frozen throughout.

The loop (`run_training`) asks an objective object what to optimise: `TaskObjective` (task heads on task
folders) for fine-tuning; speechft.pretrain's `UnitObjective` (masked-unit prediction) for continued
pre-training, which thereby shares every method, checkpoint and process setting above.

The output folder, when finished, is itself an encoder folder (config.json, model.safetensors, speechft.json)
and also holds heads/<task>/ (the trained task heads), metrics.jsonl, config.yaml (the resolved config),
curves.png, adapter/ (lora/dora only) and, while the run is going, checkpoints/ (resumable state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .config import apply_overrides, from_dict, load_config, save_config, to_dict
from .errors import SpeechFTError
from .heads import HeadConfig, TaskHead
from .io_utils import read_json, sha256_file, write_json
from .provenance import PROVENANCE_FILE, inherited, lineage_entry
from .schedule import fraction_steps, lr_multiplier

METHODS = ("stable", "regular", "l2sp", "lora", "dora", "early-stop")
# Methods whose encoder starts with a frozen phase by default (TrainConfig.frozen_fraction = null).
FROZEN_BY_DEFAULT = {"stable": 0.1, "early-stop": 0.1}
PROBING_LR = 1e-3  # an encoder LR above this is what SUPERB probes use, and it wrecks a pre-trained encoder


# =====================================================================================================
# Configuration: every knob of a run. Recipes are YAML files with these keys (any subset); `--set a.b=v`
# overrides single values. The resolved config is stored in the run folder as config.yaml.
# =====================================================================================================
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


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Validate `cfg` and fill every 'null = default' with its value, so the stored config says exactly what ran.
    Raises a one-line SpeechFTError naming the bad key."""
    cfg = from_dict(type(cfg), to_dict(cfg))  # a validated copy (of a TrainConfig or a subclass, e.g. PretrainConfig)
    o = cfg.optim

    def bad(key, value, what):
        raise SpeechFTError(f"config {key}={value!r}: {what}")

    if cfg.method not in METHODS:
        bad("method", cfg.method, f"unknown method; choose one of {', '.join(METHODS)}")
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
    return cfg


def run_steps(cfg: TrainConfig) -> int:
    """Updates actually made: all of them, or up to the early-stop checkpoint."""
    return fraction_steps(cfg.early_stop_fraction, cfg.steps) if cfg.method == "early-stop" else cfg.steps


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
) -> Path:
    """Fine-tune the encoder in `encoder_dir` on the task folders `task_dirs`; write the run folder `out`.

    `method` (if given) overrides `config.method`. With `resume=True` the run continues from the latest
    checkpoint in `out`; `config` may then be None (the stored one is used) or must equal the stored one.
    Returns `out`, which is an encoder folder when the run has finished.
    """
    if method is not None and method not in METHODS:
        raise SpeechFTError(f"--method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    if method is not None:
        config = dataclasses.replace(config or TrainConfig(), method=method)
    return run_training(encoder_dir, out, TaskObjective(load_tasks(task_dirs)), config, resume, overwrite, progress)


def run_training(
    encoder_dir,
    out,
    objective,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """The loop itself, for any objective: `TaskObjective` (fine-tuning: task heads on task folders) or
    speechft.pretrain's masked-unit prediction. The objective says what the heads are, where batches come
    from, the loss of a batch, the dev metric and what the finished folder records; everything else -
    methods, schedule, clipping, checkpoints, resume, several processes - is this function's."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from .checkpoint import (
        load_optimizer_state,
        load_tensors,
        optimizer_state,
        rng_state,
        set_rng_state,
        write_checkpoint,
    )
    from .encoders import load_encoder

    out = Path(out)
    # ---- processes: `accelerate launch` sets the environment; a plain run is one process ----------------
    state = PartialState(cpu=not torch.cuda.is_available())
    device, rank, world, main = state.device, state.process_index, state.num_processes, state.is_main_process

    # ---- config, inputs and the run folder -----------------------------------------------------------------
    cfg = objective.resolve(config) if config is not None else None  # None: resume with the stored config
    if cfg is not None:
        check_device(cfg, device)
    encoder_dir = Path(encoder_dir)
    run_info = {
        "encoder": str(encoder_dir.resolve()),
        "encoder_sha256": weights_sha256(encoder_dir),
        "tasks": objective.run_info(),
    }
    ckpt_root = out / "checkpoints"
    cfg, latest = open_run_folder(out, cfg, run_info, resume, overwrite, state, objective)
    if cfg is None:  # --resume of a run that has already finished
        return out
    check_device(cfg, device)

    T, R = cfg.steps, run_steps(cfg)  # T sets the schedule; R updates are made (R < T only for early-stop)
    frozen_steps = fraction_steps(cfg.frozen_fraction, T)
    o = cfg.optim
    if o.encoder_lr > PROBING_LR and main:
        warn(
            f"encoder learning rate {o.encoder_lr:g} looks like a probing LR (> {PROBING_LR:g}); fine-tuning a "
            "pre-trained encoder at it usually destroys it (Speech-FT uses 1e-4)"
        )
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores (as nanoGPT does)
        torch.backends.cudnn.allow_tf32 = True

    try:
        # ---- model: the encoder (theta_0) and one head per task ------------------------------------------
        torch.manual_seed(cfg.seed)  # identical initial heads/adapters in every process
        encoder = load_encoder(encoder_dir)
        encoder.model.float()  # fp32 master weights even when the folder stores fp16/bf16
        freeze_permanently(encoder)  # front end + pre-training-only parameters: frozen for the whole run
        lora = None
        if cfg.method in ("lora", "dora"):
            lora = add_adapters(encoder, cfg.lora, dora=cfg.method == "dora")
        encoder.to(device)
        # What the optimizer updates in the encoder. Fixed for the whole run: the frozen phase does not toggle
        # requires_grad, it runs the encoder under no_grad (see the loop), so the parameter set never changes.
        enc_params = [(n, p) for n, p in encoder.model.named_parameters() if p.requires_grad]
        heads = objective.build_heads(encoder, cfg, out, state, progress).to(device)
        theta0 = [p.detach().clone() for _, p in enc_params] if cfg.method == "l2sp" else None

        # ---- optimizer: Adam without weight decay, one group for the encoder, one for the heads ----------
        # Encoder parameters get no gradient during the frozen phase (grad is None), and Adam skips those: its
        # moments for them start at the first real update, as if the optimizer had been built at the boundary.
        opt = torch.optim.Adam(
            [
                {"params": [p for _, p in enc_params], "base_lr": o.encoder_lr, "name": "encoder"},
                {"params": list(heads.parameters()), "base_lr": o.head_lr, "name": "heads"},
            ],
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=0.0,
        )
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        amp_dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16

        def autocast():  # mixed precision: the forward pass in bf16/fp16, fp32 master weights and optimizer
            return torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.precision != "fp32")

        # ---- data: one endless, resumable batch stream per task --------------------------------------------
        streams = objective.streams(cfg, rank, world, device)
        task_index = {name: i for i, name in enumerate(streams)}
        if world > 1 and cfg.data.batch_size < world:
            raise SpeechFTError(
                f"data.batch_size={cfg.data.batch_size} is smaller than the {world} processes; "
                "it is the global batch, split across them"
            )

        # ---- resume: weights, optimizer, RNG, data position, best-so-far -----------------------------------
        step, best, best_state, best_written, log_rows = 0, None, None, None, []
        if latest is not None:
            meta = read_json(latest / "state.json")
            load_trainable(encoder, enc_params, heads, load_tensors(latest / "model.safetensors"), where=str(latest))
            load_optimizer_state(opt, load_tensors(latest / "optimizer.safetensors"), meta["optimizer"])
            if meta.get("scaler"):
                scaler.load_state_dict(meta["scaler"])
            if len(meta["rng"]) == world:
                rng = load_tensors(latest / "rng.safetensors")
                set_rng_state(
                    {k.split("/", 1)[1]: v for k, v in rng.items() if k.startswith(f"rank{rank}/")}, meta["rng"][rank]
                )
            else:  # resumed on another number of processes: correct, but not bit-identical to the original
                if main:
                    warn(
                        f"resuming a {len(meta['rng'])}-process run on {world} processes: the data order is kept, "
                        "dropout masks are not"
                    )
                torch.manual_seed(cfg.seed + rank + 7919 * meta["step"])
            for name, pos in meta["data"].items():
                streams[name].seek(*pos)
            step, best = meta["step"], meta["best"]
            if best is not None and best.get("dir"):
                best_state = load_tensors(ckpt_root / best["dir"] / "model.safetensors")
                best_written = best["dir"]
            if main:
                log_rows = truncate_metrics(out / "metrics.jsonl", step)
                clean_stale(ckpt_root, latest.name, best_written)
                print(f"resuming {out} from step {step}")
        else:
            torch.manual_seed(cfg.seed + rank)  # dropout differs between processes, as their data does
            if resume and main:  # killed before its first checkpoint: start over in the same folder
                log_rows = truncate_metrics(out / "metrics.jsonl", 0)
                shutil.rmtree(ckpt_root, ignore_errors=True)

        # ---- wrapping for several processes ------------------------------------------------------------------
        # DDP assumes every parameter it wraps gets a gradient in every backward pass. That is false for a
        # frozen encoder and for the head of a task that is not in this step. So each head is wrapped on its
        # own (a step only runs the wrappers of the heads it uses) and the encoder is wrapped only once it
        # trains: during the frozen phase it runs unwrapped under no_grad. find_unused_parameters stays off.
        def ddp(module):
            if world == 1:
                return module
            # Buffers are constants here (no batch norm): no need to re-send them every forward pass.
            DDP = nn.parallel.DistributedDataParallel
            no_buffer_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                else {"broadcast_buffers": False}
            )
            return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)

        head_fwd = {name: ddp(h) for name, h in heads.items()}
        enc_fwd = None  # the wrapped, trainable encoder; None while frozen

        # ---- the loop -------------------------------------------------------------------------------------
        bar = make_progress(R, step, main and progress, objective.kind)
        # Per-task sums of (loss x utterances) and utterances since the last log line, kept on the device so that
        # logging does not force a GPU sync every step.
        window_loss = torch.zeros(2, len(streams), device=device)
        window_time = 0.0
        timing = {"train_seconds": 0.0, "utterances": 0}
        heads.train()
        while step < R:
            t0 = time.perf_counter()
            frozen = step < frozen_steps
            if not frozen and enc_fwd is None:
                # Phase boundary (or a resume after it): the encoder starts training. Every process gets here at
                # the same step, so the DDP construction (a collective) lines up.
                encoder.train()
                enc_fwd = ddp(encoder)
            if frozen:
                encoder.eval()  # a frozen encoder is a fixed feature extractor: no dropout, no gradients

            mult = lr_multiplier(step, T, cfg.schedule.warmup, cfg.schedule.hold_until)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult

            def encode(wavs, lengths, **kw):  # the encoder as this step runs it: frozen = no gradients
                if frozen:
                    with torch.no_grad():
                        return encoder(wavs, lengths, **kw)
                return enc_fwd(wavs, lengths, **kw)

            plan = micro_batches(step, list(streams), cfg.data.multitask, o.grad_accum)
            for i, name in enumerate(plan):
                batch, n_global = next(streams[name])
                n_local = len(batch.targets)
                # Gradients are all-reduced only on each wrapper's last use in this step (no_sync before).
                last_enc, last_head = i == len(plan) - 1, name not in plan[i + 1 :]
                with no_sync(enc_fwd, not last_enc), no_sync(head_fwd[name], not last_head), autocast():
                    loss = objective.loss(encode, head_fwd[name], name, batch)
                    # The objective is the mean over every utterance of the step. DDP averages gradients over
                    # processes, so weight this process's mean by its share of the global batch.
                    scaled = loss * (n_local * world / n_global / len(plan))
                    scaler.scale(scaled).backward()
                window_loss[0, task_index[name]] += loss.detach().float() * n_local
                window_loss[1, task_index[name]] += n_local
                timing["utterances"] += n_global  # all processes together

            scaler.unscale_(opt)  # (no-op unless fp16) so L2-SP and clipping see true gradients
            if theta0 is not None and not frozen and cfg.l2sp_lambda > 0:
                # L2-SP: d/dtheta of lambda/2 ||theta - theta_0||^2 added to the (already averaged) gradient -
                # the same as putting the penalty in the loss, without building it into the autograd graph.
                for (_, p), p0 in zip(enc_params, theta0):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - p0, alpha=cfg.l2sp_lambda)
            if o.clip > 0:
                nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], o.clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            # ---- bookkeeping after update `step`: log, evaluate, checkpoint -----------------------------
            log_now = step % cfg.eval.log_every == 0 or step == R or step == frozen_steps
            if log_now:
                if world > 1:
                    torch.distributed.all_reduce(window_loss)
                sums = window_loss.cpu().tolist()  # waits for the device, so the times below are real
            dt = time.perf_counter() - t0  # training time: evaluation and checkpoints are not counted
            window_time += dt
            timing["train_seconds"] += dt
            if log_now:
                row = {
                    "kind": "train",
                    "step": step,
                    "loss": round(sum(sums[0]) / max(sum(sums[1]), 1), 6),
                    "task_loss": {n: round(sums[0][i] / sums[1][i], 6) for n, i in task_index.items() if sums[1][i]},
                    "lr_encoder": opt.param_groups[0]["lr"],
                    "lr_heads": opt.param_groups[1]["lr"],
                    "encoder_frozen": frozen,
                    "utterances": int(sum(sums[1])),
                    "seconds": round(window_time, 4),
                    "utts_per_s": round(sum(sums[1]) / max(window_time, 1e-9), 2),
                }
                if theta0 is not None:
                    row["l2sp_distance"] = float(
                        sum(((p.detach() - p0) ** 2).sum() for (_, p), p0 in zip(enc_params, theta0)) ** 0.5
                    )
                window_loss.zero_()
                window_time = 0.0
                if main:
                    log_rows.append(row)
                    append_metrics(out / "metrics.jsonl", row)
                    bar.set_postfix(
                        loss=f"{row['loss']:.4f}", lr=f"{row['lr_encoder']:.2e}", frozen="yes" if frozen else "no"
                    )

            if step % cfg.eval.every == 0 or step == R:
                metrics = objective.evaluate(encoder, heads, cfg, autocast, rank, world, device, gather_object)
                encoder.train(not (step < frozen_steps))
                heads.train()
                if main:
                    score = dev_score(metrics)
                    row = {"kind": "dev", "step": step, "score": score, "metrics": metrics}
                    log_rows.append(row)
                    append_metrics(out / "metrics.jsonl", row)
                    # best-on-dev (strictly better; the earliest of equal scores wins). early-stop: the last.
                    if cfg.method == "early-stop" or best is None or score > best["score"]:
                        best = {"step": step, "score": score, "metrics": metrics, "dir": None}
                        best_state = trainable_state(enc_params, heads)
                    bar.write(f"step {step}: dev {format_metrics(metrics)}{'  (best)' if best['step'] == step else ''}")

            if step % cfg.checkpoint.every == 0 and step < R:
                # RNG states differ per process; the main process writes everyone's.
                rngs = gather_object([(rank, *rng_state())]) if world > 1 else [(rank, *rng_state())]
                if main:
                    # A new best has dir None until its weights are on disk (a resumed run needs them).
                    if best is not None and best["dir"] is None:
                        # Best weights live beside the resumable state, written only when a checkpoint needs them.
                        best["dir"] = f"best-{best['step']:07d}"
                        write_best(ckpt_root / best["dir"], best_state)
                        best_written = best["dir"]
                    opt_tensors, opt_meta = optimizer_state(opt)
                    meta = {
                        "step": step,
                        "best": best,
                        "optimizer": opt_meta,
                        "scaler": scaler.state_dict() or None,
                        "data": {n: s.position for n, s in streams.items()},
                        "rng": [m for _, _, m in sorted(rngs, key=lambda r: r[0])],
                    }
                    rng_tensors = {f"rank{r}/{k}": v for r, t, _ in rngs for k, v in t.items()}
                    write_checkpoint(
                        ckpt_root,
                        step,
                        {"model": trainable_state(enc_params, heads), "optimizer": opt_tensors, "rng": rng_tensors},
                        meta,
                        keep_last=cfg.checkpoint.keep_last,
                    )
                    clean_stale(ckpt_root, None, best_written)
                state.wait_for_everyone()
        bar.close()

        # ---- the result: best-on-dev weights (early-stop: the last ones) as an encoder folder --------------
        if main:
            load_trainable(encoder, enc_params, heads, best_state, where="best checkpoint")
            write_result(
                out, encoder, heads, lora, cfg, best, T, R, frozen_steps, run_info, log_rows, timing, objective
            )
            if not cfg.checkpoint.keep_at_end:
                shutil.rmtree(ckpt_root, ignore_errors=True)
                objective.clean_up(out)
            print(
                f"wrote {objective.result_name} encoder ({cfg.method}, best step {best['step']}, dev "
                f"{format_metrics(best['metrics'])}) to {out}"
            )
        state.wait_for_everyone()
        return out
    except SpeechFTError:
        # Bad input found before anything resumable was written (e.g. undecodable audio in the first
        # batches): the folder holds only config.yaml and run.json, so leave nothing behind.
        if (
            main
            and latest is None
            and not (ckpt_root.exists() and any(ckpt_root.iterdir()))
            and not (out / "speechft.json").exists()
        ):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


# =====================================================================================================
# Pieces of the loop
# =====================================================================================================
def check_device(cfg: TrainConfig, device) -> None:
    if cfg.precision == "fp16" and device.type != "cuda":
        raise SpeechFTError("precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU")


def load_tasks(task_dirs) -> list:
    from .data import load_task

    tasks = [load_task(t) for t in task_dirs]
    if not tasks:
        raise SpeechFTError("no task given: pass at least one --task TASKDIR")
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


def open_run_folder(
    out: Path, cfg: TrainConfig | None, run_info: dict, resume: bool, overwrite: bool, state, objective=None
):
    """Create the run folder (or check the one being resumed). Returns (config to use, latest checkpoint
    folder or None); (None, None) when resuming a run that has already finished. `objective` supplies the
    config class, its resolver and the name of the data option (fine-tuning's when None)."""
    from .checkpoint import latest_checkpoint

    main = state.is_main_process
    config_class = objective.config_class if objective is not None else TrainConfig
    resolve = objective.resolve if objective is not None else resolve_config
    data_option = objective.data_option if objective is not None else "--task"
    if resume:
        if (out / "speechft.json").exists():
            if main:
                print(f"{out}: already finished; nothing to resume")
            return None, None
        if not (out / "config.yaml").exists():
            raise SpeechFTError(f"{out}: no run to resume here (no config.yaml); start it without --resume")
        stored = resolve(load_config(config_class, out / "config.yaml"))
        if cfg is not None and to_dict(cfg) != to_dict(stored):
            key, was, now = first_difference(to_dict(stored), to_dict(cfg))
            raise SpeechFTError(
                f"--resume: {key} is {now!r} here but {was!r} in {out / 'config.yaml'}; resume with "
                "the same options (or none) or start a new run"
            )
        started = read_json(out / "run.json")
        if started["encoder_sha256"] != run_info["encoder_sha256"]:
            raise SpeechFTError(
                f"--resume: the encoder weights differ from those {out} was started with "
                f"({started['encoder']}); pass the same --encoder"
            )
        manifests = lambda info: {k: (v["train_sha256"], v["dev_sha256"]) for k, v in info["tasks"].items()}  # noqa
        if manifests(started) != manifests(run_info):
            raise SpeechFTError(
                f"--resume: the task manifests differ from those {out} was started with "
                f"({', '.join(v['path'] for v in started['tasks'].values())}); pass the same "
                f"{data_option}"
            )
        return stored, latest_checkpoint(out / "checkpoints")

    cfg = cfg or resolve(config_class())
    if out.exists():
        if not overwrite:
            raise SpeechFTError(
                f"{out}: output folder already exists; choose another --out, or pass --resume to "
                "continue that run or --overwrite to replace it"
            )
        if any(out.iterdir()) and not any((out / f).exists() for f in ("config.yaml", "run.json", "speechft.json")):
            raise SpeechFTError(f"{out}: exists and is not a speechft run folder; refusing to --overwrite it")
    state.wait_for_everyone()  # every process has looked before the main one deletes or creates
    if main:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        # run.json first: config.yaml is what marks a run as resumable, so it must come last.
        write_json(out / "run.json", run_info)
        save_config(cfg, out / "config.yaml")
    state.wait_for_everyone()
    return cfg, None


class TaskObjective:
    """What fine-tuning optimises: one head per task folder (heads.TaskHead), its loss, its dev metric.

    `run_training` asks an objective only the questions below; speechft.pretrain.UnitObjective answers
    them for masked-unit prediction on unlabelled audio.
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

    def build_heads(self, encoder, cfg: TrainConfig, out: Path, state, progress: bool) -> nn.ModuleDict:
        from .heads import ctc_min_frames

        for t in self.tasks:  # a ctc task none of whose clips has enough frames would only ever skip batches
            if t.type != "ctc":
                continue
            examples = t.split("train")
            samples = torch.tensor([int(ex.duration * 16000) for ex in examples], dtype=torch.long)
            frames = encoder.frame_lengths(samples).tolist()
            if not any(n >= ctc_min_frames(t.encode(ex.target)) for n, ex in zip(frames, examples)):
                ex = examples[0]
                raise SpeechFTError(
                    f"{t.root}/train.tsv: no clip has enough {encoder.family} frames for its transcript "
                    f"(e.g. '{ex.id}': {frames[0]} frames, needs {ctc_min_frames(t.encode(ex.target))}"
                    " for CTC); use longer clips, shorter transcripts or an encoder with more frames "
                    "per second"
                )
        self.heads = nn.ModuleDict(
            {t.name: TaskHead.for_task(t, encoder.hidden_size, encoder.num_layers + 1, cfg.head) for t in self.tasks}
        )
        return self.heads

    def streams(self, cfg: TrainConfig, rank: int, world: int, device) -> dict:
        return {t.name: TaskStream(t, cfg.data, cfg.seed + i, rank, world, device) for i, t in enumerate(self.tasks)}

    def loss(self, encode, head, name: str, batch) -> torch.Tensor:
        """`encode(wavs, lengths, **kw)` runs the encoder as the step needs it; `head` is the (wrapped) head."""
        enc_out = encode(batch.wavs, batch.lengths)
        logits = head(enc_out.hidden_states, enc_out.frame_lengths)
        return self.heads[name].loss(logits, enc_out.frame_lengths, batch.targets)

    def evaluate(self, encoder, heads, cfg: TrainConfig, autocast, rank, world, device, gather_object) -> dict:
        return evaluate(encoder, heads, self.tasks, cfg.data, autocast, rank, world, device, gather_object)

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
    (seed, epoch), so a checkpoint's (epoch, batch) position replays the rest exactly. With N processes
    each global batch is dealt out item by item: process r gets items r, r+N, ... Yields
    (batch on the device, size of the global batch).
    """

    def __init__(self, task, data_cfg: DataConfig, seed: int, rank: int, world: int, device):
        from .data.batching import BucketBatchSampler
        from .data.dataset import SplitDataset

        self.task, self.cfg, self.rank, self.world, self.device = task, data_cfg, rank, world, device
        # Classification clips and unlabelled audio (speechft.pretrain) are cropped; CTC clips cannot be.
        self.dataset = SplitDataset(task, "train", data_cfg.max_seconds if task.type != "ctc" else None)
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
        if self.world > 1:  # every process needs at least one item of every batch
            plan = [b for b in plan if len(b) >= self.world]
        if not plan:
            raise SpeechFTError(f"{self.task.root}/train.tsv: too few examples for a batch on {self.world} processes")
        plan = plan[self.index :]
        loader = split_loader(
            self.dataset,
            [b[self.rank :: self.world] for b in plan],
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch, full in zip(loader, plan):
            yield batch, len(full)

    def __next__(self):
        while True:
            if self._it is None:
                self._it = self._epoch()
            try:
                batch, n = next(self._it)
            except StopIteration:
                self.epoch, self.index, self._it = self.epoch + 1, 0, None
                continue
            self.index += 1
            batch.wavs = batch.wavs.to(self.device, non_blocking=True)
            batch.lengths = batch.lengths.to(self.device, non_blocking=True)
            return batch, n


def micro_batches(step: int, names: list[str], multitask: str, grad_accum: int) -> list[str]:
    """Which task each micro-batch of update `step` comes from.

    interleave: all micro-batches of a step from one task, tasks in turn (round-robin over steps).
    mixed: every task in every step, one micro-batch each per accumulation round; losses averaged.
    """
    if multitask == "interleave" or len(names) == 1:
        return [names[step % len(names)]] * grad_accum
    return [n for _ in range(grad_accum) for n in names]


def no_sync(module, skip: bool):
    if skip and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(encoder, heads, tasks, data_cfg: DataConfig, autocast, rank, world, device, gather_object) -> dict:
    """Dev metric per task by greedy decoding: {task: {"metric": name, "value": v}}. Processes split the
    dev batches and the main process scores the gathered predictions."""
    from .data.batching import BucketBatchSampler
    from .data.dataset import SplitDataset, split_loader
    from .metrics import compute_metric

    encoder.eval()
    heads.eval()
    results = {}
    for task in tasks:
        ds = SplitDataset(task, "dev")
        batches = BucketBatchSampler(ds.durations, batch_size=data_cfg.eval_batch_size, shuffle=False).batches()
        loader = split_loader(ds, batches[rank::world], num_workers=data_cfg.num_workers)
        pairs = []
        for batch in loader:
            with autocast():
                enc_out = encoder(batch.wavs.to(device), batch.lengths.to(device))
                logits = heads[task.name](enc_out.hidden_states, enc_out.frame_lengths)
            pairs += zip(batch.indices, heads[task.name].predict(logits.float(), enc_out.frame_lengths))
        if world > 1:
            pairs = gather_object(pairs)
        pairs.sort(key=lambda p: p[0])
        refs = [ds.examples[i].target for i, _ in pairs]
        value = compute_metric(task.metric, refs, [h for _, h in pairs], labels=task.labels)
        results[task.name] = {"metric": task.metric, "value": round(float(value), 6)}
    return results


def dev_score(metrics: dict) -> float:
    """One number to pick the best checkpoint, higher = better: the mean over tasks of accuracy / F1, or of
    1 - error rate (PER/CER/WER). With one task it orders checkpoints exactly as its own metric does."""
    from .metrics import LOWER_IS_BETTER

    vals = [1.0 - m["value"] if m["metric"] in LOWER_IS_BETTER else m["value"] for m in metrics.values()]
    return round(sum(vals) / len(vals), 6)


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{name} {m['metric']} {m['value']:.4f}" for name, m in metrics.items())


# ---- parameters ----------------------------------------------------------------------------------------
def freeze_permanently(encoder) -> None:
    """The waveform front end and the pre-training-only parameters never train (Speech-FT keeps the conv
    feature extractor frozen for the whole run); nor do a family's constants (`Encoder.fixed_patterns`)."""
    for name, p in encoder.model.named_parameters():
        if encoder.is_frontend(name) or encoder.is_pretraining_only(name) or encoder.is_fixed(name):
            p.requires_grad_(False)
    # transformers' wav2vec2-style feature encoders set requires_grad on their own output in training mode
    # unless told otherwise, which would backpropagate through the whole frozen conv stack for nothing.
    for module in encoder.model.modules():
        if hasattr(module, "_requires_grad") and not any(p.requires_grad for p in module.parameters()):
            module._requires_grad = False


def add_adapters(encoder, settings: LoraSettings, dora: bool):
    """Inject LoRA/DoRA adapters (peft) into the encoder's linears, in place; the base weights are frozen."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    lora_cfg = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        use_dora=dora,
        bias="none",
    )
    try:
        return LoraModel(encoder.model, lora_cfg, "default")  # modifies encoder.model in place
    except ValueError as e:
        raise SpeechFTError(f"lora.targets={list(settings.targets)}: {str(e).splitlines()[0][:200]}") from None


def trainable_state(enc_params, heads) -> dict[str, torch.Tensor]:
    """CPU copies of what training changes: the trainable encoder parameters and the heads."""
    snap = {f"encoder.{n}": p.detach().to("cpu", copy=True) for n, p in enc_params}
    for name, head in heads.items():
        snap.update({f"head.{name}.{k}": v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()})
    return snap


def load_trainable(encoder, enc_params, heads, tensors: dict, where: str) -> None:
    params = dict(enc_params)
    want = {f"encoder.{n}" for n in params} | {f"head.{t}.{k}" for t, h in heads.items() for k in h.state_dict()}
    if set(tensors) != want:
        odd = sorted(set(tensors) ^ want)
        raise SpeechFTError(
            f"{where}: does not match this run's model (first mismatched key {odd[0]!r}); it was "
            "written by a different encoder, task or method"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"encoder.{n}"])
    for t, h in heads.items():
        h.load_state_dict({k[len(f"head.{t}.") :]: v for k, v in tensors.items() if k.startswith(f"head.{t}.")})


# ---- files -------------------------------------------------------------------------------------------
def weights_sha256(encoder_dir: Path) -> dict[str, str]:
    files = sorted(encoder_dir.glob("*.safetensors")) if encoder_dir.is_dir() else []
    if not files:
        raise SpeechFTError(
            f"{encoder_dir}: no model.safetensors; pass an encoder folder (see `speechft encoder default|tiny|convert`)"
        )
    return {f.name: sha256_file(f) for f in files}


def write_best(folder: Path, tensors: dict) -> None:
    from .checkpoint import save_tensors
    from .io_utils import atomic_dir

    with atomic_dir(folder, overwrite=True) as tmp:
        save_tensors(tmp / "model.safetensors", tensors)


def clean_stale(root: Path, keep_step: str | None, keep_best: str | None) -> None:
    """Remove best-* folders other than the current one and, on resume, step folders newer than the one
    resumed from (left by a run killed between writing a folder and pointing latest.json at it)."""
    if not root.exists():
        return
    for p in root.iterdir():
        if p.name.startswith("best-") and p.name != keep_best:
            shutil.rmtree(p, ignore_errors=True)
        elif keep_step and p.name.startswith("step-") and p.name > keep_step:
            shutil.rmtree(p, ignore_errors=True)


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the metrics rows up to `step` (a killed run may have logged beyond its last checkpoint)."""
    from .io_utils import atomic_file

    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the kill
            if row.get("step", 0) <= step:
                rows.append(row)
    with atomic_file(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def write_result(
    out: Path,
    encoder,
    heads,
    lora,
    cfg: TrainConfig,
    best: dict,
    T: int,
    R: int,
    frozen_steps: int,
    run_info: dict,
    log_rows: list[dict],
    timing: dict,
    objective=None,
) -> None:
    """Turn the run folder into an encoder folder. speechft.json is written last: it marks a finished run.
    The objective (fine-tuning's when None) saves what it keeps of its heads and adds its provenance."""
    from .checkpoint import save_tensors

    if lora is not None:
        # Keep the adapters themselves (small) for provenance, then fold them into the base weights.
        adapter = out / "adapter"
        adapter.mkdir(exist_ok=True)
        save_tensors(
            adapter / "adapter.safetensors", {n: p for n, p in encoder.model.named_parameters() if "lora_" in n}
        )
        write_json(adapter / "adapter.json", {**to_dict(cfg.lora), "use_dora": cfg.method == "dora"})
        lora.merge_and_unload()
    objective = objective or TaskObjective([])
    objective.save_heads(out, heads)
    plot_curves(out / "curves.png", log_rows, frozen_steps, best["step"], cfg.method)
    parent = lineage_entry(
        "pretrained", run_info["encoder"], encoder.family, encoder.provenance, run_info["encoder_sha256"]
    )
    encoder.provenance = inherited(encoder.provenance)
    provenance = {
        "source": "speechft finetune",
        "method": cfg.method,
        "steps": T,
        "steps_run": R,
        "frozen_steps": frozen_steps,
        "best_step": best["step"],
        "dev_score": best["score"],
        "dev_metrics": best["metrics"],
        "parents": [parent],
        "timing": {"train_seconds": round(timing["train_seconds"], 3), "utterances": timing["utterances"]},
        "config": to_dict(cfg),
        **objective.provenance(heads),
    }
    tmp = out / ".encoder.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save(tmp, provenance=provenance, overwrite=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == PROVENANCE_FILE):
        os.replace(f, out / f.name)
    tmp.rmdir()


def plot_curves(path: Path, rows: list[dict], frozen_steps: int, best_step: int, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["kind"] == "train"]
    dev = [r for r in rows if r["kind"] == "dev"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in dict.fromkeys(n for r in train for n in r.get("task_loss", {})):
        pts = [(r["step"], r["task_loss"][name]) for r in train if name in r.get("task_loss", {})]
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax1.legend(fontsize=8)
    ax1.set(xlabel="step", ylabel="training loss", title=f"{method}: loss")
    for name in dev[0]["metrics"] if dev else {}:
        ax2.plot(
            [r["step"] for r in dev],
            [r["metrics"][name]["value"] for r in dev],
            marker="o",
            ms=3,
            label=f"{name} ({dev[0]['metrics'][name]['metric']})",
        )
    ax2.set(xlabel="step", ylabel="dev metric", title="dev metric")
    for ax in (ax1, ax2):
        if frozen_steps:
            ax.axvline(frozen_steps, color="grey", ls=":", lw=1, label="encoder unfrozen" if ax is ax2 else None)
        ax.grid(alpha=0.3)
    ax2.axvline(best_step, color="C3", ls="--", lw=1, label="result")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    from .io_utils import atomic_file

    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def make_progress(total: int, initial: int, enabled: bool, desc: str = "finetune"):
    from tqdm.auto import tqdm

    # Only the main process draws a bar (and none with progress=False); elsewhere tqdm's own settings apply
    # (TQDM_DISABLE=1 turns it off).
    extra = {} if enabled else {"disable": True}
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, **extra)


def warn(message: str) -> None:
    print(f"speechft: warning: {message}", file=sys.stderr)


def first_difference(a: dict, b: dict, prefix: str = "") -> tuple | None:
    """(dotted key, value in a, value in b) of the first differing config value, or None."""
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            d = first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        elif a.get(k) != b.get(k):
            return f"{prefix}{k}", a.get(k), b.get(k)
    return None


# =====================================================================================================
# Command line: speechft finetune
# =====================================================================================================
def add_arguments(p) -> None:
    p.add_argument("--encoder", required=True, metavar="DIR", help="pre-trained encoder folder")
    p.add_argument(
        "--task",
        required=True,
        action="append",
        metavar="TASKDIR",
        help="task folder; repeat for joint multi-task fine-tuning (one head per task)",
    )
    p.add_argument("--method", metavar="NAME", help=f"{' | '.join(METHODS)} (default: the config's, stable)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder; an encoder folder when finished")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer updates (overrides the config's steps)")
    p.add_argument("--config", metavar="YAML", help="a recipe: TrainConfig keys (see speechft/train.py)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set optim.lr=5e-5 --set head.layers=weighted",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def main(args) -> int:
    if args.resume and args.overwrite:
        raise SpeechFTError("--resume and --overwrite contradict each other; pass one")
    if args.method is not None and args.method not in METHODS:
        raise SpeechFTError(f"--method {args.method!r}: unknown; choose one of {', '.join(METHODS)}")
    overrides = list(args.set) + ([f"steps={args.steps}"] if args.steps is not None else [])
    given = args.config is not None or overrides or args.method is not None
    config = None
    if given or not args.resume:
        config = load_config(TrainConfig, args.config, overrides)
        if args.method is not None:
            config = apply_overrides(config, [f"method={args.method}"])
    finetune(args.encoder, args.task, args.out, config=config, resume=args.resume, overwrite=args.overwrite)
    return 0
