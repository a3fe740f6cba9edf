"""The tables of the report: one function per figure or table of the paper, and their files."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relspec_lmeval.experiments.study import BASELINE, NA, Condition, Row, Study, mean_present, relative_drop, value
from relspec_lmeval.sets.shape import EXPERT_SITES, FFN_SITES, MOE_SITES, SITES
from relspec_lmeval.util.files import atomic_write_text

__all__ = [
    "cumulativity_rows", "fmt_cell", "fmt_ci", "intra_rows", "k_sweep_rows", "language_rows", "layer_rows", "markdown", "matrix_rows",
    "pair_rows", "perplexity_rows", "row_sites", "template_rows", "write_table",
]


def row_sites(rows: list[Row]) -> list[str]:
    """The site columns of ``layer_rows`` (the FFN's always; an attention site when a set has one)."""
    return [s for s in SITES if rows and s in rows[0]]


def layer_rows(study: Study) -> list[Row]:
    """Fig. 1: per relation and layer, its set's neurons per site, their total and the share of the set in that layer."""
    present = {site for r in study.relations for counts in study.sets[r].per_layer.values() for site in counts}
    always = EXPERT_SITES if present & set(MOE_SITES) else FFN_SITES  # a mixture-of-experts model has no gate_proj, …
    sites = [s for s in SITES if s in always or s in present]
    rows = []
    for r in study.relations:
        stats = study.sets[r]
        for layer in range(study.num_layers):
            counts = stats.per_layer.get(layer, {})
            total = sum(counts.get(site, 0) for site in sites)
            rows.append({"relation": r, "layer": layer, **{s: counts.get(s, 0) for s in sites}, "total": total,
                         "share": total / stats.count if stats.count else 0.0})
    return rows


def pair_rows(study: Study, table: dict[str, dict[str, Any]]) -> list[Row]:
    """Fig. 2: a relation × relation ``table`` (shared neurons, Jaccard index) as one row per relation."""
    return [{"relation": a, **{b: table[a][b] for b in study.relations}} for a in study.relations]


def intra_rows(study: Study) -> list[Row]:
    """Fig. 3: original vs own set vs random sets, on P^eva and P^det (and the choice group's ``acc``)."""
    rows = []
    splits = [("P^eva", study.suite.eva), ("P^det", study.suite.det), *([("choice", study.suite.choice)] if study.suite.choice else [])]
    for split, group in splits:
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
                "k": k, "relation": r, "own_acc": acc[r], "others_acc": mean_present([acc[c] for c in others]),
                "own_drop": relative_drop(base[r], acc[r]),
                "others_drop": mean_present([relative_drop(base[c], acc[c]) for c in others]),
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
            top_a, top_b, ranks = (m.per_sample.get(task, {}).get("acc", []) for m in runs)
            if not len(top_a) == len(top_b) == len(ranks):
                continue
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


def _cell(v: Any) -> Any:
    return NA if v is None else v


def write_table(rows: list[Row], folder: Path, name: str) -> None:
    """``<name>.csv`` (full precision, ``n/a`` for undefined) and ``<name>.json`` (null)."""
    atomic_write_text(folder / f"{name}.json", json.dumps(rows, indent=1) + "\n")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["empty"])
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    atomic_write_text(folder / f"{name}.csv", text.getvalue())


def fmt_cell(v: Any, percent: bool = False) -> str:
    """A table cell for markdown: ``n/a`` for None, a float to 3 decimals (3 significant digits from 1000; ``percent``: ``42.0%``)."""
    if v is None:
        return NA
    if isinstance(v, float):  # + 0.0 turns a rounded -0.0 into 0.0
        return f"{round(100 * v, 1) + 0.0:.1f}%" if percent else f"{v:.3g}" if abs(v) >= 1000 else f"{round(v, 3) + 0.0:.3f}"
    return str(v)


def fmt_ci(interval: Any, percent: bool = False, unit: str = "") -> str:
    """``42.0% [30.1%, 55.3%]`` or ``0.412 [0.301, 0.553] nats``: an estimate and its 95% interval (n/a: none)."""
    if interval is None:
        return NA
    cells = [NA if v != v else fmt_cell(float(v), percent) for v in (interval.observed, interval.low, interval.high)]  # NaN: n/a
    return f"{cells[0]} [{cells[1]}, {cells[2]}]" + (f" {unit}" if unit else "")


def markdown(rows: list[Row], percent: Sequence[str] = ()) -> str:
    """``rows`` as a markdown table, columns in the first row's order; the columns named in ``percent`` as percentages."""
    if not rows:
        return "_(no data)_"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt_cell(row[h], h in percent) for h in head) + " |" for row in rows]
    return "\n".join(lines)


