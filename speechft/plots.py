"""The one figure helper for every PNG speechft draws (report, analysis, sweep, training curves),
the training curves of a run, and the figures of feature similarity and weight distance that
`speechft analyze` and `speechft sweep` share (report's bar charts stay beside its table logic in report.py).

matplotlib's object API on the Agg canvas: no pyplot, so no global figure registry to leak
figures into, no backend switching (`matplotlib.use`) behind a caller's back, and no display
needed. A figure is written atomically, like every other output.

    fig = figure(6.4, 4.2)
    ax = fig.add_subplot()          # or fig.subplots(1, 2)
    ...
    save_png(fig, out / "plot.png")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .io_utils import atomic_file

DPI = 120


def figure(width: float = 6.4, height: float = 4.2, dpi: int = DPI):
    """A new matplotlib Figure of `width` x `height` inches, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    """Lay the figure out, write it to `path` as a PNG (atomically: a killed run leaves no
    half-written image) and return the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------------------------------
# Training curves (finetune, pretrain)
# ---------------------------------------------------------------------------------------------------
def plot_training_curves(path: Path, rows: list[dict], frozen_steps: int, best_step: int, method: str) -> Path:
    """curves.png of a fine-tuning run: training loss per task, and the dev metric with the end of the
    frozen phase and the chosen (best) step marked."""
    train = [r for r in rows if r["kind"] == "train"]
    dev = [r for r in rows if r["kind"] == "dev"]
    fig = figure(10, 3.6, dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
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
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------------
# Feature similarity and weight distance (analysis, sweep)
# ---------------------------------------------------------------------------------------------------
def _per_layer_plot(
    results: list[dict],
    values_of: Callable[[dict], list],
    ylabel: str,
    title: str,
    path,
    xlabel: str = "layer (hidden state index)",
) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = figure()
    ax = fig.add_subplot()
    for r in results:
        values = values_of(r)
        ax.plot(range(len(values)), values, marker="o", label=r["label"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if results:
        ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_cka_per_layer(results: list[dict], path) -> Path:
    """One line per model: linear CKA with the pre-trained encoder at each layer."""
    return _per_layer_plot(
        results, lambda r: r["cka_per_layer"], "linear CKA vs pre-trained", "Feature similarity per layer", path
    )


def plot_cosine_per_layer(results: list[dict], path) -> Path:
    return _per_layer_plot(
        results,
        lambda r: r["cosine_per_layer"],
        "mean frame cosine vs pre-trained",
        "Frame cosine similarity per layer",
        path,
    )


def plot_distance_per_layer(results: list[dict], path) -> Path:
    """One line per model: ||theta - theta0|| / ||theta0|| per transformer layer."""
    return _per_layer_plot(
        results,
        lambda r: [g["relative"] for g in r["weight_distance"]["per_layer"]],
        "‖θ − θ₀‖ / ‖θ₀‖",
        "Relative weight distance per layer",
        path,
        xlabel="transformer layer (0-based)",
    )


def plot_distance_vs_cka(results: list[dict], path) -> Path:
    """One labelled point per model: total weight distance (x) against mean CKA over layers (y)."""
    fig = figure()
    ax = fig.add_subplot()
    for r in results:
        x, y = r["weight_distance"]["total"]["distance"], r["cka_mean"]
        ax.scatter([x], [y], s=40)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    ax.set_xlabel("weight distance ‖θ − θ₀‖ (changeable parameters)")
    ax.set_ylabel("mean linear CKA over layers")
    ax.margins(0.2)  # room for the labels of the outermost points
    ax.set_title("Weight distance vs feature similarity")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_sweep(sweep: dict, path) -> Path:
    """alpha vs mean CKA (and the target metric on a second axis); per-layer CKA curves beside it."""
    rows = sorted(sweep["results"], key=lambda r: r["alpha"])
    alphas = [r["alpha"] for r in rows]
    per_layer = [r.get("cka_per_layer") for r in rows]
    has_layers = all(isinstance(p, list) and p for p in per_layer) and len({len(p) for p in per_layer}) == 1
    fig = figure(11.0 if has_layers else 6.4, 4.2)
    ax = fig.add_subplot(1, 2 if has_layers else 1, 1)
    ax.plot(alphas, [r["cka_mean"] for r in rows], marker="o", color="C0", label="mean CKA")
    ax.set_xlabel("α (weight of the fine-tuned model)")
    ax.set_ylabel("mean linear CKA vs pre-trained", color="C0")
    ax.grid(alpha=0.3)
    metric = [r.get("target_metric") for r in rows]
    if all(isinstance(m, (int, float)) for m in metric):
        ax2 = ax.twinx()
        ax2.plot(alphas, metric, marker="s", color="C1", label="target metric")
        ax2.set_ylabel(f"target metric{' (' + str(sweep['metric']) + ')' if sweep.get('metric') else ''}", color="C1")
    ax.set_title("Merge coefficient sweep")
    if has_layers:
        from matplotlib import colormaps

        ax3 = fig.add_subplot(1, 2, 2)
        n = len(per_layer[0])
        cmap = colormaps["viridis"]
        for layer in range(n):
            ax3.plot(alphas, [p[layer] for p in per_layer], color=cmap(layer / max(1, n - 1)), label=f"layer {layer}")
        ax3.set_xlabel("α")
        ax3.set_ylabel("linear CKA")
        ax3.set_title("Per layer")
        ax3.grid(alpha=0.3)
        ax3.legend(fontsize="x-small", ncol=2)
    return save_png(fig, path)
