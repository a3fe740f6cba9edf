"""The tables, figures and ``report.md`` of ``relspec reproduce``, from its lm-eval results.

Pure functions of numbers already measured (no model code): ``relspec reproduce`` collects
each experimental condition's lm-eval metrics into a ``Study``; ``write_report`` turns it
into ``tables/*.csv|json``, ``figures/*.png`` and ``report.md`` (PAPER.md, Findings).

Drops are relative, (original − ablated) / original; where the original accuracy is 0 there
is no drop (``None`` here, ``n/a`` in files and figures), never a division by zero.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relspec_lmeval.neuron_set import SITES

NA = "n/a"
Row = dict[str, Any]


@dataclass(frozen=True)
class Suite:
    """The task groups of one suite; a task is ``<group>_<relation>``."""

    name: str
    eva: str  # P^eva
    det: str  # P^det
    t2: str  # P^eva-2, the second template
    ppl: str  # relation-neutral perplexity
    languages: tuple[str, ...] = ()  # groups ``<eva>_<language>``

    def language_group(self, language: str) -> str:
        return self.eva if language == "en" else f"{self.eva}_{language}"

    def groups(self) -> list[str]:
        return [self.eva, self.det, self.t2, self.ppl, *(self.language_group(lang) for lang in self.languages)]


@dataclass(frozen=True)
class Condition:
    """What was switched off: nothing (``baseline``), a relation's set (``own``), a random
    control (``random``, ``seed``), its top-k by score (``topk``) or ranks skip+1..skip+k (``ranks``)."""

    kind: str
    relation: str | None = None
    seed: int | None = None
    k: int | None = None
    skip: int | None = None

    def label(self) -> str:
        parts = [self.kind, self.relation, *(f"{n}{v}" for n, v in (("seed", self.seed), ("k", self.k), ("skip", self.skip)) if v is not None)]
        return "-".join(p for p in parts if p)


@dataclass
class Measurement:
    """A condition's lm-eval numbers: task → metric → value, and 0/1 per document for recall tasks."""

    metrics: dict[str, dict[str, float]]
    per_sample: dict[str, list[int]]


@dataclass(frozen=True)
class SetStats:
    count: int
    per_layer: dict[int, dict[str, int]]  # layer → site → neurons


@dataclass
class Study:
    model: str
    suite: Suite
    relations: list[str]
    seeds: list[int]
    ks: list[int]
    num_layers: int
    sets: dict[str, SetStats]
    overlaps: dict[str, dict[str, int]]
    jaccard: dict[str, dict[str, float]]
    results: dict[Condition, Measurement]
    settings: dict[str, Any]  # what report.md states about the plan (limits, folders, command, timings)


BASELINE = Condition("baseline")


# ---------------------------------------------------------------------------- numbers


def relative_drop(original: float | None, ablated: float | None) -> float | None:
    if original is None or ablated is None or original == 0:
        return None
    return (original - ablated) / original


def value(study: Study, cond: Condition, group: str, relation: str, metric: str = "acc") -> float | None:
    measured = study.results.get(cond)
    return None if measured is None else measured.metrics.get(f"{group}_{relation}", {}).get(metric)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def layer_rows(study: Study) -> list[Row]:
    rows = []
    for r in study.relations:
        stats = study.sets[r]
        for layer in range(study.num_layers):
            counts = stats.per_layer.get(layer, {})
            total = sum(counts.get(site, 0) for site in SITES)
            rows.append({"relation": r, "layer": layer, **{s: counts.get(s, 0) for s in SITES}, "total": total,
                         "share": total / stats.count if stats.count else 0.0})
    return rows


def pair_rows(study: Study, table: dict[str, dict[str, Any]]) -> list[Row]:
    return [{"relation": a, **{b: table[a][b] for b in study.relations}} for a in study.relations]


def intra_rows(study: Study) -> list[Row]:
    """Fig. 3: original vs own set vs random sets, on P^eva and P^det."""
    rows = []
    for split, group in (("P^eva", study.suite.eva), ("P^det", study.suite.det)):
        for r in study.relations:
            original = value(study, BASELINE, group, r)
            own = value(study, Condition("own", r), group, r)
            randoms = [v for s in study.seeds if (v := value(study, Condition("random", r, seed=s), group, r)) is not None]
            mean = statistics.fmean(randoms) if randoms else None
            rows.append({
                "split": split, "relation": r, "original": original, "own": own, "own_drop": relative_drop(original, own),
                "random_mean": mean, "random_std": statistics.stdev(randoms) if len(randoms) > 1 else None,
                "random_min": min(randoms, default=None), "random_max": max(randoms, default=None),
                "random_drop": relative_drop(original, mean), "seeds": len(randoms),
            })
    return rows


def matrix_rows(study: Study, group: str, metric: Callable[[float | None, float | None], float | None] = relative_drop) -> list[Row]:
    """Fig. 4: row = deactivated relation, column = evaluated relation; ``metric(original, ablated)``."""
    rows = []
    for row in study.relations:
        cond = Condition("own", row)
        rows.append({"deactivated": row, **{c: metric(value(study, BASELINE, group, c), value(study, cond, group, c)) for c in study.relations}})
    return rows


def k_sweep_rows(study: Study) -> list[Row]:
    """Fig. 5: accuracy on P^eva with a relation's top-k off, on itself and on the others (k = 0: original)."""
    rows = []
    for k in [0, *study.ks]:
        for r in study.relations:
            cond = BASELINE if k == 0 else Condition("topk", r, k=k)
            if cond not in study.results:
                continue
            others = [c for c in study.relations if c != r]
            acc = {c: value(study, cond, study.suite.eva, c) for c in study.relations}
            base = {c: value(study, BASELINE, study.suite.eva, c) for c in study.relations}
            rows.append({
                "k": k, "relation": r, "own_acc": acc[r], "others_acc": _mean([acc[c] for c in others]),
                "own_drop": relative_drop(base[r], acc[r]),
                "others_drop": _mean([relative_drop(base[c], acc[c]) for c in others]),
            })
    return rows


def cumulativity_rows(study: Study) -> list[Row]:
    """Table 3: for consecutive k (a, b), of the P^eva prompts right with top-a off and wrong with
    top-b off, the share still wrong with only ranks a+1..b off (1: those ranks do it alone)."""
    rows = []
    for a, b in zip(study.ks, study.ks[1:]):
        pooled = [0, 0]
        for r in study.relations:
            runs = [study.results.get(c) for c in (Condition("topk", r, k=a), Condition("topk", r, k=b), Condition("ranks", r, k=b - a, skip=a))]
            if any(m is None for m in runs):
                continue
            task = f"{study.suite.eva}_{r}"
            top_a, top_b, ranks = (m.per_sample[task] for m in runs)
            flipped = [i for i in range(len(top_a)) if top_a[i] == 1 and top_b[i] == 0]
            still = sum(1 for i in flipped if ranks[i] == 0)
            pooled[0] += len(flipped)
            pooled[1] += still
            rows.append({"a": a, "b": b, "relation": r, "flipped": len(flipped), "still_wrong": still,
                         "share": still / len(flipped) if flipped else None})
        rows.append({"a": a, "b": b, "relation": "all", "flipped": pooled[0], "still_wrong": pooled[1],
                     "share": pooled[1] / pooled[0] if pooled[0] else None})
    return rows


def perplexity_rows(study: Study) -> list[Row]:
    """Table 2: word perplexity of each relation's neutral sentences, before and with its set off."""
    rows = []
    for r in study.relations:
        before = value(study, BASELINE, study.suite.ppl, r, "word_perplexity")
        after = value(study, Condition("own", r), study.suite.ppl, r, "word_perplexity")
        rows.append({"relation": r, "original": before, "ablated": after,
                     "change": after / before - 1 if before and after is not None else None})
    return rows


def language_rows(study: Study) -> list[Row]:
    """Fig. 7: each relation's own drop per language (English = P^eva)."""
    rows = []
    for lang in ("en", *study.suite.languages):
        group = study.suite.language_group(lang)
        for r in study.relations:
            original, ablated = value(study, BASELINE, group, r), value(study, Condition("own", r), group, r)
            rows.append({"language": lang, "relation": r, "original": original, "ablated": ablated,
                         "drop": relative_drop(original, ablated)})
    return rows


def template_rows(study: Study) -> list[Row]:
    """Fig. 8: each relation's own drop with the first (P^eva) and the second template (P^eva-2)."""
    rows = []
    for r in study.relations:
        row: Row = {"relation": r}
        for name, group in (("eva", study.suite.eva), ("t2", study.suite.t2)):
            original, ablated = value(study, BASELINE, group, r), value(study, Condition("own", r), group, r)
            row |= {f"{name}_original": original, f"{name}_ablated": ablated, f"{name}_drop": relative_drop(original, ablated)}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- files


def _cell(v: Any) -> Any:
    return NA if v is None else v


def write_table(rows: list[Row], folder: Path, name: str) -> None:
    """``<name>.csv`` (full precision, ``n/a`` for undefined) and ``<name>.json`` (null)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return NA
    if isinstance(v, float):  # + 0.0 turns a rounded -0.0 into 0.0
        return f"{round(100 * v, 1) + 0.0:.1f}%" if percent else f"{v:.3g}" if abs(v) >= 1000 else f"{round(v, 3) + 0.0:.3f}"
    return str(v)


def markdown(rows: list[Row], percent: Sequence[str] = ()) -> str:
    if not rows:
        return "_(no data)_"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(row[h], h in percent) for h in head) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- figures


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
    for site in SITES:
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


def figure_matrix(study: Study, rows: list[Row], path: Path, title: str) -> None:
    plt = _plt()
    rel = study.relations
    fig, ax = plt.subplots(figsize=(0.55 * len(rel) + 3, 0.5 * len(rel) + 2))
    image = _heatmap(ax, [[row[c] for c in rel] for row in rows], rel, rel, cmap="RdBu_r", vmin=-1, vmax=1,
                     fmt=lambda v: f"{100 * v:.0f}", title=title)
    ax.set_xlabel("evaluated relation")
    ax.set_ylabel("deactivated relation")
    fig.colorbar(image, ax=ax, fraction=0.04, label="relative drop (negative: improved)")
    _save(fig, path)


def figure_k_sweep(study: Study, rows: list[Row], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = study.ks
    base = [r for r in rows if r["k"] == 0]
    for r in study.relations:
        own = [next((x["own_acc"] for x in rows if x["k"] == k and x["relation"] == r), None) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in own], color="tab:red", alpha=0.25, linewidth=0.8)
    for key, color, label in (("own_acc", "tab:red", "own relation"), ("others_acc", "tab:blue", "other relations")):
        mean = [_mean([x[key] for x in rows if x["k"] == k]) for k in ks]
        ax.plot(ks, [float("nan") if v is None else v for v in mean], "o-", color=color, label=f"{label} (mean)")
        original = _mean([x[key] for x in base])
        if original is not None:
            ax.axhline(original, color=color, linestyle="--", linewidth=0.8, label=f"{label}, original")
    ax.set_xscale("log")
    ax.set_xlabel("k (top-k neurons of the relation deactivated)")
    ax.set_ylabel("accuracy on P^eva")
    ax.legend(fontsize=7)
    _save(fig, path)


def figure_languages(study: Study, rows: list[Row], path: Path) -> None:
    plt = _plt()
    langs = ["en", *study.suite.languages]
    fig, ax = plt.subplots(figsize=(0.7 * len(langs) + 4, 0.45 * len(study.relations) + 2))
    matrix = [[next(x["drop"] for x in rows if x["relation"] == r and x["language"] == lang) for lang in langs] for r in study.relations]
    image = _heatmap(ax, matrix, study.relations, langs, cmap="RdBu_r", vmin=-1, vmax=1, fmt=lambda v: f"{100 * v:.0f}",
                     title="own-set drop per language (%)")
    fig.colorbar(image, ax=ax, fraction=0.05)
    _save(fig, path)


def figure_templates(study: Study, rows: list[Row], t2_matrix: list[Row], path: Path) -> None:
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


# ---------------------------------------------------------------------------- readings


def _pct(v: float | None) -> str:
    return _fmt(v, percent=True)


def read_layers(study: Study, rows: list[Row]) -> str:
    n = study.num_layers
    lo, hi = n // 3, n - n // 3  # the middle third of the layers
    middle = sum(r["total"] for r in rows if lo <= r["layer"] < hi)
    total = sum(r["total"] for r in rows) or 1
    peaks = {}
    for r in study.relations:
        mine = [x for x in rows if x["relation"] == r]
        peaks[r] = max(mine, key=lambda x: (x["total"], -x["layer"]))["layer"]
    sites = {s: sum(r[s] for r in rows) / total for s in SITES}
    return (f"{_pct(middle / total)} of all neurons sit in the middle third of the layers ({lo}–{hi - 1}; "
            f"{_pct((hi - lo) / n)} of the layers). Peak layer per relation: "
            + ", ".join(f"{r} {p}" for r, p in peaks.items()) + ". By site: " + ", ".join(f"{s} {_pct(v)}" for s, v in sites.items())
            + ". Finding 1 (paper): most relation neurons are in the middle layers.")


def read_overlap(study: Study) -> str:
    pairs = [(study.jaccard[a][b], study.overlaps[a][b], a, b) for i, a in enumerate(study.relations) for b in study.relations[i + 1:]]
    if not pairs:
        return "One relation only: no overlaps."
    top = sorted(pairs, reverse=True)[:3]
    text = "Largest overlaps: " + "; ".join(f"{a} & {b}: {n} shared (Jaccard {j:.2f})" for j, n, a, b in top) + "."
    if {"person_father", "person_mother"} <= set(study.relations):
        n = study.overlaps["person_father"]["person_mother"]
        text += f" person_father & person_mother share {n} neurons (paper, Llama-2-7B: 2,053 of 3,000)."
    return text


def read_intra(rows: list[Row]) -> str:
    parts = []
    for split in ("P^eva", "P^det"):
        part = [r for r in rows if r["split"] == split]
        own, rnd = _mean([r["own_drop"] for r in part]), _mean([r["random_drop"] for r in part])
        beats = sum(1 for r in part if r["own"] is not None and r["random_min"] is not None and r["own"] < r["random_min"])
        na = [r["relation"] for r in part if r["own_drop"] is None]
        parts.append(f"On {split} the own set drops accuracy by {_pct(own)} on average, random sets of the same size by "
                     f"{_pct(rnd)}; for {beats} of {len(part)} relations the own set is below every random seed."
                     + (f" No drop for {', '.join(na)} (original accuracy 0)." if na else ""))
    return " ".join(parts) + " Finding 2 (paper): clear drops for the own set, about none for random sets, also on unseen subjects (P^eva)."


def read_matrix(study: Study, rows: list[Row]) -> str:
    rel = study.relations
    diag = _mean([row[row["deactivated"]] for row in rows])
    off = [(row[c], row["deactivated"], c) for row in rows for c in rel if c != row["deactivated"] and row[c] is not None]
    text = f"Mean drop on the diagonal (own relation) {_pct(diag)}, off the diagonal {_pct(_mean([v for v, _, _ in off]))}."
    if off:
        worst = sorted(off, reverse=True)[:3]
        text += " Largest drops of another relation (versatility, finding 3): " + "; ".join(f"{a} → {c} {_pct(v)}" for v, a, c in worst) + "."
        negative = sorted(x for x in off if x[0] < 0)
        text += (f" {len(negative)} negative cells, where the other relation improved (interference, finding 4): "
                 + "; ".join(f"{a} → {c} {_pct(v)}" for v, a, c in negative[:3]) + "." if negative
                 else " No negative cell: no relation improved when another's set was off (interference, finding 4, not seen).")
    na = [c for c in rel if value(study, BASELINE, study.suite.eva, c) == 0]
    if na:
        text += f" n/a: original accuracy 0 for {', '.join(na)}, so no relative drop is defined in those columns."
    return text


def read_k_sweep(study: Study, rows: list[Row]) -> str:
    parts = []
    for k in study.ks:
        at = [r for r in rows if r["k"] == k]
        if at:
            parts.append(f"k={k}: own {_pct(_mean([r['own_drop'] for r in at]))}, others {_pct(_mean([r['others_drop'] for r in at]))}")
    return ("Mean relative drop on P^eva by k — " + "; ".join(parts) + ". Finding 5 (paper): the own relation falls steadily "
            "with k; the other relations stay stable until 3k–10k.") if parts else "No k-sweep runs."


def read_cumulativity(rows: list[Row]) -> str:
    pooled = [r for r in rows if r["relation"] == "all"]
    if not pooled:
        return "Fewer than two k values: no consecutive thresholds."
    return ("Pooled over relations: " + "; ".join(f"{r['a']}→{r['b']}: {_pct(r['share'])} of {r['flipped']}" for r in pooled)
            + ". A share near 100% means ranks a+1..b alone break those prompts; a low share means they only fail "
            "together with the top-a neurons, i.e. the effect is cumulative.")


def read_perplexity(rows: list[Row]) -> str:
    changes = [r["change"] for r in rows if r["change"] is not None]
    if not changes:
        return "No perplexity numbers."
    worst = max(rows, key=lambda r: abs(r["change"]) if r["change"] is not None else -1)
    return (f"Median change of word perplexity {_pct(statistics.median(changes))}; largest {worst['relation']} {_pct(worst['change'])}. "
            "Finding 8 (paper): general language modelling is mostly unchanged.")


def read_languages(study: Study, rows: list[Row]) -> str:
    if not study.suite.languages:
        return f"Skipped: the {study.suite.name} suite has no multilingual task groups."
    means = {lang: _mean([r["drop"] for r in rows if r["language"] == lang]) for lang in ("en", *study.suite.languages)}
    return ("Mean own-set drop per language: " + ", ".join(f"{k} {_pct(v)}" for k, v in means.items())
            + ". Finding 6 (paper): English-identified neurons also hurt recall in de, es, fr, zh, ja.")


def read_templates(rows: list[Row]) -> str:
    pairs = [(r["eva_drop"], r["t2_drop"]) for r in rows if r["eva_drop"] is not None and r["t2_drop"] is not None]
    text = (f"Mean own-set drop: P^eva {_pct(_mean([r['eva_drop'] for r in rows]))}, "
            f"P^eva-2 {_pct(_mean([r['t2_drop'] for r in rows]))}")
    if len(pairs) > 2 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
        text += f"; correlation over relations {statistics.correlation(*zip(*pairs)):.2f}"
    return text + ". Finding 7 (paper): the second template shows the same drops."


# ---------------------------------------------------------------------------- report


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def write_report(study: Study, out: Path) -> Path:
    """Write ``tables/``, ``figures/`` and ``report.md`` under ``out``; returns the report's path."""
    tables, figures = out / "tables", out / "figures"
    s, suite = study.settings, study.suite
    layers = layer_rows(study)
    intra = intra_rows(study)
    drops, accs = matrix_rows(study, suite.eva), matrix_rows(study, suite.eva, lambda o, a: a)
    sweep = k_sweep_rows(study)
    cumul = cumulativity_rows(study)
    ppl = perplexity_rows(study)
    langs = language_rows(study) if suite.languages else []
    templates, t2_drops = template_rows(study), matrix_rows(study, suite.t2)
    for name, rows in (("fig1_layers", layers), ("fig2_overlap_counts", pair_rows(study, study.overlaps)),
                       ("fig2_overlap_jaccard", pair_rows(study, study.jaccard)), ("fig3_intra", intra),
                       ("fig4_drop_matrix", drops), ("fig4_accuracy_matrix", accs), ("fig5_k_sweep", sweep),
                       ("table3_cumulativity", cumul), ("table2_perplexity", ppl), ("fig7_languages", langs),
                       ("fig8_second_template", templates), ("fig8_drop_matrix_t2", t2_drops)):
        if name != "fig7_languages" or suite.languages:
            write_table(rows, tables, name)
    figure_layers(study, layers, figures / "fig1_layers.png")
    figure_overlap(study, figures / "fig2_overlap.png")
    figure_intra(study, intra, figures / "fig3_intra.png")
    figure_matrix(study, drops, figures / "fig4_drop_matrix.png", "relative drop on P^eva (%)")
    figure_k_sweep(study, sweep, figures / "fig5_k_sweep.png")
    if suite.languages:
        figure_languages(study, langs, figures / "fig7_languages.png")
    figure_templates(study, templates, t2_drops, figures / "fig8_second_template.png")

    lines = [
        f"# Relation-specific neurons: {study.model} ({suite.name} suite)",
        "",
        "Reproduction of the experiments of Liu et al., *On Relation-Specific Neurons in Large Language Models* "
        "(EMNLP 2025), with `relspec reproduce`. Every number is an lm-eval result (`simple_evaluate` with the "
        "`relspec-hf` model); each run's results JSON, with the equivalent `lm_eval` command, is in `runs/`.",
        "",
        f"- Command: `{s.get('command') or 'relspec reproduce'}`",
        f"- Neuron sets: `{s['neuron_sets']}` ({', '.join(f'{r} {study.sets[r].count}' for r in study.relations)} neurons)",
        f"- Relations: {len(study.relations)}; random seeds: {len(study.seeds)}; k sweep: {', '.join(map(str, study.ks)) or 'none'}",
        f"- Documents per task: {s['limit'] or 'all'} (P^eva, P^eva-2, languages, perplexity), {s['det_limit'] or 'all'} (P^det)"
        + (" — `--quick` plan" if s.get("quick") else ""),
        f"- Plan: {s['runs']} lm-eval runs over {s['docs']:,} documents. Run time of the whole plan (sum of the runs' "
        f"recorded times{', on ' + s['device'] if s.get('device') else ''}): **{_duration(s['run_seconds'])}**; this invocation "
        + (f"ran {s['new_runs']} of them in {_duration(s['elapsed'])}." if s["new_runs"] else "found every run stored and ran none."),
        "",
        "Relative drop = (original − ablated) / original; **n/a** where the original accuracy is 0.",
        "",
        "## Fig. 1: where the neurons are", "", "![layers](figures/fig1_layers.png)", "", read_layers(study, layers), "",
        "Table: `tables/fig1_layers.csv`.", "",
        "## Fig. 2: overlap between relations", "", "![overlap](figures/fig2_overlap.png)", "", read_overlap(study), "",
        "Tables: `tables/fig2_overlap_counts.csv`, `tables/fig2_overlap_jaccard.csv`.", "",
        "## Fig. 3: own set vs random sets", "", "![intra](figures/fig3_intra.png)", "", read_intra(intra), "",
        markdown([{k: r[k] for k in ("split", "relation", "original", "own", "own_drop", "random_mean", "random_std", "random_drop")} for r in intra],
                 percent=("own_drop", "random_drop")), "",
        "## Fig. 4: drop matrix (row: deactivated, column: evaluated)", "", "![matrix](figures/fig4_drop_matrix.png)", "",
        read_matrix(study, drops), "", markdown(drops, percent=study.relations), "",
        "Accuracies: `tables/fig4_accuracy_matrix.csv`.", "",
        "## Fig. 5: k sweep", "", "![k sweep](figures/fig5_k_sweep.png)", "", read_k_sweep(study, sweep), "",
        "Table: `tables/fig5_k_sweep.csv`.", "",
        "## Table 3: cumulativity", "", read_cumulativity(cumul), "",
        markdown([r for r in cumul if r["relation"] == "all"], percent=("share",)), "",
        "Per relation: `tables/table3_cumulativity.csv`.", "",
        "## Table 2: relation-neutral perplexity", "", read_perplexity(ppl), "", markdown(ppl, percent=("change",)), "",
        "## Fig. 7: other languages", "",
    ]
    if suite.languages:
        lines += ["![languages](figures/fig7_languages.png)", "", read_languages(study, langs), "", "Table: `tables/fig7_languages.csv`.", ""]
    else:
        lines += [read_languages(study, langs), ""]
    lines += ["## Fig. 8: second template", "", "![templates](figures/fig8_second_template.png)", "", read_templates(templates), "",
              markdown([{k: r[k] for k in ("relation", "eva_drop", "t2_drop")} for r in templates], percent=("eva_drop", "t2_drop")), "",
              "Tables: `tables/fig8_second_template.csv`, `tables/fig8_drop_matrix_t2.csv`.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
