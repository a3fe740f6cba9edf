"""The report's figures (matplotlib, files only), drawn from the tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from relspec_lmeval.experiments.study import NA, Condition, Row, Study, mean_present, value
from relspec_lmeval.experiments.tables import row_sites

__all__ = [
    "figure_intra", "figure_intra_ci", "figure_k_sweep", "figure_k_sweep_ci", "figure_languages", "figure_layers", "figure_matrix",
    "figure_overlap", "figure_templates",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _heatmap(ax, matrix: list[list[float | None]], rows: Sequence[str], cols: Sequence[str], *, cmap: str, vmin: float, vmax: float,
             fmt: Callable[[float], str], title: str):
    """Cells with ``None`` are grey and say n/a."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    cm = _plt().get_cmap(cmap).with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(rows) * len(cols) <= 400:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                r, g, b, _ = cm(image.norm(v)) if v is not None else (1, 1, 1, 1)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
                ax.text(j, i, NA if v is None else fmt(v), ha="center", va="center", fontsize=5.5, color="w" if dark else "k")
    return image


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    _plt().close(fig)


def figure_layers(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 1 from ``layer_rows``: each relation's share of neurons per layer (heatmap), and all sets' neurons per layer and site."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(study.relations) + 2.5))
    layers = list(range(study.num_layers))
    share = [[next(x["share"] for x in rows if x["relation"] == r and x["layer"] == layer) for layer in layers] for r in study.relations]
    image = _heatmap(left, share, study.relations, [str(layer) for layer in layers], cmap="viridis", vmin=0, vmax=max(max(s) for s in share) or 1,
                     fmt=lambda v: f"{100 * v:.0f}", title="share of each relation's neurons per layer (%)")
    if study.num_layers > 20:
        for text in left.texts:
            text.set_visible(False)
    left.set_xlabel("layer")
    fig.colorbar(image, ax=left, fraction=0.03, label="share")
    bottom = [0] * len(layers)
    for site in row_sites(rows):
        counts = [sum(x[site] for x in rows if x["layer"] == layer) for layer in layers]
        right.bar(layers, counts, bottom=bottom, label=site)
        bottom = [b + c for b, c in zip(bottom, counts)]
    right.set_xticks(layers if len(layers) <= 40 else layers[::4])
    right.set_xlabel("layer")
    right.set_ylabel("neurons (all relations)")
    right.set_title("per layer and site", fontsize=9)
    right.legend(fontsize=7)
    _save(fig, path)


def figure_overlap(study: Study, path: Path) -> None:
    """Fig. 2: the neurons each two relations' sets share, as counts and as Jaccard indices."""
    plt = _plt()
    rel = study.relations
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rel) + 2.5))
    counts = [[study.overlaps[a][b] for b in rel] for a in rel]
    jac = [[study.jaccard[a][b] for b in rel] for a in rel]

    def off_diagonal_max(m: list[list[float]]) -> float:  # the diagonal (a set with itself) would wash out the rest
        return max((v for i, row in enumerate(m) for j, v in enumerate(row) if i != j), default=0) or 1

    _heatmap(axes[0], counts, rel, rel, cmap="Blues", vmin=0, vmax=off_diagonal_max(counts), fmt=lambda v: f"{v:.0f}", title="shared neurons")
    image = _heatmap(axes[1], jac, rel, rel, cmap="Blues", vmin=0, vmax=off_diagonal_max(jac), fmt=lambda v: f"{v:.2f}", title="Jaccard index")
    fig.colorbar(image, ax=axes[1], fraction=0.03)
    _save(fig, path)


def figure_intra(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 3 from ``intra_rows``: accuracy original, own set off and random sets off (mean ± sd, each seed a dot), P^eva and P^det."""
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.8 * len(study.relations) + 2), 7))
    for ax, split in zip(axes, ("P^eva", "P^det")):
        part = [r for r in rows if r["split"] == split]
        x = range(len(part))
        nan = float("nan")
        ax.bar([i - 0.27 for i in x], [r["original"] if r["original"] is not None else nan for r in part], 0.27, label="original")
        ax.bar(list(x), [r["own"] if r["own"] is not None else nan for r in part], 0.27, label="own set off")
        ax.bar([i + 0.27 for i in x], [r["random_mean"] if r["random_mean"] is not None else nan for r in part], 0.27,
               yerr=[r["random_std"] or 0 for r in part], capsize=2, label=f"random sets off (mean ± sd, {len(study.seeds)} seeds)")
        for i, r in enumerate(part):
            seeds = [value(study, Condition("random", r["relation"], seed=s), study.suite.eva if split == "P^eva" else study.suite.det, r["relation"]) for s in study.seeds]
            ax.plot([i + 0.27] * len(seeds), [s if s is not None else nan for s in seeds], ".", color="k", markersize=2)
        ax.set_xticks(list(x), [r["relation"] for r in part], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"accuracy on {split}")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def figure_matrix(study: Study, rows: list[Row], path: Path, title: str, scale: float | None = 1.0) -> None:
    """Drops as a heatmap: relative (``scale`` 1: ±100%) or, ``scale=None``, in nats, symmetric around 0 at the largest cell."""
    plt = _plt()
    rel = study.relations
    fig, ax = plt.subplots(figsize=(0.55 * len(rel) + 3, 0.5 * len(rel) + 2))
    matrix = [[row[c] for c in rel] for row in rows]
    if scale is None:
        scale = max((abs(v) for row in matrix for v in row if v is not None), default=0) or 1.0
        fmt, label = (lambda v: f"{v:.1f}"), "drop in nats (negative: more probable)"
    else:
        fmt, label = (lambda v: f"{100 * v:.0f}"), "relative drop (negative: improved)"
    image = _heatmap(ax, matrix, rel, rel, cmap="RdBu_r", vmin=-scale, vmax=scale, fmt=fmt, title=title)
    ax.set_xlabel("evaluated relation")
    ax.set_ylabel("deactivated relation")
    fig.colorbar(image, ax=ax, fraction=0.04, label=label)
    _save(fig, path)


def figure_k_sweep(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 5 from ``k_sweep_rows``: P^eva accuracy against k (log), own relation and the others, with the original as dashed lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = study.ks
    base = [r for r in rows if r["k"] == 0]
    for r in study.relations:
        own = [next((x["own_acc"] for x in rows if x["k"] == k and x["relation"] == r), None) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in own], color="tab:red", alpha=0.25, linewidth=0.8)
    for key, color, label in (("own_acc", "tab:red", "own relation"), ("others_acc", "tab:blue", "other relations")):
        mean = [mean_present([x[key] for x in rows if x["k"] == k]) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in mean], "o-", color=color, label=f"{label} (mean)")
        original = mean_present([x[key] for x in base])
        if original is not None:
            ax.axhline(original, color=color, linestyle="--", linewidth=0.8, label=f"{label}, original")
    if ks:  # no k below the model's size: an empty plot, not a log scale of nothing
        ax.set_xscale("log")
    ax.set_xlabel("k (top-k neurons of the relation deactivated)")
    ax.set_ylabel("accuracy on P^eva")
    ax.legend(fontsize=7)
    _save(fig, path)


def figure_languages(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 7 from ``language_rows``: each relation's own-set drop per language, as a heatmap."""
    plt = _plt()
    langs = ["en", *study.suite.languages]
    fig, ax = plt.subplots(figsize=(0.7 * len(langs) + 4, 0.45 * len(study.relations) + 2))
    matrix = [[next(x["drop"] for x in rows if x["relation"] == r and x["language"] == lang) for lang in langs] for r in study.relations]
    image = _heatmap(ax, matrix, study.relations, langs, cmap="RdBu_r", vmin=-1, vmax=1, fmt=lambda v: f"{100 * v:.0f}",
                     title="own-set drop per language (%)")
    fig.colorbar(image, ax=ax, fraction=0.05)
    _save(fig, path)


def figure_templates(study: Study, rows: list[Row], t2_matrix: list[Row], path: Path) -> None:
    """Fig. 8 from ``template_rows``: own-set drops with template 1 and 2 side by side, and the drop matrix on P^eva-2."""
    plt = _plt()
    rel = study.relations
    fig, (left, right) = plt.subplots(1, 2, figsize=(0.9 * len(rel) + 7, 0.45 * len(rel) + 3))
    x = range(len(rows))
    for offset, key, label in ((-0.2, "eva_drop", "P^eva (template 1)"), (0.2, "t2_drop", "P^eva-2 (template 2)")):
        left.bar([i + offset for i in x], [float("nan") if r[key] is None else r[key] for r in rows], 0.4, label=label)
    left.set_xticks(list(x), rel, rotation=60, ha="right", fontsize=7)
    left.set_ylabel("own-set relative drop")
    left.axhline(0, color="k", linewidth=0.5)
    left.legend(fontsize=7)
    image = _heatmap(right, [[row[c] for c in rel] for row in t2_matrix], rel, rel, cmap="RdBu_r", vmin=-1, vmax=1,
                     fmt=lambda v: f"{100 * v:.0f}", title="drop matrix on P^eva-2 (%)")
    fig.colorbar(image, ax=right, fraction=0.04)
    _save(fig, path)




def _errors(rows: list[Row], key: str) -> tuple[list[float], list[list[float]]]:
    """Values and asymmetric error bars (``key``, ``key_low``, ``key_high``; NaN where absent)."""
    nan = float("nan")
    values = [nan if r[key] is None else r[key] for r in rows]
    low = [0.0 if r[key] is None or r[f"{key}_low"] is None else r[key] - r[f"{key}_low"] for r in rows]
    high = [0.0 if r[key] is None or r[f"{key}_high"] is None else r[f"{key}_high"] - r[key] for r in rows]
    return values, [low, high]


def figure_intra_ci(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 3 in log-probability: own and random drops (nats) with their 95% intervals, on P^eva and P^det."""
    plt = _plt()
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, axes = plt.subplots(len(splits), 1, figsize=(max(6, 0.8 * len(study.relations) + 2), 3.5 * len(splits)), squeeze=False)
    for ax, split in zip(axes[:, 0], splits):
        part = [r for r in rows if r["split"] == split]
        x = range(len(part))
        for offset, key, label in ((-0.27, "own_drop", "own set off"), (0.0, "random_drop", "uniform random sets off"),
                                   (0.27, "site_drop", "site-matched random sets off")):
            values, err = _errors(part, key)
            ax.bar([i + offset for i in x], values, 0.27, yerr=err, capsize=2, label=label)
        ax.axhline(0, color="k", linewidth=0.5)
        ax.set_xticks(list(x), [r["relation"] for r in part], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"drop of the gold's log-prob on {split} (nats)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    _save(fig, path)


def figure_k_sweep_ci(study: Study, rows: list[Row], path: Path) -> None:
    """Fig. 5 in log-probability: per k, the own relation's drop and the others' mean drop (nats), mean over relations."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = sorted({r["k"] for r in rows})
    for r in study.relations:
        own = [next((x["own_drop"] for x in rows if x["k"] == k and x["relation"] == r), None) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in own], color="tab:red", alpha=0.25, linewidth=0.8)
    for key, color, label in (("own_drop", "tab:red", "own relation"), ("others_drop", "tab:blue", "other relations")):
        mean = [mean_present([x[key] for x in rows if x["k"] == k]) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in mean], "o-", color=color, label=f"{label} (mean)")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("k (top-k neurons of the relation deactivated)")
    ax.set_ylabel("drop of the gold's log-prob on P^eva (nats)")
    ax.legend(fontsize=7)
    _save(fig, path)
