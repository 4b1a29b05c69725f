"""Continued pre-training: HuBERT-style masked-unit prediction on new, unlabelled audio.

The paper's unsupervised scenario: continue pre-training an encoder on audio of a new language
(AISHELL-3 Mandarin), then merge it with the pre-trained encoder like any fine-tuned one:

    speechft pretrain --encoder enc/hubert-base --audio tasks/aishell3-asr --out runs/hubert-zh
    speechft merge --pretrained enc/hubert-base --finetuned runs/hubert-zh --alpha 0.25 --out enc/hubert-zh-merged

What happens, in order:

1. Targets, once, offline, with the initial encoder: features of one of its own intermediate layers
   (`units.layer`, the middle one by default) on a seeded sample of the training audio are clustered
   by k-means (`kmeans`: torch, k-means++ initialisation, seeded; K = `units.clusters`), and every
   training and dev clip - exactly the crop the training stream yields (`data.max_seconds`, cut at the
   start: `data.crop` is always "start" here, as the units are labelled once) - is labelled frame by
   frame with its nearest centroid. Both are stored in the run folder (units/, safetensors) so a resumed
   run reuses them (speechft.units). `units.kmeans=PATH` labels with given centroids instead (an earlier
   run's units/kmeans.safetensors, or a .npy).
2. Training: the input under random spans of frames is hidden (`span_mask`: each frame starts a span of
   `mask.span` frames with probability `mask.start_prob`, HuBERT's p = 8%, l = 10, at the model's own
   frame rate) through `Encoder.forward(..., frame_mask=)`: wav2vec2-family models get their projected
   conv features replaced by the model's `masked_spec_embed` (zeros if it has none), Whisper gets the two
   log-mel frames under each masked output frame set to 0, DeCoAR 2.0 its filterbank frames. A prediction
   head over the last hidden state scores the units of every frame; the loss is the cross-entropy over
   masked frames only (`masked_unit_loss`). The head (`units.head`, `choose_head`): an encoder folder that
   keeps its checkpoint's HuBERT head (`speechft encoder convert` of a HuBERT checkpoint with final_proj +
   label_embs_concat: speechft.encoders.pretraining_heads) continues with it - fairseq's cosine / 0.1 over
   every label embedding, the loss starting where the checkpoint's is - when it predicts `units.clusters`
   units at the encoder's width; otherwise a fresh linear head. One stdout line and the provenance
   (`prediction_head`) say which. The checkpoint does not hold the k-means its head was trained on, so the
   match is by count only: with new k-means units the label embeddings are a warm start, not HuBERT's own
   objective, unless `units.kmeans` gives the original centroids (of hidden state `units.layer`).
3. The loop is fine-tuning's (speechft.engine.run_training) with this objective instead of the task heads:
   method `regular` by default (everything but the front end trains; the other methods work too), Adam,
   the warm-up / hold / decay schedule, clip 1, atomic resumable checkpoints, accelerate. The dev metric is
   masked-unit accuracy on held-out audio (a task folder's dev split, or `units.dev_clips` clips of a bare
   manifest) with fixed masks; the best-on-dev checkpoint is the result.
4. The result is an encoder folder like finetune's (speechft.json: method "continued-pretraining", the
   units' K and layer, steps, the parent's hash). A fresh linear head is dropped; a continued checkpoint head
   stays beside it in pretraining_heads/ (outside model.safetensors: merge never sees or copies it), with its
   units recorded as this run's units/kmeans.safetensors, so the result can be continued again.

`--audio` is a task folder (its train split trains, its dev split scores; labels are ignored) or a bare
TSV manifest with a `path` column (relative to the manifest's folder, or absolute) and optionally
`duration` in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .cli import add_device_option, add_quiet_option
from .config import add_config_options, config_from_args, to_dict
from .data.audio import SAMPLE_RATE
from .engine import run_training
from .errors import SpeechFTError
from .heads import HeadConfig
from .io_utils import sha256_file
from .objective import Loop
from .run_folder import stored_config
from .tracking import add_tracking_option
from .train import TaskStream
from .train_config import TrainConfig, resolve_config
from .units import (
    KMEANS_FILE,
    TARGETS_FILE,
    UnitTargets,
    clip_batches,
    kmeans,
    nearest_centroid,
    prepare_targets,
    read_units_info,
)

UNITS = "units"  # the one stream / head name, as it appears in metrics.jsonl
UNITS_DIR = "units"  # run-folder subfolder: kmeans.safetensors, units.json, targets.safetensors (while running)


# =====================================================================================================
# Configuration: TrainConfig (the shared loop's knobs) + the targets and the masking
# =====================================================================================================
@dataclass
class UnitsConfig:
    clusters: int = 100  # K of k-means (HuBERT Base: 100 in its first iteration, 500 in its second)
    layer: int | None = None  # hidden state the targets come from (0 = input to layer 1, L = last); null = L // 2
    sample_frames: int = 100_000  # k-means is fit on at most this many frames from a seeded sample of training clips
    iterations: int = 100  # Lloyd iterations at most; stops earlier once the inertia improves by < 1e-4 (relative)
    dev_clips: int = 100  # a bare manifest: clips held out for the dev metric (at most a tenth of them, at least 1)
    # centroids to label with instead of fitting k-means: a .safetensors with `centroids` (K, hidden) - e.g. an earlier
    # run's units/kmeans.safetensors - or a .npy (K, hidden); they must be of hidden state `layer` of this encoder
    kmeans: str | None = None
    # the prediction head: auto = the encoder folder's own pre-training head (a converted HuBERT's final_proj +
    # label embeddings) when it predicts `clusters` units, else a fresh one; checkpoint = that head or an error;
    # fresh = always a new linear head
    head: Literal["auto", "checkpoint", "fresh"] = "auto"


@dataclass
class MaskConfig:
    start_prob: float = 0.08  # each frame starts a masked span with this probability (HuBERT: p = 8%)
    span: int = 10  # frames per span, at the model's frame rate (HuBERT: l = 10 at 50 Hz)
    min_spans: int = 2  # spans at least, per clip (fairseq's min_masks), where the clip has room


@dataclass
class PretrainConfig(TrainConfig):
    # Every TrainConfig key applies as in finetune (data.max_seconds crops long clips - HuBERT crops to ~15.6 s -
    # and cropped clips are labelled exactly as cropped); `head` takes no settings here.
    method: Literal["stable", "regular", "l2sp", "lora", "dora", "early-stop"] = "regular"
    units: UnitsConfig = field(default_factory=UnitsConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


def resolve_pretrain_config(cfg: PretrainConfig) -> PretrainConfig:
    """resolve_config's checks plus the units and masking ones; one-line SpeechFTError naming the key."""
    if not isinstance(cfg, PretrainConfig):
        raise SpeechFTError(f"pretrain needs a PretrainConfig (speechft/pretrain.py), got a {type(cfg).__name__}")
    cfg = resolve_config(cfg)
    u, m = cfg.units, cfg.mask

    def bad(key, value, what):
        raise SpeechFTError(f"config {key}={value!r}: {what}")

    if cfg.data.crop == "random":
        bad("data.crop", cfg.data.crop, "pretrain labels each clip's units once, on its start crop: use start")
    if u.clusters < 2:
        bad("units.clusters", u.clusters, "k-means needs at least 2 clusters (HuBERT uses 100-500)")
    if u.layer is not None and u.layer < 0:
        bad("units.layer", u.layer, "a hidden-state index: 0 (input to layer 1) to the number of layers")
    if not u.clusters <= u.sample_frames <= 10_000_000:
        bad("units.sample_frames", u.sample_frames, f"must be between units.clusters ({u.clusters}) and 10,000,000")
    if u.iterations < 1:
        bad("units.iterations", u.iterations, "must be >= 1")
    if u.dev_clips < 1:
        bad("units.dev_clips", u.dev_clips, "must be >= 1")
    if u.kmeans is not None and not Path(u.kmeans).is_file():
        bad("units.kmeans", u.kmeans, "file not found; a .safetensors with 'centroids' or a .npy of shape (K, hidden)")
    if u.head not in ("auto", "checkpoint", "fresh"):
        bad("units.head", u.head, "one of auto, checkpoint, fresh")
    if not (math.isfinite(m.start_prob) and 0 < m.start_prob < 1):
        bad("mask.start_prob", m.start_prob, "a probability in (0, 1); HuBERT uses 0.08")
    if m.span < 1 or m.min_spans < 0:
        bad(
            "mask.span" if m.span < 1 else "mask.min_spans",
            m.span if m.span < 1 else m.min_spans,
            "span must be >= 1 frame, min_spans >= 0",
        )
    if to_dict(cfg.head) != to_dict(HeadConfig()):
        bad(
            "head",
            to_dict(cfg.head),
            "pretrain's prediction head is one linear layer over the last hidden state "
            "and takes no head settings; remove the head section",
        )
    return cfg


# =====================================================================================================
# Pieces: span masks, the loss, the prediction head (the targets: speechft.units)
# =====================================================================================================
def span_mask(
    frame_lengths: torch.Tensor,
    start_prob: float,
    span: int,
    min_spans: int = 0,
    generator: torch.Generator | None = None,
    frames: int | None = None,
) -> torch.Tensor:
    """(B,) valid frames -> (B, F) bool mask of spans, all inside each clip's valid frames.

    Every frame that leaves room for a whole span (t <= n - span; t = 0 for a clip shorter than a span)
    starts one with probability `start_prob`; clips with fewer than `min_spans` starts get that many
    distinct random ones (as far as they have room). A start at t masks t .. t+span-1; spans may overlap.
    Draws from `generator` (CPU), or from torch's global RNG - which checkpoints save - when None.
    """
    n = frame_lengths.detach().cpu().long()
    f = int(n.max()) if frames is None and len(n) else (frames or 0)
    pos = torch.arange(f)
    room = (n - span).clamp(min=0)  # the last frame a span may start at
    starts = (torch.rand(len(n), f, generator=generator) < start_prob) & (pos[None, :] <= room[:, None])
    starts &= (n > 0)[:, None]
    for i in torch.nonzero((starts.sum(1) < min_spans) & (n > 0)).flatten().tolist():
        choices = torch.randperm(int(room[i]) + 1, generator=generator)[:min_spans]
        starts[i, choices] = True
    # frame t is masked when a span starts in (t - span, t]: a difference of running counts
    count = torch.cumsum(starts.int(), dim=1)
    before = torch.nn.functional.pad(count, (span, 0))[:, :f]
    return ((count - before) > 0) & (pos[None, :] < n[:, None])


def masked_unit_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked frames that have a target; every other frame contributes
    nothing (HuBERT's alpha = 1: the loss on unmasked frames has weight 0). (B, F, K), (B, F), (B, F)."""
    f = min(logits.shape[1], targets.shape[1])
    sel = mask[:, :f] & (targets[:, :f] >= 0)
    if not bool(sel.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
    return nn.functional.cross_entropy(logits[:, :f][sel].float(), targets[:, :f][sel])


class UnitHead(nn.Module):
    """The prediction head: a linear layer from the last hidden state to the K unit logits (HuBERT's
    final_proj + cosine-to-label-embeddings, simplified). Pre-training-only: dropped from the result."""

    def __init__(self, hidden_size: int, clusters: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, clusters)

    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(last_hidden)


# =====================================================================================================
# The audio: a task folder's splits, or a bare manifest with a held-out part
# =====================================================================================================
class AudioSource:
    """The `--audio` argument, validated up front: train and dev examples plus the hashes that identify them."""

    def __init__(self, path):
        from .data import load_task

        self.path = Path(path)
        if self.path.is_dir():
            task = load_task(self.path)
            self.train, self.dev = task.split("train"), task.split("dev")
            self.hashes = {"train_sha256": task.manifest_hash("train"), "dev_sha256": task.manifest_hash("dev")}
            self.manifest = False
        elif self.path.is_file():
            from .data.manifest import read_audio_list
            from .data.tasks import Example

            items = read_audio_list(self.path, durations=True)
            self.train, self.dev = [Example(a.id, a.path, a.duration, "") for a in items], None
            digest = sha256_file(self.path)
            self.hashes = {"train_sha256": digest, "dev_sha256": digest}
            self.manifest = True
        else:
            raise SpeechFTError(
                f"{self.path}: --audio not found; pass a task folder or a TSV manifest with a path column"
            )

    def task(self, cfg: PretrainConfig):
        """A Task holding the audio (type 'audio': cropped like classification clips, no labels)."""
        from .data.tasks import Task

        train, dev = self.train, self.dev
        if dev is None:  # a bare manifest: hold out a seeded part for the dev metric
            if len(train) < 2:
                raise SpeechFTError(
                    f"{self.path}: only {len(train)} clip; continued pre-training needs at least 2 "
                    "(one is held out for the dev metric)"
                )
            n_dev = max(1, min(cfg.units.dev_clips, len(train) // 10))
            held = set(random.Random(cfg.seed).sample(range(len(train)), n_dev))
            train, dev = ([ex for i, ex in enumerate(self.train) if (i in held) == want] for want in (False, True))
        root = self.path if self.path.is_dir() else self.path.parent
        return Task(
            root=root,
            name=UNITS,
            type="audio",
            metric="masked_accuracy",
            labels=[],
            tokenizer=None,
            sample_rate=SAMPLE_RATE,
            splits={"train": train, "dev": dev, "test": []},
            spec={"audio": str(self.path)},
        )


class UnitObjective:
    """Masked-unit prediction: a speechft.objective.Objective for engine.run_training (the counterpart of
    train.TaskObjective)."""

    kind = "pretrain"
    result_name = "continued-pretraining"
    data_option = "--audio"
    config_class = PretrainConfig

    def __init__(self, audio, encoder_dir=None):
        self.source = AudioSource(audio)
        self.encoder_dir = None if encoder_dir is None else Path(encoder_dir)
        self.unit_rows: torch.Tensor | None = None  # unit k's logit row in the checkpoint's head (None: row k)
        self.head_choice: dict = {}
        self.encoder = self.cfg = self.task = self.layer = None
        self.targets: dict[str, UnitTargets] = {}
        self.units_info: dict = {}
        self.dev_masks: list[torch.Tensor] = []

    @staticmethod
    def resolve(cfg: PretrainConfig) -> PretrainConfig:
        return resolve_pretrain_config(cfg)

    def run_info(self) -> dict:
        return {UNITS: {"path": str(self.source.path.resolve()), **self.source.hashes}}

    # ---- before the loop: the head and the targets ------------------------------------------------------
    def build_heads(self, encoder, cfg: PretrainConfig, out: Path, loop: Loop, progress: bool) -> nn.ModuleDict:
        from .data.dataset import SplitDataset

        self.encoder, self.cfg = encoder, cfg
        self.task = self.source.task(cfg)
        L = encoder.num_layers
        self.layer = cfg.units.layer if cfg.units.layer is not None else max(1, L // 2)
        if self.layer > L:
            raise SpeechFTError(
                f"config units.layer={self.layer}: this {encoder.family} encoder has {L} layers; "
                f"choose 0..{L} (null = the middle one, {max(1, L // 2)})"
            )
        heads = nn.ModuleDict({UNITS: self.choose_head(encoder, cfg, loop)})
        datasets = {split: SplitDataset(self.task, split, cfg.data.max_seconds) for split in ("train", "dev")}
        self.targets = prepare_targets(encoder, datasets, cfg, self.layer, out / UNITS_DIR, loop, progress)
        self.units_info = read_units_info(out / UNITS_DIR)
        # Fixed dev masks, one generator per clip: the dev metric compares like with like across evaluations,
        # whatever the batching or the number of processes.
        m = cfg.mask
        self.dev_masks = [
            span_mask(
                n[None], m.start_prob, m.span, m.min_spans, torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
            )[0]
            for i, n in enumerate(self.targets["dev"].lengths())
        ]
        return heads

    def choose_head(self, encoder, cfg: PretrainConfig, loop: Loop) -> nn.Module:
        """The checkpoint's own pre-training head when `units.head` allows it and it fits (its unit count is
        units.clusters, its input the encoder's width), else a fresh UnitHead; says which on stdout."""
        from .encoders.pretraining_heads import HubertPredictionHead, read_pretraining_heads

        k, mode = cfg.units.clusters, cfg.units.head
        found = read_pretraining_heads(self.encoder_dir) if self.encoder_dir is not None and mode != "fresh" else None
        if found is None:
            why = "units.head=fresh" if mode == "fresh" else "the encoder folder has no pre-training head"
        elif found.info["units"] != k:
            why = f"its head predicts {found.info['units']} units, units.clusters={k}"
        elif found.info["hidden_size"] != encoder.hidden_size:
            why = f"its head reads width {found.info['hidden_size']}, the encoder's is {encoder.hidden_size}"
        else:
            why = None
        if why is not None and mode == "checkpoint":
            raise SpeechFTError(
                f"config units.head=checkpoint: cannot continue the checkpoint's head ({why}); "
                f"{'set units.clusters to its unit count' if found else 'convert a HuBERT checkpoint with its head'}"
                " or use units.head=auto"
            )
        if why is None:
            head = HubertPredictionHead(found.tensors, found.info)
            self.unit_rows = head.unit_rows.clone()
            self.head_choice = {
                "head": "checkpoint",
                "from": str(found.path.resolve()),
                "sha256": found.sha256,
                "note": (
                    f"targets from the given centroids units.kmeans={cfg.units.kmeans}: the head's own objective "
                    "continues only if they are the units it was trained on"
                    if cfg.units.kmeans
                    else "the checkpoint does not hold the k-means its head was trained on: with this run's "
                    "k-means units the label embeddings are a warm start (unit k on the row of symbol 'k'), "
                    "not the original objective; pass units.kmeans to label with the original centroids"
                ),
            }
            line = f"the checkpoint's HuBERT head ({k} units, {found.info['rows']} label embeddings, cosine / "
            line += f"{found.info['logit_temp']:g})"
        else:
            head, self.unit_rows = UnitHead(encoder.hidden_size, k), None
            self.head_choice = {"head": "fresh", "reason": why}
            line = f"a fresh linear head ({why})"
        if loop.main:
            print(f"pretrain: prediction head: {line}")
        return head

    def rows(self, targets: torch.Tensor) -> torch.Tensor:
        """Unit targets -> the head's logit rows (the checkpoint's head also scores fairseq's special symbols)."""
        if self.unit_rows is None:
            return targets
        return torch.where(targets >= 0, self.unit_rows[targets.clamp(min=0)], targets)

    def streams(self, cfg: PretrainConfig, loop: Loop) -> dict:
        return {UNITS: TaskStream(self.task, cfg.data, cfg.seed, loop.rank, loop.world, loop.device)}

    # ---- the loop: one batch's loss, the dev metric -----------------------------------------------------------
    def loss(self, encode, head, name: str, batch) -> torch.Tensor:
        m, device = self.cfg.mask, batch.wavs.device
        frames = self.encoder.frame_lengths(batch.lengths).cpu()
        mask = span_mask(frames, m.start_prob, m.span, m.min_spans)  # the global RNG: resumes exactly
        targets = self.rows(self.targets["train"].batch(batch.indices, frames))
        enc_out = encode(batch.wavs, batch.lengths, frame_mask=mask.to(device))
        return masked_unit_loss(head(enc_out.hidden_states[-1]), targets.to(device), mask.to(device))

    @torch.no_grad()
    def dev_metrics(self, encoder, heads, cfg: PretrainConfig, loop: Loop) -> dict:
        """Masked-unit accuracy on the dev audio with fixed masks: {"units": {"metric", "value"}}."""
        from .data.dataset import SplitDataset, split_loader

        encoder.eval()
        heads.eval()
        ds = SplitDataset(self.task, "dev", cfg.data.max_seconds)
        batches = clip_batches(ds, list(range(len(ds))), cfg.data.max_seconds, cfg.data.eval_batch_size)
        loader = split_loader(ds, batches[loop.rank :: loop.world], num_workers=cfg.data.num_workers)
        counts = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            frames = encoder.frame_lengths(batch.lengths).cpu()
            targets = self.rows(self.targets["dev"].batch(batch.indices, frames))  # (checks the frame counts)
            mask = torch.zeros(len(frames), int(frames.max()), dtype=torch.bool)
            for row, i in enumerate(batch.indices):
                mask[row, : frames[row]] = self.dev_masks[i]
            with loop.autocast():
                dev = loop.device
                enc_out = encoder(batch.wavs.to(dev), batch.lengths.to(dev), frame_mask=mask.to(dev))
                logits = heads[UNITS](enc_out.hidden_states[-1])
            f = min(logits.shape[1], targets.shape[1])
            sel = mask[:, :f] & (targets[:, :f] >= 0)
            pred = logits[:, :f].argmax(-1).cpu()
            counts += torch.tensor(
                [float((pred[sel] == targets[:, :f][sel]).sum()), float(sel.sum())], dtype=torch.float64
            )
        if loop.world > 1:
            counts = sum(loop.gather([counts]), torch.zeros(2, dtype=torch.float64))
        value = float(counts[0] / counts[1]) if counts[1] > 0 else 0.0
        return {UNITS: {"metric": "masked_accuracy", "value": round(value, 6)}}

    # ---- the result -------------------------------------------------------------------------------------------
    def save_heads(self, out: Path, heads) -> None:
        """A continued checkpoint head stays beside the result (pretraining_heads/, outside the encoder's weights,
        so merge never sees it) for a further run; a fresh linear head exists only for this run and is dropped."""
        from .encoders.pretraining_heads import read_pretraining_heads, write_pretraining_heads

        if self.head_choice.get("head") != "checkpoint":
            return
        info = read_pretraining_heads(self.encoder_dir).info
        info["units_origin"] = (
            f"the k-means of the continued pre-training that wrote this folder ({UNITS_DIR}/{KMEANS_FILE}, "
            f"sha256 {self.units_info.get('sha256')}, layer {self.layer} of its initial encoder)"
        )
        self.head_choice["saved"] = write_pretraining_heads(out, heads[UNITS].tensors(), info)

    def provenance(self, heads) -> dict:
        info = self.units_info
        return {
            "source": "speechft pretrain",
            "method": "continued-pretraining",
            "training_method": self.cfg.method,
            "units": {
                "clusters": self.cfg.units.clusters,
                "layer": self.layer,
                "sample_frames": info.get("points"),
                "sample_clips": info.get("clips"),
                "kmeans_iterations": info.get("iterations"),
                "inertia": info.get("inertia"),
                "kmeans_sha256": info.get("sha256"),
                "kmeans_from": info.get("from"),  # units.kmeans: the given centroids' file
                "kmeans_from_sha256": info.get("source_sha256"),
                "file": f"{UNITS_DIR}/{KMEANS_FILE}",
            },
            "masking": to_dict(self.cfg.mask),
            "prediction_head": {k: v for k, v in self.head_choice.items() if k != "saved"},
            **({"pretraining_heads": self.head_choice["saved"]} if "saved" in self.head_choice else {}),
            "audio": {
                "path": str(self.source.path.resolve()),
                "train_clips": len(self.task.split("train")),
                "dev_clips": len(self.task.split("dev")),
                **self.source.hashes,
            },
        }

    def clean_up(self, out: Path) -> None:
        """The per-frame targets can be large and are reproducible from kmeans.safetensors: drop them."""
        (out / UNITS_DIR / TARGETS_FILE).unlink(missing_ok=True)


# =====================================================================================================
# Library entry point and command line
# =====================================================================================================
def pretrain(
    encoder_dir,
    audio,
    out,
    steps: int | None = None,
    batch_size: int | None = None,
    max_seconds: float | None = None,
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    config: PretrainConfig | None = None,
    device: str | None = None,
) -> Path:
    """Continue pre-training the encoder in `encoder_dir` on the audio `audio` (task folder or TSV manifest)
    by masked-unit prediction; write the run folder `out`, an encoder folder when finished, and return it.

    `steps`, `batch_size`, `max_seconds` and `seed` override the config's values (`config` defaults to
    PretrainConfig()). With `resume=True` and nothing else given the stored config is used; anything given
    must equal it. `device`: cpu, cuda or cuda:N (None: cuda when available).
    """
    sets = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    data = {k: v for k, v in (("batch_size", batch_size), ("max_seconds", max_seconds)) if v is not None}
    if config is None and (sets or data or not resume):
        config = PretrainConfig()
    if config is not None:
        config = dataclasses.replace(config, **sets, data=dataclasses.replace(config.data, **data))
    from .encoders.hub import resolve_encoder

    objective = UnitObjective(audio, resolve_encoder(encoder_dir))  # a Hub id: its converted folder
    return run_training(encoder_dir, out, objective, config, resume, overwrite, progress, device)


def add_arguments(p) -> None:
    p.add_argument(
        "--encoder",
        required=True,
        metavar="DIR",
        help="pre-trained encoder folder or Hugging Face Hub id org/name[@revision]",
    )
    p.add_argument(
        "--audio",
        required=True,
        metavar="TASKDIR_OR_MANIFEST",
        help="a task folder (train split trains, dev split scores; labels unused) or a TSV manifest "
        "with a path column (and optionally duration)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder; an encoder folder when finished")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer updates (default: the config's, 1000)")
    add_config_options(p, PretrainConfig, "units.clusters=500 units.layer=9 mask.start_prob=0.08")
    add_device_option(p)
    add_quiet_option(p)
    add_tracking_option(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


CONFIG_FLAGS = {"steps": "steps", "log_with": "log_with"}  # the command's own flags and the config keys they set


def main(args) -> int:
    if args.resume and args.overwrite:
        raise SpeechFTError("--resume and --overwrite contradict each other; pass one")
    given = args.config is not None or args.set or any(getattr(args, f) is not None for f in CONFIG_FLAGS)
    # --resume alone: the stored config.yaml counts. Options given with it apply on top of the stored config and
    # must not change it (so repeating some of the original options is fine; a changed one is named).
    base = stored_config(PretrainConfig, Path(args.out)) if args.resume else None
    config = config_from_args(PretrainConfig, args, CONFIG_FLAGS, base=base) if given or not args.resume else None
    pretrain(
        args.encoder,
        args.audio,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        config=config,
        device=args.device,
    )
    return 0


__all__ = [
    "PretrainConfig",
    "UnitsConfig",
    "MaskConfig",
    "pretrain",
    "kmeans",
    "nearest_centroid",
    "span_mask",
    "masked_unit_loss",
    "UnitObjective",
    "UnitHead",
]
