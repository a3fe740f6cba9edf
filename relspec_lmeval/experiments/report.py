"""``report.md`` of ``relspec reproduce``: its tables and figures, and what each one shows.

Pure functions of numbers already measured (no model code): ``experiments.runner.collect``
gathers each condition's lm-eval metrics into a ``Study``; ``write_report`` writes
``tables/*.csv|json`` (``tables``), ``figures/*.png`` (``figures``) and ``report.md``: first the
verdict table (``verdicts``, ``report_ci``), then each figure's section, whose sentences
(``read_*``) say what the numbers show, with its tables with 95% intervals in every metric
(``ci_tables``), in the order of PAPER.md's findings.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from relspec_lmeval.data.tasks import task_name
from relspec_lmeval.experiments.effects import MIN_CORRECT
from relspec_lmeval.experiments.figures import (
    figure_intra,
    figure_k_sweep,
    figure_languages,
    figure_layers,
    figure_matrix,
    figure_overlap,
    figure_templates,
)
from relspec_lmeval.experiments.report_ci import write_ci_tables
from relspec_lmeval.experiments.study import BASELINE, Row, Study, mean_present, value
from relspec_lmeval.experiments.tables import (
    cumulativity_rows,
    fmt_cell,
    intra_rows,
    k_sweep_rows,
    language_rows,
    layer_rows,
    markdown,
    matrix_rows,
    pair_rows,
    perplexity_rows,
    row_sites,
    template_rows,
    write_table,
)
from relspec_lmeval.util.files import atomic_write_text

__all__ = ["write_report"]


def _pct(v: float | None) -> str:
    return fmt_cell(v, percent=True)


def read_layers(study: Study, rows: list[Row]) -> str:
    n = study.num_layers
    lo, hi = n // 3, n - n // 3  # the middle third of the layers
    middle = sum(r["total"] for r in rows if lo <= r["layer"] < hi)
    total = sum(r["total"] for r in rows) or 1
    peaks = {}
    for r in study.relations:
        mine = [x for x in rows if x["relation"] == r]
        peaks[r] = max(mine, key=lambda x: (x["total"], -x["layer"]))["layer"]
    sites = {s: sum(r[s] for r in rows) / total for s in row_sites(rows)}
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
        own, rnd = mean_present([r["own_drop"] for r in part]), mean_present([r["random_drop"] for r in part])
        beats = sum(1 for r in part if r["own"] is not None and r["random_min"] is not None and r["own"] < r["random_min"])
        na = [r["relation"] for r in part if r["own_drop"] is None]
        parts.append(f"On {split} the own set drops accuracy by {_pct(own)} on average, random sets of the same size by "
                     f"{_pct(rnd)}; for {beats} of {len(part)} relations the own set is below every random seed."
                     + (f" No drop for {', '.join(na)} (original accuracy 0)." if na else ""))
    choice = [r for r in rows if r["split"] == "choice"]
    if choice:
        own, rnd = mean_present([r["own_drop"] for r in choice]), mean_present([r["random_drop"] for r in choice])
        parts.append(f"As multiple choice (the gold among up to 9 other objects of the relation, P^eva), the own set drops "
                     f"accuracy by {_pct(own)} on average and random sets by {_pct(rnd)}.")
    return " ".join(parts) + " Finding 2 (paper): clear drops for the own set, about none for random sets, also on unseen subjects (P^eva)."


def read_matrix(study: Study, rows: list[Row]) -> str:
    rel = study.relations
    diag = mean_present([row[row["deactivated"]] for row in rows])
    off = [(row[c], row["deactivated"], c) for row in rows for c in rel if c != row["deactivated"] and row[c] is not None]
    text = f"Mean drop on the diagonal (own relation) {_pct(diag)}, off the diagonal {_pct(mean_present([v for v, _, _ in off]))}."
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
            parts.append(f"k={k}: own {_pct(mean_present([r['own_drop'] for r in at]))}, others {_pct(mean_present([r['others_drop'] for r in at]))}")
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
    means = {lang: mean_present([r["drop"] for r in rows if r["language"] == lang]) for lang in ("en", *study.suite.languages)}
    return ("Mean own-set drop per language: " + ", ".join(f"{k} {_pct(v)}" for k, v in means.items())
            + ". Finding 6 (paper): English-identified neurons also hurt recall in de, es, fr, zh, ja.")


def read_templates(rows: list[Row]) -> str:
    pairs = [(r["eva_drop"], r["t2_drop"]) for r in rows if r["eva_drop"] is not None and r["t2_drop"] is not None]
    text = (f"Mean own-set drop: P^eva {_pct(mean_present([r['eva_drop'] for r in rows]))}, "
            f"P^eva-2 {_pct(mean_present([r['t2_drop'] for r in rows]))}")
    if len(pairs) > 2 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
        text += f"; correlation over relations {statistics.correlation(*zip(*pairs)):.2f}"
    return text + ". Finding 7 (paper): the second template shows the same drops."


# ---------------------------------------------------------------------------- report


def _weak_baseline(study: Study) -> str:
    """Say so when the original model answers too few P^eva documents for strict-acc drops to mean much."""
    base = study.results.get(BASELINE)
    if base is None:
        return ""
    weak = []
    for r in study.relations:
        samples = base.per_sample.get(task_name(study.suite.eva, r), {}).get("acc", [])
        if sum(samples) < MIN_CORRECT:
            weak.append(f"{r} {sum(samples):.0f}/{len(samples)}")
    if not weak:
        return ""
    return (f"the original model answers fewer than {MIN_CORRECT} P^eva documents correctly for {len(weak)} of "
            f"{len(study.relations)} relations ({', '.join(weak)}): strict acc has no power there, and their relative drops "
            "(one document can be 100%) are noise. The verdicts above rest on the first metric with power (acc_lenient, or "
            "the gold object's log-probability); where the sections' readings below and the verdicts differ, trust the verdicts.")


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
    ci = write_ci_tables(study, tables, figures)

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
        "Relative drop = (original − ablated) / original; **n/a** where the original accuracy is 0. Log-probability drops "
        "are in nats (original − ablated: positive means the gold object became less probable).",
        "",
        *ci["verdicts"],
        *([f"**Caution:** {caution}", ""] if (caution := _weak_baseline(study)) else []),
        "## Fig. 1: where the neurons are", "", "![layers](figures/fig1_layers.png)", "", read_layers(study, layers), "",
        "Table: `tables/fig1_layers.csv`.", "",
        "## Fig. 2: overlap between relations", "", "![overlap](figures/fig2_overlap.png)", "", read_overlap(study), "",
        "Tables: `tables/fig2_overlap_counts.csv`, `tables/fig2_overlap_jaccard.csv`.", "",
        "## Fig. 3: own set vs random sets", "", "![intra](figures/fig3_intra.png)", "", read_intra(intra), "",
        markdown([{k: r[k] for k in ("split", "relation", "original", "own", "own_drop", "random_mean", "random_std", "random_drop")} for r in intra],
                 percent=("own_drop", "random_drop")), "", *ci["fig3"],
        "## Fig. 4: drop matrix (row: deactivated, column: evaluated)", "", "![matrix](figures/fig4_drop_matrix.png)", "",
        read_matrix(study, drops), "", markdown(drops, percent=study.relations), "",
        "Accuracies: `tables/fig4_accuracy_matrix.csv`.", "", *ci["fig4"],
        "## Fig. 5: k sweep", "", "![k sweep](figures/fig5_k_sweep.png)", "", read_k_sweep(study, sweep), "",
        "Table: `tables/fig5_k_sweep.csv`.", "", *ci["fig5"],
        "## Table 3: cumulativity", "", read_cumulativity(cumul), "",
        markdown([r for r in cumul if r["relation"] == "all"], percent=("share",)), "",
        "Per relation: `tables/table3_cumulativity.csv`.", "",
        "## Table 2: relation-neutral perplexity", "", read_perplexity(ppl), "", markdown(ppl, percent=("change",)), "", *ci["table2"],
        "## Fig. 7: other languages", "",
    ]
    if suite.languages:
        lines += ["![languages](figures/fig7_languages.png)", "", read_languages(study, langs), "", "Table: `tables/fig7_languages.csv`.", "",
                  *ci["fig7"]]
    else:
        lines += [read_languages(study, langs), ""]
    lines += ["## Fig. 8: second template", "", "![templates](figures/fig8_second_template.png)", "", read_templates(templates), "",
              markdown([{k: r[k] for k in ("relation", "eva_drop", "t2_drop")} for r in templates], percent=("eva_drop", "t2_drop")), "",
              "Tables: `tables/fig8_second_template.csv`, `tables/fig8_drop_matrix_t2.csv`.", "", *ci["fig8"]]
    return atomic_write_text(out / "report.md", "\n".join(lines))
