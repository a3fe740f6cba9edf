"""The report's verdict table and its sections' tables with 95% intervals (files and markdown).

``write_ci_tables`` writes the interval tables (``tables/*_ci``, ``verdicts``) and the log-prob
figures, and returns, per report section, the markdown to add; ``report.write_report`` places it.
"""

from __future__ import annotations

from pathlib import Path

from relspec_lmeval.experiments import effects as fx
from relspec_lmeval.experiments.ci_tables import (
    intra_ci_rows,
    intra_markdown_rows,
    matrix_ci_rows,
    matrix_wide,
    perplexity_ci_rows,
    split_ci_rows,
    sweep_ci_rows,
)
from relspec_lmeval.experiments.effects import LOGPROB, METRICS, MIN_CORRECT, MIN_RELATIONS, MIN_SCORED
from relspec_lmeval.experiments.figures import figure_intra_ci, figure_k_sweep_ci, figure_matrix
from relspec_lmeval.experiments.judging import ALPHA, LARGE, SMALL, Verdict, fmt
from relspec_lmeval.experiments.stats import Bootstrap
from relspec_lmeval.experiments.study import Row, Study
from relspec_lmeval.experiments.tables import fmt_cell, markdown, write_table
from relspec_lmeval.experiments.verdicts import verdicts

__all__ = ["verdict_lines", "write_ci_tables"]


def verdict_lines(found: list[Verdict]) -> list[str]:
    """The verdict table, what each "cannot tell" would need, and how the verdicts are drawn."""
    table = [{"finding": v.finding, "verdict": f"**{v.verdict}**", "metric": v.metric, "statistic": v.statistic, "also": v.also or "—"}
             for v in found]
    needed = [f"- {v.finding}: {v.needed}" for v in found if v.needed]
    return [
        "## Verdicts", "",
        "What this model shows for each of the paper's findings. A verdict rests on the first metric with power for it: strict "
        f"`acc` (the paper's), then `acc_lenient`, then the gold object's log-probability; an accuracy has power for a relation when the "
        f"original model answers ≥ {MIN_CORRECT} of its documents correctly, the log-probability when ≥ {MIN_SCORED} documents are "
        f"scored, and a finding about relations needs ≥ {MIN_RELATIONS} relations with power. Per relation: *significant* (Holm-adjusted "
        f"p < {ALPHA}, the paper's direction), *refuted* (its 95% interval excludes a large effect: {100 * LARGE['relative']:.0f}% of "
        f"the original accuracy, {LARGE['nats']:g} nat) or unclear; **agrees** when most are significant, **disagrees** when most are "
        "refuted, else **cannot tell**. `also`: the other metrics' readings (`choice`: `relation_choice`, chance ≈ 10%, an extra "
        "reading only). Every rule: docs/reproduce.md, \"Verdicts\". A negative or weak result is a result.", "",
        markdown(table), "",
        *(["What would be needed where it cannot tell:", "", *needed, ""] if needed else []),
        "Table: `tables/verdicts.csv`.", "",
    ]


def _ci_cell(value: float | None, low: float | None, high: float | None, metric: fx.Metric) -> str:
    return "n/a" if value is None else fmt(Bootstrap(value, 1.0, low, high), metric)


def _fig3(study: Study, rows: list[Row], figures: Path) -> list[str]:
    lines = ["### With 95% intervals, in every metric", "",
             "Drops: relative for accuracies, nats for the log-probability. Random drops: mean over seeds, the interval over documents "
             "and seeds (two-level bootstrap); `own − …`: the own drop minus the random one, paired on documents. `(no power)`: "
             f"fewer than {MIN_CORRECT} correct (or {MIN_SCORED} scored) original documents.", ""]
    for metric in METRICS:
        part = intra_markdown_rows(rows, metric)
        if part:
            lines += [f"**{metric.label}**", "", markdown(part), ""]
    if any(r["metric"] == LOGPROB.name for r in rows):
        figure_intra_ci(study, [r for r in rows if r["metric"] == LOGPROB.name], figures / "fig3_intra_logprob.png")
        lines += ["![intra, log-prob](figures/fig3_intra_logprob.png)", ""]
    return lines + ["Table: `tables/fig3_intra_ci.csv`.", ""]


def _fig4(study: Study, cells: dict[str, list[Row]], figures: Path) -> list[str]:
    lines = ["### With 95% intervals", ""]
    for name, rows in cells.items():
        metric = next(m for m in METRICS if m.name == name)
        improved = [r for r in rows if r["improved"]]
        powered = sum(1 for r in rows if r["power"] and r["deactivated"] != r["evaluated"])
        lines.append(f"- {metric.label}: {len(improved)} of {powered} off-diagonal cells with power improve significantly (Holm)"
                     + (": " + "; ".join(f"{r['deactivated']} → {r['evaluated']} {_ci_cell(r['drop'], r['drop_low'], r['drop_high'], metric)}"
                                        for r in improved[:8]) if improved else "") + ".")
    logprob = cells.get(LOGPROB.name)
    if logprob:
        wide = matrix_wide(study, logprob)
        figure_matrix(study, wide, figures / "fig4_drop_matrix_logprob.png", "drop of the gold's log-prob on P^eva (nats)", scale=None)
        lines += ["", "Drop of the gold object's log-probability (nats; negative: more probable):", "",
                  "![matrix, log-prob](figures/fig4_drop_matrix_logprob.png)", "", markdown(wide)]
    return lines + ["", "Tables: `tables/fig4_cells_ci.csv` (every cell, every metric, with its interval and tests), "
                    "`tables/fig4_drop_matrix_logprob.csv`.", ""]


def _fig5(study: Study, rows: list[Row], figures: Path) -> list[str]:
    if not rows:
        return []
    figure_k_sweep_ci(study, rows, figures / "fig5_k_sweep_logprob.png")
    shown = [{"k": r["k"], "relation": r["relation"], "own drop": _ci_cell(r["own_drop"], r["own_drop_low"], r["own_drop_high"], LOGPROB),
              "others' mean drop": _ci_cell(r["others_drop"], r["others_drop_low"], r["others_drop_high"], LOGPROB)} for r in rows]
    return ["### In log-probability, with 95% intervals", "", "![k sweep, log-prob](figures/fig5_k_sweep_logprob.png)", "",
            markdown(shown), "", "Table: `tables/fig5_k_sweep_ci.csv`.", ""]


def _summary(rows: list[Row]) -> list[str]:
    """One line per (split, metric): how many relations with power show a significant own drop."""
    lines = []
    for split in dict.fromkeys(r["split"] for r in rows):
        for metric in METRICS:
            part = [r for r in rows if r["split"] == split and r["metric"] == metric.name]
            if not part:
                continue
            powered = [r for r in part if r["power"]]
            sig = [r for r in powered if r["p_holm"] is not None and r["p_holm"] < ALPHA and (r["drop"] or 0) > 0]
            mean = sum(r["drop"] for r in powered) / len(powered) if powered else None
            lines.append(f"- {split}, {metric.label}: {len(powered)} of {len(part)} relations with power; significant own drop "
                         f"(Holm) for {len(sig)}; mean drop {fmt_cell(mean, metric.binary)}{'' if metric.binary else ' nats'}.")
    return lines


def _splits(rows: list[Row], name: str) -> list[str]:
    if not rows:
        return []
    shown = [{"split": r["split"], "metric": r["metric"], "relation": r["relation"] + ("" if r["power"] else " (no power)"),
              "original": fmt_cell(r["original"]), "drop": _ci_cell(r["drop"], r["drop_low"], r["drop_high"], _metric(r["metric"])),
              "p (Holm)": fmt_cell(r["p_holm"])} for r in rows if r["metric"] == LOGPROB.name]
    return ["### With 95% intervals", "", *_summary(rows), "", *([markdown(shown), ""] if shown else []), f"Table: `tables/{name}.csv`.", ""]


def _metric(name: str) -> fx.Metric:
    return next(m for m in METRICS if m.name == name)


def _ppl(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    shown = [{"relation": r["relation"], "change": _ci_cell(r["change"], r["change_low"], r["change_high"], fx.ACC)} for r in rows]
    return ["Relative change of word perplexity with a 95% interval (paired bootstrap over the sentences); finding 8's band: "
            f"±{100 * SMALL['relative']:.0f}%.", "", markdown(shown), "", "Table: `tables/table2_perplexity_ci.csv`.", ""]


def write_ci_tables(study: Study, tables: Path, figures: Path) -> dict[str, list[str]]:
    """Write the interval tables and figures; returns the markdown of each section (``verdicts``, ``fig3`` …)."""
    found = verdicts(study)
    intra = intra_ci_rows(study)
    cells = {m.name: rows for m in METRICS if m.family != "choice" and (rows := matrix_ci_rows(study, m))}
    sweep = sweep_ci_rows(study)
    langs = split_ci_rows(study, study.suite.languages)
    t2 = split_ci_rows(study, ["t2"])
    ppl = perplexity_ci_rows(study)
    files = {"verdicts": [v.row() for v in found], "fig3_intra_ci": intra, "fig4_cells_ci": [r for rows in cells.values() for r in rows],
             "fig5_k_sweep_ci": sweep, "fig8_second_template_ci": t2, "table2_perplexity_ci": ppl}
    if cells.get(LOGPROB.name):
        files["fig4_drop_matrix_logprob"] = matrix_wide(study, cells[LOGPROB.name])
    if study.suite.languages:
        files["fig7_languages_ci"] = langs
    for name, rows in files.items():
        write_table(rows, tables, name)
    return {"verdicts": verdict_lines(found), "fig3": _fig3(study, intra, figures), "fig4": _fig4(study, cells, figures),
            "fig5": _fig5(study, sweep, figures), "fig7": _splits(langs, "fig7_languages_ci"),
            "fig8": _splits(t2, "fig8_second_template_ci"), "table2": _ppl(ppl)}
