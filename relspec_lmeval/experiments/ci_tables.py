"""The report's tables with 95% intervals, in every metric (``effects.METRICS``) and against both random baselines.

Drops are relative for accuracies (``(original − ablated) / original``, the paper's) and in nats
for the gold's log-probability; ``unit`` says which. ``power`` says whether the relation has
enough correct (accuracies) or scored (log-probability) baseline documents for a verdict to
use it (``effects.has_power``); rows without power are kept, and marked.
"""

from __future__ import annotations

from collections.abc import Sequence

from relspec_lmeval.experiments import effects as fx
from relspec_lmeval.experiments import intervals as iv
from relspec_lmeval.experiments.effects import LOGPROB, METRICS, Metric
from relspec_lmeval.experiments.judging import ALPHA, fmt, split_name
from relspec_lmeval.experiments.stats import holm
from relspec_lmeval.experiments.study import Condition, Row, Study
from relspec_lmeval.experiments.tables import fmt_cell

__all__ = ["intra_ci_rows", "intra_markdown_rows", "matrix_ci_rows", "matrix_wide", "perplexity_ci_rows", "split_ci_rows", "sweep_ci_rows"]

BASELINES = {"random": "random", "random_site": "site"}  # condition kind → column prefix


def _scaled(effect: iv.Effect | None, metric: Metric) -> iv.Interval | None:
    if effect is None:
        return None
    return effect.relative if metric.binary else effect.drop


def _cols(prefix: str, interval: iv.Interval | None) -> Row:
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: interval.observed, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def _support(study: Study, metric: Metric, split: str, r: str) -> Row:
    got = fx.support(study, metric, split, r)
    return {"documents": got[1] if got else None, "support": got[0] if got else None, "power": fx.has_power(study, metric, split, r)}


def _holm_column(rows: list[Row], p_key: str, out_key: str) -> None:
    """Holm over the rows with power and a p (one family), written to ``out_key``; n/a elsewhere."""
    family = [row for row in rows if row["power"] and row.get(p_key) is not None]
    for row, p in zip(family, holm([row[p_key] for row in family])):
        row[out_key] = p
    for row in rows:
        row.setdefault(out_key, None)


def _splits(metric: Metric) -> Sequence[str]:
    return ("eva",) if metric.family == "choice" else ("eva", "det")


def intra_ci_rows(study: Study) -> list[Row]:
    """Fig. 3 with intervals: per metric, split and relation, the own set's drop, each random baseline's
    (over documents and seeds; spread over seeds), and own − random (Holm over the relations with power)."""
    rows = []
    for metric in METRICS:
        for split in _splits(metric):
            family = []
            for r in study.relations:
                own = fx.own(study, metric, split, r)
                if own is None and fx.support(study, metric, split, r) is None:
                    continue
                row: Row = {"metric": metric.name, "unit": metric.unit, "split": split_name(split), "relation": r,
                            **_support(study, metric, split, r), "original": own.base if own else None, "own": own.ablated if own else None,
                            **_cols("own_drop", _scaled(own, metric)), "own_p": own.drop.p if own else None}
                for kind, name in BASELINES.items():
                    rnd = fx.random(study, metric, split, r, kind)
                    row |= _cols(f"{name}_drop", _scaled(rnd, metric))
                    row |= {f"{name}_seeds": len(rnd.seeds) if rnd else 0, f"{name}_seed_min": min(rnd.seeds) if rnd else None,
                            f"{name}_seed_max": max(rnd.seeds) if rnd else None, f"{name}_seed_sd": rnd.seed_std if rnd else None}
                    vs = fx.versus(study, metric, split, r, kind)
                    row |= _cols(f"own_vs_{name}", vs) | {f"own_vs_{name}_p": vs.p if vs else None}
                family.append(row)
            for name in BASELINES.values():
                _holm_column(family, f"own_vs_{name}_p", f"own_vs_{name}_p_holm")
            rows += family
    return rows


def _ci(row: Row, key: str, metric: Metric) -> str:
    return fmt(iv.Interval(row[key], 0.0, row[f"{key}_low"], row[f"{key}_high"]), metric) if row[key] is not None else "n/a"


def intra_markdown_rows(rows: list[Row], metric: Metric) -> list[Row]:
    """The report's view of ``intra_ci_rows`` for one metric: estimates with their intervals."""
    out = []
    for row in (r for r in rows if r["metric"] == metric.name):
        seeds = (f" ({row['random_seeds']} seeds, sd {fmt_cell(row['random_seed_sd'], metric.binary)})"
                 if row["random_seeds"] > 1 and row["random_drop"] is not None else "")
        out.append({
            "split": row["split"], "relation": row["relation"] + ("" if row["power"] else " (no power)"),
            ("correct" if metric.binary else "scored"): f"{row['support']}/{row['documents']}" if row["documents"] else "n/a",
            "original": fmt_cell(row["original"]), "own drop": _ci(row, "own_drop", metric),
            "uniform random drop": _ci(row, "random_drop", metric) + seeds, "site-matched random drop": _ci(row, "site_drop", metric),
            "own − uniform": _ci(row, "own_vs_random", metric), "own − site-matched": _ci(row, "own_vs_site", metric),
        })
    return out


def matrix_ci_rows(study: Study, metric: Metric, split: str = "eva") -> list[Row]:
    """Fig. 4 with intervals, one row per cell (deactivated set, evaluated relation); ``p``: the exact
    paired test (McNemar, signed-rank), ``p_holm`` over the off-diagonal cells with power."""
    rows = []
    for a in study.relations:
        for c in study.relations:
            e = fx.own(study, metric, split, a, c)
            if e is None:
                continue
            rows.append({"metric": metric.name, "unit": metric.unit, "deactivated": a, "evaluated": c, **_support(study, metric, split, c),
                         "original": e.base, "ablated": e.ablated, **_cols("drop", _scaled(e, metric)), "p": e.drop.p})
    off = [row for row in rows if row["deactivated"] != row["evaluated"]]
    _holm_column(off, "p", "p_holm")
    for row in rows:
        row.setdefault("p_holm", None)
        row["improved"] = bool(row["p_holm"] is not None and row["p_holm"] < ALPHA and row["ablated"] > row["original"])
    return rows


def matrix_wide(study: Study, cells: list[Row]) -> list[Row]:
    """The cells as a matrix (row = deactivated, column = evaluated) of drops."""
    at = {(c["deactivated"], c["evaluated"]): c["drop"] for c in cells}
    return [{"deactivated": a, **{c: at.get((a, c)) for c in study.relations}} for a in study.relations]


def sweep_ci_rows(study: Study, metric: Metric = LOGPROB) -> list[Row]:
    """Fig. 5 with intervals: per k and relation, the drop of its own relation and the mean drop of the others."""
    rows = []
    for k in study.ks:
        for r in study.relations:
            cond = Condition("topk", r, k=k)
            own = fx.ablation(study, cond, metric, "eva", r)
            if own is None:
                continue
            others = [c for c in study.relations if c != r and fx.ablation(study, cond, metric, "eva", c) is not None]
            pooled = fx.pooled_drop(study, lambda _c, cond=cond: cond, metric, "eva", others) if others else None
            rows.append({"metric": metric.name, "unit": metric.unit, "k": k, "relation": r, **_cols("own_drop", _scaled(own, metric)),
                         "own_p": own.drop.p, **_cols("others_drop", pooled), "others": len(others)})
    return rows


def split_ci_rows(study: Study, splits: Sequence[str]) -> list[Row]:
    """Fig. 7 and 8 with intervals: each relation's own drop on each split (a language, ``t2``), per metric."""
    rows = []
    for split in splits:
        for metric in METRICS:
            family = []
            for r in study.relations:
                e = fx.own(study, metric, split, r)
                if e is not None:
                    family.append({"split": split_name(split), "metric": metric.name, "unit": metric.unit, "relation": r,
                                   **_support(study, metric, split, r), "original": e.base, "ablated": e.ablated,
                                   **_cols("drop", _scaled(e, metric)), "p": e.drop.p})
            _holm_column(family, "p", "p_holm")
            rows += family
    return rows


def perplexity_ci_rows(study: Study) -> list[Row]:
    """Table 2 with intervals: the relative change of word perplexity (paired bootstrap over the sentences)."""
    return [{"relation": r, **_cols("change", change)} for r in study.relations if (change := fx.perplexity(study, r)) is not None]
