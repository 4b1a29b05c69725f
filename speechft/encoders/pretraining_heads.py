"""HuBERT's masked-prediction head, kept beside a converted encoder so continued pre-training can go on with it.

fairseq's HubertModel scores a frame by projecting the last hidden state (`final_proj`, hidden -> final_dim),
taking its cosine similarity with every row of `label_embs_concat` (one embedding per entry of the label
dictionary: fairseq's 4 special symbols <s> <pad> </s> <unk>, then the units; optionally through
`target_glu`), dividing by `logit_temp` (0.1) and taking the cross-entropy over all rows against the unit's
row (fairseq hubert.py: compute_pred / compute_nce). `HubertPredictionHead` computes exactly that.

The head is no part of the encoder: `speechft encoder convert` writes it to a subfolder of the encoder folder,

    pretraining_heads/heads.safetensors   the fairseq tensors under their fairseq names (float32)
    pretraining_heads/heads.json          what they are: units, rows, dims, logit_temp, the label dictionary

so model.safetensors, merge, analysis and `AutoModel.from_pretrained` never see it (every "*.safetensors"
glob over an encoder folder stays the encoder's weights), and merge does not copy it. speechft.json records
the summary and the sha256 of heads.safetensors under `pretraining_heads`; `read_pretraining_heads` checks it.

The unit inventory of the head is only its size: the k-means that produced HuBERT's labels (MFCCs for the
first iteration, another model's layer for the later ones) is not in any checkpoint. Continuing with the
head on new k-means units reuses its label embeddings as a warm start, unit k on the row of symbol "k";
it continues HuBERT's own objective only if the targets are the units the head was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import SpeechFTError
from ..io_utils import read_json, sha256_file, write_json
from ..provenance import PROVENANCE_FILE
from ..safetensors_io import load_tensors, save_tensors

HEADS_DIR, HEADS_FILE, HEADS_INFO = "pretraining_heads", "heads.safetensors", "heads.json"
KIND = "hubert-masked-prediction"
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary() puts these before any symbol
HEAD_KEYS = ("final_proj.weight", "final_proj.bias", "label_embs_concat")
GLU_KEYS = ("target_glu.0.weight", "target_glu.0.bias")


def hubert_heads(weights: dict, model_cfg: dict | None, dictionaries: list | None, hidden_size: int):
    """(tensors, info) of HuBERT's pre-training head in fairseq `weights`, or (None, why not) when the file
    has no complete, single-label-set head of this encoder's width."""
    if not all(k in weights for k in ("final_proj.weight", "label_embs_concat")):
        return None, "no final_proj / label_embs_concat in the checkpoint"
    cfg = model_cfg or {}
    proj, embs = weights["final_proj.weight"], weights["label_embs_concat"]
    rows, final_dim = (int(x) for x in embs.shape)
    if dictionaries is not None and len(dictionaries) > 1:
        return None, f"{len(dictionaries)} label sets; speechft continues a single one"
    if tuple(proj.shape) != (final_dim, hidden_size):
        return None, f"final_proj is {tuple(proj.shape)}, expected ({final_dim}, {hidden_size})"
    symbols = [str(s) for s in dictionaries[0]] if dictionaries else None
    note = None
    if symbols is not None and len(symbols) != rows:
        note = f"label dictionary has {len(symbols)} symbols for {rows} label embeddings: ignored"
        symbols = None
    if symbols is None:  # fairseq's layout: the specials, then units 0..K-1 in order
        symbols = [*FAIRSEQ_SPECIALS, *map(str, range(rows - len(FAIRSEQ_SPECIALS)))]
    unit_rows = unit_rows_of(symbols)
    if unit_rows is None:
        return None, "the label dictionary's symbols are not the units 0..K-1"
    glu = all(k in weights for k in GLU_KEYS)
    tensors = {k: weights[k].float() for k in (*HEAD_KEYS, *(GLU_KEYS if glu else ())) if k in weights}
    if "final_proj.bias" not in tensors:
        tensors["final_proj.bias"] = torch.zeros(final_dim)
    info = {
        "kind": KIND,
        "units": len(unit_rows),
        "rows": rows,
        "hidden_size": hidden_size,
        "final_dim": final_dim,
        "logit_temp": float(cfg.get("logit_temp", 0.1) or 0.1),
        "target_glu": glu,
        "symbols": symbols,
        "dictionary_note": note,
        "units_origin": "the k-means that labelled the original pre-training (not in the checkpoint)",
    }
    return tensors, info


def unit_rows_of(symbols: list[str]) -> list[int] | None:
    """Row of unit k for k = 0..K-1 (the integer symbols), or None when they are not exactly 0..K-1."""
    units = {int(s): i for i, s in enumerate(symbols) if s.isdigit()}
    if not units or sorted(units) != list(range(len(units))):
        return None
    return [units[k] for k in range(len(units))]


def write_pretraining_heads(folder: Path, tensors: dict, info: dict) -> dict:
    """Write heads.safetensors + heads.json into `folder`/pretraining_heads; return the provenance entry."""
    d = Path(folder) / HEADS_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(d / HEADS_FILE, tensors)
    write_json(d / HEADS_INFO, info)
    summary = {k: info[k] for k in ("kind", "units", "rows", "final_dim", "logit_temp") if k in info}
    return {**summary, "path": f"{HEADS_DIR}/{HEADS_FILE}", "sha256": sha256_file(d / HEADS_FILE)}


@dataclass
class PretrainingHeads:
    tensors: dict
    info: dict
    path: Path  # the pretraining_heads folder
    sha256: str  # of heads.safetensors, as speechft.json records it


def read_pretraining_heads(encoder_dir) -> PretrainingHeads | None:
    """The pre-training head kept beside `encoder_dir`, checked against speechft.json; None when there is none."""
    encoder_dir = Path(encoder_dir)
    d = encoder_dir / HEADS_DIR
    if not (d / HEADS_FILE).is_file():
        return None
    prov_file = encoder_dir / PROVENANCE_FILE
    recorded = (read_json(prov_file) if prov_file.is_file() else {}).get("pretraining_heads") or {}
    digest = sha256_file(d / HEADS_FILE)
    if recorded.get("sha256") != digest:
        raise SpeechFTError(
            f"{d / HEADS_FILE}: sha256 differs from the one {prov_file} records (pretraining_heads.sha256); "
            "the head was changed or belongs to another folder: restore it, or delete the pretraining_heads folder"
        )
    info = read_json(d / HEADS_INFO)
    tensors = load_tensors(d / HEADS_FILE)
    missing = [k for k in HEAD_KEYS if k not in tensors]
    if info.get("kind") != KIND or missing:
        raise SpeechFTError(
            f"{d}: not a {KIND} head (kind {info.get('kind')!r}, missing {', '.join(missing) or 'nothing'}); "
            "delete the pretraining_heads folder to pre-train with a fresh head"
        )
    return PretrainingHeads(tensors, info, d, digest)


class HubertPredictionHead(nn.Module):
    """fairseq HuBERT's scoring: cosine(final_proj(x), label embedding) / logit_temp for every dictionary row.
    forward: (B, F, hidden) -> (B, F, rows) logits; a unit's target is its row (`unit_rows`)."""

    def __init__(self, tensors: dict, info: dict):
        super().__init__()
        rows, final_dim = tensors["label_embs_concat"].shape
        self.final_proj = nn.Linear(tensors["final_proj.weight"].shape[1], final_dim)
        self.label_embs_concat = nn.Parameter(torch.zeros(rows, final_dim))
        self.target_glu = nn.Sequential(nn.Linear(final_dim, 2 * final_dim), nn.GLU()) if info["target_glu"] else None
        self.logit_temp = float(info["logit_temp"])
        self.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        self.register_buffer("unit_rows", torch.tensor(unit_rows_of(info["symbols"])), persistent=False)

    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        x = self.final_proj(last_hidden)
        # fairseq scores in fp32 whatever the training precision: no autocast from here on
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            embs = self.label_embs_concat if self.target_glu is None else self.target_glu(self.label_embs_concat)
            # torch.cosine_similarity's eps (1e-8) on each norm
            x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
            embs = embs.float() / embs.float().norm(dim=-1, keepdim=True).clamp(min=1e-8)
            return (x @ embs.T) / self.logit_temp

    def tensors(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}
