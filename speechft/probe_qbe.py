"""Query by example (SUPERB QbE): no training; DTW over one layer's frame features at a time, the layer
chosen on dev; MTWV.

For each layer of the frozen encoder: the split's frames are standardised with the split's own statistics
(per dimension), every (query, document) pair is aligned by subsequence DTW on the cosine distance (the
query matched whole, anywhere in the document), and the score is minus the mean cost along the best
path (cost / query frames). Scores are z-normalised per query over the documents (as QUESST systems do,
so one threshold serves all queries) and scored by MTWV (beta 999.9, one trial per query-document pair).
The layer with the best dev MTWV is reported on test; results.json records it (`chosen_layer`, and
`layer_weights` one-hot) with every layer's dev and test MTWV (`layer_search`).

DTW steps: a query frame may stay on a document frame, advance one or skip one (slopes 0 to 2), which
lets every query row be computed for all documents at once (s3prl's QbE DTW allows arbitrary horizontal
runs instead; a deviation for speed). MTWV is computed here until speechft.metrics has it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .metrics_superb import mtwv

BETA = 999.9


def dtw_scores(query: torch.Tensor, docs: torch.Tensor, doc_lengths: torch.Tensor) -> torch.Tensor:
    """query (Lq, D) and docs (N, Ld, D), both unit-norm rows -> (N,) minus the mean path cost."""
    cost = 1 - torch.einsum("qd,nld->nql", query, docs)  # (N, Lq, Ld) cosine distance
    pad = torch.arange(docs.shape[1])[None, :] >= doc_lengths[:, None]
    cost = cost.masked_fill(pad[:, None, :], float("inf"))
    acc = cost[:, 0]  # the query may start anywhere in the document
    inf = torch.full((acc.shape[0], 1), float("inf"))
    for i in range(1, cost.shape[1]):
        stay, step = acc, torch.cat([inf, acc[:, :-1]], 1)
        skip = torch.cat([inf, inf, acc[:, :-2]], 1)
        acc = cost[:, i] + torch.minimum(torch.minimum(stay, step), skip)
    return -acc.min(1).values / cost.shape[1]


def _layer_units(feats, layer: int) -> list[torch.Tensor]:
    x = [torch.from_numpy(np.asarray(feats.get(i)[:, layer], dtype=np.float32)) for i in range(len(feats.index))]
    allx = torch.cat(x)
    mean, std = allx.mean(0), allx.std(0).clamp(min=1e-5)
    return [torch.nn.functional.normalize((u - mean) / std, dim=1) for u in x]


def split_scores(task, feats, split: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """[Q, D] z-normalised DTW scores of one layer and the [Q, D] truth."""
    units = _layer_units(feats, layer)
    queries = sorted({q for q, _, _ in task.trials[split]})
    docs = sorted({d for _, d, _ in task.trials[split]})
    truth = {(q, d): o for q, d, o in task.trials[split]}
    lengths = torch.tensor([len(units[d]) for d in docs])
    padded = torch.nn.utils.rnn.pad_sequence([units[d] for d in docs], batch_first=True)
    scores = np.stack([dtw_scores(units[q], padded, lengths).numpy() for q in queries]).astype(np.float64)
    scores = (scores - scores.mean(1, keepdims=True)) / (scores.std(1, keepdims=True) + 1e-9)
    occurs = np.array([[truth[(q, d)] for d in docs] for q in queries])
    return scores, occurs


def qbe_probe(provider, cfg, progress: bool = True) -> dict:
    """probe.probe_task for a qbe task: every layer scored on dev and test, the best dev layer reported."""
    from .progress import progress_bar

    task, source = provider.task, provider.source
    t0 = time.perf_counter()
    feats = {s: provider.get(s) for s in ("dev", "test")}
    search = []
    bar = progress_bar(
        total=source.num_states, desc=f"qbe {source.name}/{task.name}", unit="layer", disable=not progress
    )
    for layer in range(source.num_states):
        search.append({"layer": layer, **{s: mtwv(*split_scores(task, feats[s], s, layer)) for s in feats}})
        bar.update(1)
    bar.close()
    best = max(search, key=lambda r: r["dev"])  # the first layer of the best dev MTWV
    weights = [0.0] * source.num_states
    weights[best["layer"]] = 1.0
    return {
        "task": task.name,
        "task_dir": str(task.root),
        "type": task.type,
        "metric": task.metric,
        "lower_is_better": False,
        "dev": best["dev"],
        "test": best["test"],
        "test_std": 0.0,
        "metrics": {"mtwv": best["test"]},
        "dev_per_seed": [best["dev"]],
        "test_per_seed": [best["test"]],
        "seeds": [],
        "chosen_lr": None,
        "chosen_layer": best["layer"],
        "lr_search": [],
        "layer_search": search,
        "layer_weights": weights,
        "layer_weights_per_seed": [weights],
        "num_states": source.num_states,
        "cache": dict(provider.status),
        "encoder_passes": provider.extractions,
        "n": {s: len(task.split(s)) for s in ("train", "dev", "test")},
        "seconds": {
            "extract": provider.extract_seconds,
            "fingerprint": provider.audio.seconds,
            "total": time.perf_counter() - t0,
        },
    }
