"""Task heads shared by fine-tuning (train.py) and probing (probe.py).

- `LayerSelect`: the last hidden state (the paper's fine-tuning setting) or SUPERB's
  learnable softmax-weighted sum of all L+1 states (weights start at zero = uniform).
- `ClassificationHead`: projector -> mean pooling over valid frames -> linear. Projection
  and pooling are both linear, so mean(proj(x)) == proj(mean(x)): the probe can train on
  cached mean-pooled per-layer vectors and get exactly the same model.
- `CTCHead`: projector -> optional BiLSTM stack -> linear over the vocabulary + blank (id 0),
  as in the paper's ASR recipe (768->256 projector, 3-layer BiLSTM of 256 per direction).
- `TaskHead`: a layer selection plus the head for one task folder, with save/load; it stores the task's
  vocabulary and tokenises with it (data.tasks.Vocabulary: the one tokeniser).
- `ctc_misfits` / `manifest_frames`: the one "does the CTC transcript fit the frames" check, from the
  manifest's durations (finetune refuses a task none of whose clips fits; doctor reports each misfit).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data.audio import SAMPLE_RATE
from .data.tasks import Vocabulary
from .errors import SpeechFTError
from .io_utils import atomic_dir, read_json, write_json
from .safetensors_io import load_tensors, save_tensors

# Widest projection / LSTM a head may ask for (a 768 x 65536 float32 projection is 200 MB).
MAX_HEAD_WIDTH = 65536
# Most hidden states and labels a saved head may declare (head.json is read before anything is allocated).
MAX_HEAD_STATES = 1024
MAX_HEAD_LABELS = 1_000_000


@dataclass
class HeadConfig:
    layers: str = "last"  # "last" | "weighted"
    proj_dim: int = 256
    lstm_layers: int = 2  # CTC only; 0 = linear CTC head
    lstm_hidden: int = 256  # per direction
    dropout: float = 0.1

    def __post_init__(self):
        if self.layers not in ("last", "weighted"):
            raise ValueError(f"layers must be 'last' or 'weighted', got {self.layers!r}")
        # Refused before nn.Linear allocates: one digit too many in a --set or a head.json is terabytes.
        for key, low, high in (
            ("proj_dim", 1, MAX_HEAD_WIDTH),
            ("lstm_hidden", 1, MAX_HEAD_WIDTH),
            ("lstm_layers", 0, 64),
        ):
            value = getattr(self, key)
            if not (isinstance(value, int) and low <= value <= high):
                raise ValueError(f"{key} must be an integer from {low} to {high}, got {value!r}")


class LayerSelect(nn.Module):
    def __init__(self, num_states: int, mode: str = "last"):
        super().__init__()
        self.mode, self.num_states = mode, num_states
        if mode == "weighted":
            self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if self.mode == "last":
            return states[-1]
        if len(states) != self.num_states:
            raise ValueError(f"expected {self.num_states} hidden states, got {len(states)}")
        w = torch.softmax(self.weights, dim=0)
        stacked = torch.stack(list(states), dim=0) if not torch.is_tensor(states) else states
        return torch.einsum("l,l...->...", w.to(stacked.dtype), stacked)

    def layer_weights(self) -> list[float]:
        if self.mode == "last":
            return [0.0] * (self.num_states - 1) + [1.0]
        return torch.softmax(self.weights.detach().float(), 0).tolist()


def mean_pool(feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """(B, F, D) -> (B, D), averaging valid frames only."""
    valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
    summed = (feats * valid[..., None].to(feats.dtype)).sum(1)
    return summed / frame_lengths.clamp(min=1)[:, None].to(feats.dtype)


class ClassificationHead(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig):
        super().__init__()
        self.projector = nn.Linear(input_dim, cfg.proj_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.proj_dim, num_classes)

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.projector(pooled)))

    def forward(self, feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(mean_pool(feats, frame_lengths))


class CTCHead(nn.Module):
    def __init__(self, input_dim: int, num_outputs: int, cfg: HeadConfig):
        super().__init__()
        self.projector = nn.Linear(input_dim, cfg.proj_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = (
            nn.LSTM(
                cfg.proj_dim,
                cfg.lstm_hidden,
                num_layers=cfg.lstm_layers,
                bidirectional=True,
                batch_first=True,
                dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
            )
            if cfg.lstm_layers > 0
            else None
        )
        self.output = nn.Linear(2 * cfg.lstm_hidden if self.lstm else cfg.proj_dim, num_outputs)

    def forward(self, feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.projector(feats))
        if self.lstm is not None:
            # Packing keeps padded frames out of the recurrence: a padded batch gives each
            # item what it would get alone.
            packed = nn.utils.rnn.pack_padded_sequence(
                x, frame_lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
            x = self.dropout(x)
        return torch.log_softmax(self.output(x).float(), dim=-1)


def ctc_min_frames(ids: Sequence[int]) -> int:
    """The fewest frames CTC can align `ids` to: one per token, plus a blank between repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def manifest_frames(encoder, durations: Sequence[float]) -> list[int]:
    """Encoder frames of clips of these manifest durations (seconds). The one rule, used by fine-tuning's
    refusal and by doctor's report alike: round(duration * SAMPLE_RATE) samples (a manifest's durations are
    rounded, so int() would lose a sample - and maybe a frame - to 0.9999 s)."""
    samples = torch.tensor([round(d * SAMPLE_RATE) for d in durations], dtype=torch.long)
    return encoder.frame_lengths(samples).tolist()


def ctc_misfits(encoder, examples: Sequence, vocabulary: Vocabulary) -> list[tuple]:
    """(example, frames, frames needed) of every clip whose transcript CTC cannot align to the frames this
    encoder gives for the clip's manifest duration (`manifest_frames`, `ctc_min_frames`)."""
    frames = manifest_frames(encoder, [ex.duration for ex in examples])
    needs = [ctc_min_frames(vocabulary.encode(ex.target)) for ex in examples]
    return [(ex, n, need) for ex, n, need in zip(examples, frames, needs) if n < need]


def ctc_unalignable(frame_lengths: torch.Tensor, targets: Sequence[Sequence[int]]) -> list[int]:
    """Positions in the batch whose transcript needs more frames than the encoder gave."""
    return [i for i, (n, ids) in enumerate(zip(frame_lengths.tolist(), targets)) if n < ctc_min_frames(ids)]


def ctc_loss(log_probs: torch.Tensor, frame_lengths: torch.Tensor, targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean CTC loss per utterance (normalised by target length, like torch's 'mean').

    An utterance with fewer frames than its transcript needs (`ctc_unalignable`: a clip
    too short for its transcript at this encoder's frame rate) has no alignment; its loss
    is infinite, and zero_infinity turns it into 0 with no gradient, i.e. it is skipped
    rather than poisoning the batch with inf/NaN. `TaskHead.loss` counts and reports them."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    return nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        flat,
        frame_lengths.cpu(),
        target_lengths,
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


def greedy_ctc(log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, collapse repeats, drop blanks (id 0)."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for seq, n in zip(best, frame_lengths.cpu().tolist()):
        ids = torch.unique_consecutive(seq[:n]).tolist()
        out.append([i for i in ids if i != 0])
    return out


class TaskHead(nn.Module):
    """Layer selection + head for one task. The task's vocabulary (`labels`/`tokenizer`: data.tasks.Vocabulary,
    the one tokeniser) travels with it, so a saved head decodes its own outputs without the task folder."""

    def __init__(
        self,
        task_type: str,
        labels: list[str],
        input_dim: int,
        num_states: int,
        cfg: HeadConfig | None = None,
        tokenizer: str | None = None,
        name: str = "task",
        metric: str = "",
    ):
        super().__init__()
        self.cfg = cfg or HeadConfig()
        self.task_type, self.labels, self.tokenizer, self.name, self.metric = (
            task_type,
            list(labels),
            tokenizer,
            name,
            metric,
        )
        self.vocabulary = Vocabulary(task_type, self.labels, tokenizer)
        self.input_dim, self.num_states = input_dim, num_states
        self.ctc_skipped = 0  # utterances left out of the CTC loss: CTC cannot align them (see ctc_loss)
        self.select = LayerSelect(num_states, self.cfg.layers)
        # Per-layer feature standardisation (x - mean) / std, identity unless set. Probes set it from
        # train-split statistics: hidden states of different layers differ in scale by orders of
        # magnitude (Whisper's last state is layer-normed, the others are not), which otherwise
        # decides the weighted sum more than the features do.
        self.register_buffer("feature_mean", torch.zeros(num_states, input_dim))
        self.register_buffer("feature_std", torch.ones(num_states, input_dim))
        if task_type == "classification":
            self.head = ClassificationHead(input_dim, len(labels), self.cfg)
        elif task_type == "ctc":
            self.head = CTCHead(input_dim, len(labels) + 1, self.cfg)
        else:
            raise ValueError(f"unknown task type {task_type!r}")

    @classmethod
    def for_task(cls, task, input_dim: int, num_states: int, cfg: HeadConfig | None = None) -> TaskHead:
        return cls(task.type, task.labels, input_dim, num_states, cfg, task.tokenizer, task.name, task.metric)

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5) -> None:
        """mean, std: (num_states, input_dim) statistics of the training features."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=eps))

    def standardize(self, states) -> torch.Tensor:
        """(S, ..., D) stacked states (or a list of S tensors) -> standardised, stacked."""
        x = torch.stack(list(states), 0) if not torch.is_tensor(states) else states
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return (x - self.feature_mean.view(shape).to(x.dtype)) / self.feature_std.view(shape).to(x.dtype)

    def forward(self, states, frame_lengths: torch.Tensor) -> torch.Tensor:
        if self.select.mode == "weighted":
            states = self.standardize(states)
        else:  # only the last state is used: standardise just that one
            states = [(states[-1] - self.feature_mean[-1]) / self.feature_std[-1]]
            return self.head(states[0], frame_lengths)
        return self.head(self.select(states), frame_lengths)

    def pooled_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classification from mean-pooled states (N, S, D): exact, since standardisation, the weighted
        sum and the projector are all affine and commute with mean pooling."""
        return self.pooled_logits_standardized(self.standardize(pooled.transpose(0, 1)))

    # Probes standardise their cached features once (probe_train.StandardizedSplit) instead of on every
    # step; these take states already passed through `standardize` and give what forward/pooled_logits give.
    def forward_standardized(self, states: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """forward() of (S, B, F, D) states already standardised by this head's statistics (weighted mode)."""
        return self.head(self.select(states), frame_lengths)

    def pooled_logits_standardized(self, states: torch.Tensor) -> torch.Tensor:
        """pooled_logits() of (S, N, D) pooled states already standardised by this head's statistics."""
        return self.head.forward_pooled(self.select(states))

    # ---- targets, loss, predictions --------------------------------------------------
    def encode(self, target: str):
        return self.vocabulary.encode(target)

    def loss(self, output: torch.Tensor, frame_lengths: torch.Tensor, targets: Sequence[str]) -> torch.Tensor:
        if self.task_type == "classification":
            y = torch.tensor([self.encode(t) for t in targets], device=output.device)
            return nn.functional.cross_entropy(output, y)
        ids = [self.encode(t) for t in targets]
        bad = ctc_unalignable(frame_lengths.cpu(), ids)
        if bad:
            self.report_unalignable(int(frame_lengths[bad[0]]), ids[bad[0]], targets[bad[0]], len(bad))
        return ctc_loss(output, frame_lengths, ids)

    def report_unalignable(self, frames: int, ids: Sequence[int], text: str, count: int) -> None:
        """Count skipped utterances; say so (once per head) on stderr, with the numbers that explain it."""
        from .progress import write_above

        if not self.ctc_skipped:
            shown = text if len(text) <= 60 else text[:57] + "..."
            write_above(
                f"speechft: warning: {self.name}: a clip gives {frames} encoder frames but its transcript "
                f"'{shown}' needs at least {ctc_min_frames(ids)} for CTC; such clips are skipped in the loss "
                "(the encoder's frame rate is too coarse for them: check the manifest's durations and "
                "transcripts, or use an encoder with more frames per second)"
            )
        self.ctc_skipped += count

    def predict(self, output: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        if self.task_type == "classification":
            return [self.labels[i] for i in output.argmax(-1).tolist()]
        return [self.vocabulary.decode(ids) for ids in greedy_ctc(output, frame_lengths)]

    # ---- save / load -----------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "name": self.name,
            "task_type": self.task_type,
            "labels": self.labels,
            "tokenizer": self.tokenizer,
            "metric": self.metric,
            "input_dim": self.input_dim,
            "num_states": self.num_states,
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self, out: str | os.PathLike, overwrite: bool = True) -> Path:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_tensors(tmp / "head.safetensors", self.state_dict())
            write_json(tmp / "head.json", self.describe())
        return Path(out)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskHead:
        path = Path(path)
        meta = read_json(path / "head.json")
        _check_head_meta(path / "head.json", meta)
        try:
            head = cls(
                meta["task_type"],
                meta["labels"],
                meta["input_dim"],
                meta["num_states"],
                HeadConfig(**meta["config"]),
                meta.get("tokenizer"),
                meta.get("name", "task"),
                meta.get("metric", ""),
            )
            head.load_state_dict(load_tensors(path / "head.safetensors"))
        except SpeechFTError as e:  # the weights file: missing or corrupt, named by the reader
            detail = str(e).removeprefix(f"{path / 'head.safetensors'}: ")
            raise SpeechFTError(f"{path}: not a valid speechft head folder (head.safetensors: {detail})") from None
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
            raise SpeechFTError(f"{path}: not a valid speechft head folder ({str(e).splitlines()[0][:200]})") from None
        return head


def _check_head_meta(where: Path, meta) -> None:
    """The sizes a head.json declares, bounded before TaskHead allocates (feature_mean alone is
    num_states x input_dim floats): a hostile or corrupt file is one line, not a machine out of memory."""
    if not isinstance(meta, dict):
        raise SpeechFTError(f"{where}: not a valid speechft head (expected a JSON object)")
    for key, high in (("input_dim", MAX_HEAD_WIDTH), ("num_states", MAX_HEAD_STATES)):
        value = meta.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high):
            raise SpeechFTError(f"{where}: {key} must be an integer from 1 to {high}, got {str(value)[:40]}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not 1 <= len(labels) <= MAX_HEAD_LABELS:
        size = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise SpeechFTError(f"{where}: labels must be a list of 1 to {MAX_HEAD_LABELS} strings, got {size}")
    if not all(isinstance(x, str) for x in labels):
        raise SpeechFTError(f"{where}: labels must be strings")
