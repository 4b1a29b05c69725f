"""The training loop shared by fine-tuning (speechft.train) and continued pre-training (speechft.pretrain).

`run_training` reads as the outline of the method: start the processes, open the run folder, build the model
and the optimizer, resume (or start), then `training_loop`: one `train_step` per update and, after it, the
bookkeeping (`log_train`, `evaluate_dev`, `save_checkpoint`); `finish` turns the best-on-dev weights into an
encoder folder. What is optimised is the objective's business (the `Objective` protocol of speechft.objective);
methods, schedule, clipping, checkpoints, resume and several processes are this module's; the run folder's
files are speechft.run_folder's.

The encoder is in training mode for the whole loop. A frozen phase (`frozen_fraction`) only withholds gradients:
the encoder runs under no_grad, with its dropout, as s3prl runs a trainable upstream, so the encoder's weights
leave the phase bit-identical; only dev evaluation switches to eval mode.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoders.hub import resolve_encoder
from .errors import SpeechFTError
from .io_utils import check_output_location, read_json
from .objective import Loop, Objective
from .provenance import PROVENANCE_FILE
from .run_folder import (
    append_metrics,
    clean_stale,
    open_run_folder,
    replacement,
    truncate_metrics,
    weights_sha256,
    write_best,
    write_result,
)
from .schedule import fraction_steps, lr_multiplier
from .tracking import Tracking, check_trackers, open_tracking
from .train_config import PROBING_LR, TrainConfig, run_steps
from .trainable import add_adapters, freeze_permanently, load_trainable, trainable_state


@dataclass
class Run:
    """The state of one run between its steps (what a checkpoint saves, and what it is computed from)."""

    cfg: TrainConfig
    encoder: Any
    heads: nn.ModuleDict
    lora: Any  # peft's LoraModel (lora/dora), else None
    enc_params: list  # (name, parameter) the optimizer updates in the encoder; fixed for the whole run
    theta0: list | None  # l2sp: the initial values of enc_params
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    streams: dict
    step: int = 0
    best: dict | None = None  # {"step", "score", "metrics", "dir"}: dir is None until its weights are on disk
    best_state: dict | None = None
    best_written: str | None = None
    log_rows: list = field(default_factory=list)
    head_fwd: dict = field(default_factory=dict)  # the heads as the step runs them (DDP-wrapped with 2+ processes)
    enc_fwd: Any = None  # the wrapped, trainable encoder; None while frozen
    timing: dict = field(default_factory=lambda: {"train_seconds": 0.0, "utterances": 0})
    tracking: Tracking = field(default_factory=Tracking)  # --log-with: the trackers that get metrics.jsonl's rows

    @property
    def run_steps(self) -> int:  # R: updates made; cfg.steps (T) sets the schedule, R < T only for early-stop
        return run_steps(self.cfg)

    @property
    def frozen_steps(self) -> int:
        return fraction_steps(self.cfg.frozen_fraction, self.cfg.steps)


# =====================================================================================================
# The outline
# =====================================================================================================
def run_training(
    encoder_dir,
    out,
    objective: Objective,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """Train `objective` on the encoder in `encoder_dir`; write the run folder `out` (an encoder folder when
    finished). `config` None means: resume with the stored one. `device` (cpu, cuda, cuda:N; None = cuda when
    available) is honoured by a plain run; under `accelerate launch` the launcher assigns the devices."""
    out, encoder_dir = Path(out), resolve_encoder(encoder_dir)  # a Hub id: its converted folder
    state, device = start_processes(device)
    cfg = objective.resolve(config) if config is not None else None  # None: resume with the stored config
    if cfg is not None:  # checked again on the stored config of a --resume (in _train)
        check_device(cfg, device)
        check_trackers(cfg.log_with)
    run_info = {
        "encoder": str(encoder_dir.resolve()),
        "encoder_sha256": weights_sha256(encoder_dir),
        "tasks": objective.run_info(),
    }
    main = state.is_main_process
    data = [Path(info["path"]) for info in run_info["tasks"].values()]
    check_output_location(out, {"--encoder": encoder_dir, objective.data_option: data})
    cfg, latest = open_run_folder(out, cfg, run_info, resume, overwrite, main, state.wait_for_everyone, objective)
    if cfg is None:  # --resume of a run that has already finished
        return out
    with replacement(out, main, active=overwrite and not resume):
        return _train(encoder_dir, out, objective, cfg, latest, state, device, run_info, resume, progress)


def _train(encoder_dir, out, objective, cfg, latest, state, device, run_info, resume, progress) -> Path:
    """run_training once the run folder is open: the loop and the result."""
    main = state.is_main_process
    check_device(cfg, device)
    check_trackers(cfg.log_with)
    loop = make_loop(state, device, cfg)
    if cfg.optim.encoder_lr > PROBING_LR and main:
        warn(
            f"encoder learning rate {cfg.optim.encoder_lr:g} looks like a probing LR (> {PROBING_LR:g}); "
            "fine-tuning a pre-trained encoder at it usually destroys it (Speech-FT uses 1e-4)"
        )
    with numerics(cfg, device), removed_on_bad_input(out, latest, main):
        run = build_run(encoder_dir, objective, cfg, out, loop, progress)
        if latest is not None:
            resume_run(run, latest, out, loop)
        else:
            start_run(run, out, resume, loop)
        run.head_fwd = {name: ddp(h, loop) for name, h in run.heads.items()}
        run.tracking = open_tracking(out, cfg, main, device.type != "cuda", run.step if resume else None)
        try:
            training_loop(run, out, objective, loop, progress)
            if main:
                finish(run, out, objective, run_info)
        finally:
            run.tracking.close()  # flushed and closed, also when the run fails
        loop.barrier()
    return out


# =====================================================================================================
# Before the loop
# =====================================================================================================
def start_processes(name: str | None):
    """accelerate's process state and the device of this process. `accelerate launch` sets the environment
    (and then its device assignment wins); a plain run is one process on `name` (config.resolve_device)."""
    from accelerate import PartialState

    from .config import resolve_device

    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
    if launched:
        state = PartialState(cpu=not torch.cuda.is_available())
        if name is not None and state.is_main_process:
            warn(f"--device {name} is ignored under accelerate launch: the launcher assigns each process its device")
        return state, state.device
    device = resolve_device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # what allocates on "cuda" without an index lands on the device asked for
    return PartialState(cpu=device.type != "cuda"), device


def make_loop(state, device: torch.device, cfg: TrainConfig) -> Loop:
    from accelerate.utils import gather_object

    amp_dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16

    def autocast():  # mixed precision: the forward pass in bf16/fp16, fp32 master weights and optimizer
        return torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.precision != "fp32")

    return Loop(device, state.process_index, state.num_processes, autocast, gather_object, state.wait_for_everyone)


def check_device(cfg: TrainConfig, device) -> None:
    if cfg.precision == "fp16" and device.type != "cuda":
        raise SpeechFTError("precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU")


@contextlib.contextmanager
def numerics(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms when asked (restored afterwards: the library may be called again); TF32."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores (as nanoGPT does)
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextlib.contextmanager
def removed_on_bad_input(out: Path, latest: Path | None, main: bool) -> Iterator[None]:
    """Bad input found before anything resumable was written (e.g. undecodable audio in the first batches):
    the folder holds only config.yaml and run.json, so leave nothing behind."""
    try:
        yield
    except SpeechFTError:
        ckpt_root = out / "checkpoints"
        if (
            main
            and latest is None
            and not (ckpt_root.exists() and any(ckpt_root.iterdir()))
            and not (out / PROVENANCE_FILE).exists()
        ):
            shutil.rmtree(out, ignore_errors=True)
        raise


def build_run(encoder_dir: Path, objective: Objective, cfg: TrainConfig, out: Path, loop: Loop, progress: bool) -> Run:
    """The encoder (theta_0), the heads, the optimizer and the batch streams."""
    from .encoders import load_encoder

    torch.manual_seed(cfg.seed)  # identical initial heads/adapters in every process
    encoder = load_encoder(encoder_dir)
    encoder.model.float()  # fp32 master weights even when the folder stores fp16/bf16
    freeze_permanently(encoder)  # front end + pre-training-only parameters: frozen for the whole run
    lora = add_adapters(encoder, cfg.lora, dora=cfg.method == "dora") if cfg.method in ("lora", "dora") else None
    encoder.to(loop.device)
    # Fixed for the whole run: the frozen phase does not toggle requires_grad, it runs the encoder under
    # no_grad (see train_step), so the parameter set never changes.
    enc_params = [(n, p) for n, p in encoder.model.named_parameters() if p.requires_grad]
    heads = objective.build_heads(encoder, cfg, out, loop, progress).to(loop.device)
    theta0 = [p.detach().clone() for _, p in enc_params] if cfg.method == "l2sp" else None
    # Adam without weight decay, one group for the encoder, one for the heads. Encoder parameters get no
    # gradient during the frozen phase (grad is None), and Adam skips those: its moments for them start at the
    # first real update, as if the optimizer had been built at the boundary.
    o = cfg.optim
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
    scaler = torch.amp.GradScaler(loop.device.type, enabled=cfg.precision == "fp16")
    streams = objective.streams(cfg, loop)
    if loop.world > 1 and cfg.data.batch_size < loop.world:
        raise SpeechFTError(
            f"data.batch_size={cfg.data.batch_size} is smaller than the {loop.world} processes; "
            f"it is the global batch, split across them: run on at most {cfg.data.batch_size} processes"
        )
    return Run(cfg, encoder, heads, lora, enc_params, theta0, opt, scaler, streams)


def resume_run(run: Run, latest: Path, out: Path, loop: Loop) -> None:
    """Weights, optimizer, RNG, data position and best-so-far from the checkpoint `latest`."""
    from .checkpoint import load_optimizer_state, load_tensors, set_rng_state  # its one-line errors name the checkpoint

    ckpt_root = out / "checkpoints"
    meta = read_json(latest / "state.json")
    load_trainable(run.enc_params, run.heads, load_tensors(latest / "model.safetensors"), where=str(latest))
    load_optimizer_state(run.opt, load_tensors(latest / "optimizer.safetensors"), meta["optimizer"])
    if meta.get("scaler"):
        run.scaler.load_state_dict(meta["scaler"])
    if len(meta["rng"]) == loop.world:
        rng = load_tensors(latest / "rng.safetensors")
        mine = f"rank{loop.rank}/"
        set_rng_state({k.split("/", 1)[1]: v for k, v in rng.items() if k.startswith(mine)}, meta["rng"][loop.rank])
    else:  # resumed on another number of processes: correct, but not bit-identical to the original
        if loop.main:
            warn(resumed_elsewhere(run.cfg, len(meta["rng"]), loop.world, len(run.streams)))
        torch.manual_seed(run.cfg.seed + loop.rank + 7919 * meta["step"])
    for name, pos in meta["data"].items():
        run.streams[name].seek(*pos)
    run.step, run.best = meta["step"], meta["best"]
    if run.best is not None and run.best.get("dir"):
        run.best_state = load_tensors(ckpt_root / run.best["dir"] / "model.safetensors")
        run.best_written = run.best["dir"]
    if loop.main:
        run.log_rows = truncate_metrics(out / "metrics.jsonl", run.step)
        clean_stale(ckpt_root, latest.name, run.best_written)
        print(f"resuming {out} from step {run.step}")


def resumed_elsewhere(cfg: TrainConfig, before: int, now: int, tasks: int) -> str:
    """The one line a resume on another number of processes prints. data.batch_size is the global batch, dealt
    out over the processes, so the effective batch (and the step count) does not depend on how many there are:
    only each process's share of a micro-batch changes (build_run refuses more processes than utterances)."""
    b, g = cfg.data.batch_size, cfg.optim.grad_accum
    per_update = b * g * (tasks if cfg.data.multitask == "mixed" else 1)
    return (
        f"resuming a {before}-process run on {now} process{'es' if now > 1 else ''}: the effective batch is "
        f"unchanged (data.batch_size={b} is the global batch, now up to {-(-b // now)} per process instead of "
        f"{-(-b // before)}; x optim.grad_accum={g}: {per_update} utterances per update), so is the data order; "
        "dropout masks are not bit-identical"
    )


def start_run(run: Run, out: Path, resume: bool, loop: Loop) -> None:
    torch.manual_seed(run.cfg.seed + loop.rank)  # dropout differs between processes, as their data does
    if resume and loop.main:  # killed before its first checkpoint: start over in the same folder
        run.log_rows = truncate_metrics(out / "metrics.jsonl", 0)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)


def ddp(module: nn.Module, loop: Loop) -> nn.Module:
    """DDP assumes every parameter it wraps gets a gradient in every backward pass. That is false for a frozen
    encoder and for the head of a task that is not in this step. So each head is wrapped on its own (a step
    only runs the wrappers of the heads it uses) and the encoder is wrapped only once it trains: during the
    frozen phase it runs unwrapped under no_grad. find_unused_parameters stays off."""
    if loop.world == 1:
        return module
    # Buffers are constants here (no batch norm): no need to re-send them every forward pass.
    DDP = nn.parallel.DistributedDataParallel
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return DDP(module, device_ids=[loop.device.index] if loop.device.type == "cuda" else None, **no_buffer_sync)


# =====================================================================================================
# The loop
# =====================================================================================================
def training_loop(run: Run, out: Path, objective: Objective, loop: Loop, progress: bool) -> None:
    cfg, R = run.cfg, run.run_steps
    bar = make_progress(R, run.step, loop.main and progress, objective.kind)
    meter = LossMeter(list(run.streams), loop.device)
    run.heads.train()
    # Training mode from the first step, frozen phase included (dropout on; no gradients there, see train_step):
    # as s3prl keeps a trainable upstream in train mode throughout, so the head learns on the features it
    # will see once the encoder trains. Without dropout both modes compute the same (base.py: no masking).
    run.encoder.train()
    while run.step < R:
        t0 = time.perf_counter()
        frozen = run.step < run.frozen_steps
        if not frozen and run.enc_fwd is None:
            # Phase boundary (or a resume after it): the encoder starts training. Every process gets here at
            # the same step, so the DDP construction (a collective) lines up.
            run.enc_fwd = ddp(run.encoder, loop)
        train_step(run, objective, frozen, meter, loop)
        run.step += 1
        bar.update(1)

        # ---- bookkeeping after update `step`: log, evaluate, checkpoint ---------------------------------
        log_now = run.step % cfg.eval.log_every == 0 or run.step == R or run.step == run.frozen_steps
        sums = meter.reduce(loop) if log_now else None  # waits for the device, so the times below are real
        dt = time.perf_counter() - t0  # training time: evaluation and checkpoints are not counted
        meter.seconds += dt
        run.timing["train_seconds"] += dt
        if log_now:
            log_train(run, out, sums, frozen, meter, bar, loop)
        if run.step % cfg.eval.every == 0 or run.step == R:
            evaluate_dev(run, out, objective, bar, loop)
        if run.step % cfg.checkpoint.every == 0 and run.step < R:
            save_checkpoint(run, out, loop)
    bar.close()


def train_step(run: Run, objective: Objective, frozen: bool, meter: LossMeter, loop: Loop) -> None:
    """One optimizer update: the schedule's LR, grad_accum micro-batches, L2-SP, clipping, the step."""
    cfg, o = run.cfg, run.cfg.optim
    mult = lr_multiplier(run.step, run.cfg.steps, cfg.schedule.warmup, cfg.schedule.hold_until)
    for group in run.opt.param_groups:
        group["lr"] = group["base_lr"] * mult

    def encode(wavs, lengths, **kw):  # the encoder as this step runs it: frozen = no gradients
        if frozen:
            with torch.no_grad():
                return run.encoder(wavs, lengths, **kw)
        return run.enc_fwd(wavs, lengths, **kw)

    plan = micro_batches(run.step, list(run.streams), cfg.data.multitask, o.grad_accum)
    for i, name in enumerate(plan):
        batch, n_global = next(run.streams[name])
        n_local = len(batch.targets)
        # Gradients are all-reduced only on each wrapper's last use in this step (no_sync before).
        last_enc, last_head = i == len(plan) - 1, name not in plan[i + 1 :]
        with no_sync(run.enc_fwd, not last_enc), no_sync(run.head_fwd[name], not last_head), loop.autocast():
            loss = objective.loss(encode, run.head_fwd[name], name, batch)
            # The objective is the mean over every utterance of the step. DDP averages gradients over
            # processes, so weight this process's mean by its share of the global batch.
            scaled = loss * (n_local * loop.world / n_global / len(plan))
            run.scaler.scale(scaled).backward()
        meter.add(name, loss, n_local)
        run.timing["utterances"] += n_global  # all processes together

    run.scaler.unscale_(run.opt)  # (no-op unless fp16) so L2-SP and clipping see true gradients
    if run.theta0 is not None and not frozen and cfg.l2sp_lambda > 0:
        # L2-SP: d/dtheta of lambda/2 ||theta - theta_0||^2 added to the (already averaged) gradient - the
        # same as putting the penalty in the loss, without building it into the autograd graph.
        for (_, p), p0 in zip(run.enc_params, run.theta0):
            if p.grad is not None:
                p.grad.add_(p.detach() - p0, alpha=cfg.l2sp_lambda)
    if o.clip > 0:
        nn.utils.clip_grad_norm_([p for g in run.opt.param_groups for p in g["params"]], o.clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)


class LossMeter:
    """Per-task sums of (loss x utterances) and utterances since the last log line, kept on the device so that
    logging does not force a GPU sync every step; `seconds` is the training time of the same window."""

    def __init__(self, names: list[str], device):
        self.index = {name: i for i, name in enumerate(names)}
        self.sums = torch.zeros(2, len(names), device=device)
        self.seconds = 0.0

    def add(self, name: str, loss: torch.Tensor, utterances: int) -> None:
        self.sums[0, self.index[name]] += loss.detach().float() * utterances
        self.sums[1, self.index[name]] += utterances

    def reduce(self, loop: Loop) -> list[list[float]]:
        if loop.world > 1:
            torch.distributed.all_reduce(self.sums)
        return self.sums.cpu().tolist()

    def reset(self) -> None:
        self.sums.zero_()
        self.seconds = 0.0


def log_train(run: Run, out: Path, sums: list, frozen: bool, meter: LossMeter, bar, loop: Loop) -> None:
    utterances = sum(sums[1])
    row = {
        "kind": "train",
        "step": run.step,
        "loss": round(sum(sums[0]) / max(utterances, 1), 6),
        "task_loss": {n: round(sums[0][i] / sums[1][i], 6) for n, i in meter.index.items() if sums[1][i]},
        "lr_encoder": run.opt.param_groups[0]["lr"],
        "lr_heads": run.opt.param_groups[1]["lr"],
        "encoder_frozen": frozen,
        "utterances": int(utterances),
        "seconds": round(meter.seconds, 4),
        "utts_per_s": round(utterances / max(meter.seconds, 1e-9), 2),
    }
    if run.theta0 is not None:
        row["l2sp_distance"] = float(
            sum(((p.detach() - p0) ** 2).sum() for (_, p), p0 in zip(run.enc_params, run.theta0)) ** 0.5
        )
    meter.reset()
    if loop.main:
        run.log_rows.append(row)
        append_metrics(out / "metrics.jsonl", row)
        run.tracking.log(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr_encoder']:.2e}", frozen="yes" if frozen else "no")


def evaluate_dev(run: Run, out: Path, objective: Objective, bar, loop: Loop) -> None:
    """The dev metric after this update; the best-on-dev weights (early-stop: the last ones) kept in memory."""
    metrics = objective.dev_metrics(run.encoder, run.heads, run.cfg, loop)
    run.encoder.train()  # back to training mode, frozen phase or not (training_loop)
    run.heads.train()
    if not loop.main:
        return
    score = dev_score(metrics)
    row = {"kind": "dev", "step": run.step, "score": score, "metrics": metrics}
    run.log_rows.append(row)
    append_metrics(out / "metrics.jsonl", row)
    run.tracking.log(row)
    # best-on-dev (strictly better; the earliest of equal scores wins). early-stop: the last.
    if run.cfg.method == "early-stop" or run.best is None or score > run.best["score"]:
        run.best = {"step": run.step, "score": score, "metrics": metrics, "dir": None}
        run.best_state = trainable_state(run.enc_params, run.heads)
    best = "  (best)" if run.best["step"] == run.step else ""
    bar.write(f"step {run.step}: dev {format_metrics(metrics)}{best}")


def save_checkpoint(run: Run, out: Path, loop: Loop) -> None:
    """A resumable checkpoint: trainable weights, optimizer, every process's RNG, data positions, best."""
    from .checkpoint import optimizer_state, rng_state, write_checkpoint

    ckpt_root = out / "checkpoints"
    # RNG states differ per process; the main process writes everyone's.
    rngs = loop.gather([(loop.rank, *rng_state())]) if loop.world > 1 else [(loop.rank, *rng_state())]
    if loop.main:
        if run.best is not None and run.best["dir"] is None:
            # Best weights live beside the resumable state, written only when a checkpoint needs them.
            run.best["dir"] = f"best-{run.best['step']:07d}"
            write_best(ckpt_root / run.best["dir"], run.best_state)
            run.best_written = run.best["dir"]
        opt_tensors, opt_meta = optimizer_state(run.opt)
        meta = {
            "step": run.step,
            "best": run.best,
            "optimizer": opt_meta,
            "scaler": run.scaler.state_dict() or None,
            "data": {n: s.position for n, s in run.streams.items()},
            "rng": [m for _, _, m in sorted(rngs, key=lambda r: r[0])],
        }
        rng_tensors = {f"rank{r}/{k}": v for r, t, _ in rngs for k, v in t.items()}
        tensors = {"model": trainable_state(run.enc_params, run.heads), "optimizer": opt_tensors, "rng": rng_tensors}
        write_checkpoint(ckpt_root, run.step, tensors, meta, keep_last=run.cfg.checkpoint.keep_last)
        clean_stale(ckpt_root, None, run.best_written)
    loop.barrier()


# =====================================================================================================
# After the loop
# =====================================================================================================
def finish(run: Run, out: Path, objective: Objective, run_info: dict) -> None:
    """The result: best-on-dev weights (early-stop: the last ones) as an encoder folder (main process)."""
    cfg = run.cfg
    run.tracking.close()  # complete tracker logs before speechft.json marks the folder finished
    load_trainable(run.enc_params, run.heads, run.best_state, where="best checkpoint")
    steps = {"T": run.cfg.steps, "R": run.run_steps, "frozen": run.frozen_steps}
    write_result(
        out, run.encoder, run.heads, run.lora, cfg, run.best, steps, run_info, run.log_rows, run.timing, objective
    )
    if not cfg.checkpoint.keep_at_end:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        objective.clean_up(out)
    print(
        f"wrote {objective.result_name} encoder ({cfg.method}, best step {run.best['step']}, dev "
        f"{format_metrics(run.best['metrics'])}) to {out}"
    )


# =====================================================================================================
# Pieces
# =====================================================================================================
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


def dev_score(metrics: dict) -> float:
    """One number to pick the best checkpoint, higher = better: the mean over tasks of accuracy / F1, or of
    1 - error rate (PER/CER/WER). With one task it orders checkpoints exactly as its own metric does."""
    from .metrics import LOWER_IS_BETTER

    vals = [1.0 - m["value"] if m["metric"] in LOWER_IS_BETTER else m["value"] for m in metrics.values()]
    return round(sum(vals) / len(vals), 6)


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{name} {m['metric']} {m['value']:.4f}" for name, m in metrics.items())


def make_progress(total: int, initial: int, enabled: bool, desc: str = "finetune"):
    from .progress import progress_bar

    # Only the main process draws a bar (and none with progress=False); elsewhere tqdm's own settings apply
    # (TQDM_DISABLE=1 turns it off).
    extra = {} if enabled else {"disable": True}
    return progress_bar(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, **extra)


def warn(message: str) -> None:
    print(f"speechft: warning: {message}", file=sys.stderr)
