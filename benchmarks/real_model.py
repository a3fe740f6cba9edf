#!/usr/bin/env python
"""What the paper's method finds in a real pretrained model: own / others / random effects, with intervals.

    python benchmarks/real_model.py --model gemma-3-270m --sets neuron_sets/gemma-3-270m \
        --out benchmarks/results/real_model_gemma-3-270m
    python benchmarks/real_model.py --report benchmarks/results/real_model_gemma-3-270m.json   # re-render

For each k (default: 0.36% and 1% of the model's FFN neurons) and each relation with a
scores file in ``--sets``: that relation's top-k set, ``--seeds`` uniform random sets of k
neurons (over all sites, seed s is the ``relspec random`` control ``k<K>-seed<s>``) and, per relation,
``--seeds`` site-matched random sets (as many neurons per site as the relation's set, any
layer: ``relspec random --site-matched``, the same seeds) are switched off in turn
(``relspec_lmeval.ablated``, exact weight edits), and P^eva is measured per document:

* ``acc``: the paper's greedy 2-token prefix check (and ``acc_lenient``, docs/tasks.md);
* ``choice``: relation_choice accuracy, the gold among up to 9 other objects of the
  relation by summed log-likelihood (the lm-eval ``multiple_choice`` ``acc``), on the first
  ``--choice-docs`` docs;
* ``logprob``: the log-probability of the first gold's tokens after the prompt, and
  ``logprob_first`` that of its first token (``data.logprob.first_token``; relation_logprob
  takes the best of every gold, this the first gold, the one ``choice`` asks about).

Effects: for log-probabilities nats lost, original − ablated per document (positive = the
gold got less likely); for accuracies the relative drop (original − ablated) / original
(relations with original 0 left out). "own": a relation's set on its own P^eva (mean over
relations); "others": its set on the other relations' P^eva (mean over the others, then
over the sets); "random (uniform)": the uniform sets on every relation's P^eva (mean over
relations, then seeds); "random (site-matched)": each relation's own site-matched sets on its
P^eva (mean over relations, then seeds). Intervals (95%, percentile bootstrap, ``--resamples``):
documents resampled per relation, the same indices under every ablation (paired); the random
baselines also resample the seeds (two levels: seeds, then documents), and their spread
over seeds is reported beside. A single relation's log-prob effect is ``stats.bootstrap_mean``.

By site: the same with sets cut from the scores restricted to ``gate_proj``+``up_proj`` or
to ``down_proj`` (random sets of those sites), because zeroing a ``down_proj`` channel
removes one coordinate of the residual stream, and real models have a few very large ones.

Cost: sequences run per P^eva document (50 per relation), per relation evaluated: 2 for the
greedy answer (prefill and one decoding step), up to 10 scored choices for the first
``--choice-docs`` docs (the gold's log-prob and first token come from them) and 1 (the gold)
for the rest, plus 1 for a doc whose first gold token is not the first of its whole-gold
tokens (rare); all batched by ``--batch-size``. Relation evaluations per (sites, k) row, R
relations: R × R (each set on every relation) + seeds × R (uniform) + R × seeds
(site-matched, each on its own relation); rows: the ks, plus the site-ks per extra site
group; plus R for the original model.

In-process, not through lm-eval, because the plan has hundreds of ablated evaluations; the
numbers use the same docs and metrics as the tasks (``data.relations``, ``data.choice``).
The JSON keeps every per-document value, so ``--report`` recomputes every effect from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_model_lib as lib  # noqa: E402
import torch  # noqa: E402

FORMAT = "real_model/2"  # records with per-document values (the first format kept means only)



def _beside(prefix: Path, suffix: str) -> Path:
    """PREFIX + suffix (not with_suffix: a prefix such as real_model_qwen2.5-coder-0.5b-instruct has dots)."""
    return prefix.parent / (prefix.name + suffix)

def measure_all(evaluator: lib.Evaluator, model, shape, scores: dict, *, ks: list[int], seeds: int, site_groups: list[str],
                site_ks: list[int], log=print) -> Iterator[dict]:
    """Every (sites, k) row's per-document values, row by row: each relation's set, the uniform and the site-matched random sets."""
    relations = list(evaluator.docs)
    for group in site_groups:
        sites = lib.SITE_GROUPS[group]
        for k in ks if group == "all" else site_ks:
            row = {"sites": group, "k": k, "share": k / shape.total, "own_sets": {}, "random_uniform": [], "random_site": {}}
            for r in relations:
                own = lib.cut(scores[r], k, sites, {"relation": r})
                row["own_sets"][r] = _measured(evaluator, model, own, None, f"{group} k={k} own {r}", log)
                row["random_site"][r] = [_measured(evaluator, model, lib.site_cut(own, shape, s), [r], f"{group} k={k} site-matched {r} seed {s}", log)[r]
                                         for s in range(seeds)]
            row["random_uniform"] = [_measured(evaluator, model, lib.random_cut(shape, k, sites, s), None, f"{group} k={k} uniform seed {s}", log)
                                     for s in range(seeds)]
            yield row


def _measured(evaluator: lib.Evaluator, model, neuron_set, relations: list[str] | None, label: str, log) -> dict:
    from relspec_lmeval.lm.ablation import ablated

    start = time.perf_counter()
    with ablated(model, neuron_set):
        result = evaluator.measure(relations)
    log(f"  measured {label} in {time.perf_counter() - start:.0f} s")
    return result


def with_effects(record: dict, resamples: int | None = None, seed: int | None = None) -> dict:
    """``record`` with every row's ``effects`` (re)computed from its per-document values."""
    record["resamples"] = resamples or record.get("resamples") or 10_000
    record["bootstrap_seed"] = record.get("bootstrap_seed", 0) if seed is None else seed
    for row in record["rows"]:
        row["effects"] = lib.row_effects(row, record["original"], record["relations"], resamples=record["resamples"],
                                         seed=record["bootstrap_seed"])
    return record


# ---------------------------------------------------------------------------- what benchmarks/methods.py imports

random_cut = lib.random_cut


class Evaluator(lib.Evaluator):
    """``real_model_lib.Evaluator`` as benchmarks/methods.py reads it: each relation's metrics as means over its docs."""

    def measure(self, label: str = "") -> dict[str, dict[str, float | None]]:  # type: ignore[override]
        start = time.perf_counter()
        result = {r: {m: mean(v) for m, v in values.items()} for r, values in super().measure().items()}
        print(f"  measured {label or 'original'} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return result


def drops(base: dict, ablated_result: dict, relations: list[str], metric: str) -> list[float]:
    """Per relation: nats lost (log-probs), else the relative drop (relations with original 0 left out)."""
    out = []
    for r in relations:
        o, a = base[r][metric], ablated_result[r][metric]
        if metric in lib.LOGPROBS:
            out.append(o - a)
        elif o:
            out.append((o - a) / o)
    return out


def mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model (shipped name, hub id or folder)")
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--sets", help="a sets folder (relspec identify --out) with scores/")
    p.add_argument("--data-dir", default=None, help="folder of relation files (default: LRE; relspec-tiny: models/relspec-tiny/world)")
    p.add_argument("--relations", default=None, help="comma-separated subset of the sets' relations (default: all with scores)")
    p.add_argument("--ks", default=None, help="comma-separated k (default: 0.36%%, 1%% of the FFN neurons)")
    p.add_argument("--seeds", type=int, default=5, help="random sets per k, site group and baseline (default 5)")
    p.add_argument("--site-groups", default="all,gate+up,down")
    p.add_argument("--site-ks", default=None, help="k values for the gate+up / down groups (default: the middle of --ks: 1%% with the default ks)")
    p.add_argument("--choice-docs", type=int, default=50, help="P^eva docs per relation scored as multiple choice")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10000; --report: the record's)")
    p.add_argument("--bootstrap-seed", type=int, default=None, help="the bootstrap's seed (default 0; --report: the record's)")
    p.add_argument("--report", default=None, metavar="JSON", help="re-render PREFIX.md from a record this script wrote (no model)")
    p.add_argument("--out", default=None, help="output prefix: writes PREFIX.json and PREFIX.md (--report: PREFIX.md only)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.report:
        record = json.loads(Path(args.report).read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            p.error(f"{args.report} holds no per-document values (not a {FORMAT} record): run the benchmark again")
        out = Path(args.out or Path(args.report[:-5] if args.report.endswith(".json") else args.report))
        write(with_effects(record, args.resamples, args.bootstrap_seed), out, json_too=False)
        return 0
    if not (args.model and args.sets and args.out):
        p.error("--model, --sets and --out are needed (or --report JSON)")
    if args.seeds < 1 or args.choice_docs < 0 or args.site_groups.strip() == "":
        p.error("--seeds must be at least 1, --choice-docs at least 0, --site-groups not empty")
    unknown = sorted(set(args.site_groups.split(",")) - set(lib.SITE_GROUPS))
    if unknown:
        p.error(f"--site-groups: unknown {', '.join(unknown)} (known: {', '.join(lib.SITE_GROUPS)})")
    try:
        args.ks, args.site_ks = (None if v is None else [int(x) for x in v.split(",")] for v in (args.ks, args.site_ks))
    except ValueError:
        p.error("--ks and --site-ks take comma-separated integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = run(args, sys.argv[1:] if argv is None else argv, Path(args.out))
    write(with_effects(record, args.resamples, args.bootstrap_seed), Path(args.out))
    return 0


def run(args: argparse.Namespace, argv: list[str], out: Path) -> dict:
    """Load the model and the sets, measure everything: the record without effects (``argv``: for its command).

    After each row, OUT.json holds the rows so far (no effects): a run stopped after hours
    leaves them, and ``--report OUT.json`` renders them."""
    from relspec_lmeval.modelio.load import load_model
    from relspec_lmeval.modelio.sites import model_shape
    from relspec_lmeval.sets.folder import SetsFolder
    from relspec_lmeval.sets.scores import load_scores

    start = time.perf_counter()
    folder = SetsFolder(args.sets)
    relations = [r for r in folder.relations() if folder.scores_path(r).is_file()]
    if args.relations:
        wanted = args.relations.split(",")
        unknown = sorted(set(wanted) - set(relations))
        if unknown:
            raise SystemExit(f"real_model.py: no scores for {', '.join(unknown)} in {args.sets}")
        relations = [r for r in relations if r in wanted]
    scores = {r: load_scores(folder.scores_path(r)) for r in relations}
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, device="cpu", progress=False)
    shape = model_shape(model)
    ks = args.ks or [round(shape.total * f) for f in (0.0036, 0.01)]
    site_ks = args.site_ks or [ks[len(ks) // 2]]
    evaluator = lib.Evaluator(model, tokenizer, relations, args.batch_size, args.choice_docs, args.data_dir)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    record = {"format": FORMAT, "model": args.model, "sets": str(args.sets), "relations": relations, "neurons": shape.total,
              "seeds": args.seeds, "choice_docs": args.choice_docs, "docs": {r: len(d) for r, d in evaluator.docs.items()},
              "first_passes": evaluator.first_passes, "torch_threads": torch.get_num_threads(),
              "command": " ".join(["python", "benchmarks/real_model.py", *argv]), "original": evaluator.measure(), "rows": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in measure_all(evaluator, model, shape, scores, ks=ks, seeds=args.seeds, site_groups=args.site_groups.split(","),
                           site_ks=site_ks, log=log):
        record["rows"].append(row)
        record["seconds"] = time.perf_counter() - start
        _beside(out, ".json").write_text(json.dumps(record) + "\n", encoding="utf-8")  # so far
    return record


def write(record: dict, out: Path, json_too: bool = True) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if json_too:
        _beside(out, ".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    _beside(out, ".md").write_text(report(record), encoding="utf-8")
    print(f"wrote {_beside(out, '.md')}" + (f" ({record['seconds'] / 60:.1f} min)" if json_too else ""))


def _num(v: float, metric: str) -> str:
    return f"{v:+.2f}" if metric in lib.LOGPROBS else f"{100 * v:.1f}%"


def fmt(effect: dict, metric: str) -> str:
    """``+1.21 [+0.95, +1.48] nats``, ``45.7% [30.1%, 60.2%]``; a random baseline adds its seeds' range."""
    if effect["value"] is None:
        return "n/a"
    text = f"{_num(effect['value'], metric)} [{_num(effect['low'], metric)}, {_num(effect['high'], metric)}]"
    text += " nats" if metric in lib.LOGPROBS else ""
    seeds = [s for s in effect.get("seeds") or [] if s is not None]
    return text + (f" (seeds {_num(min(seeds), metric)} to {_num(max(seeds), metric)})" if len(seeds) > 1 else "")


def report(record: dict) -> str:
    lines = [
        f"# {record['model']}: own / others / random effects",
        "",
        f"Made by `{record['command']}` in {record['seconds'] / 60:.1f} min ({record['torch_threads']} CPU threads).",
        f"Relations (those with sets in `{record['sets']}`): {', '.join(record['relations'])}; "
        f"{record['neurons']:,} FFN neurons; random: {record['seeds']} seeds per baseline; multiple choice on "
        f"{record['choice_docs']} P^eva docs per relation.",
        "",
        "Log-prob effects in nats (original − ablated log-probability of the first gold, per document; "
        "`logprob_first`: its first token); accuracy effects are relative drops ((original − ablated) / original; "
        "relations with original 0 left out). Brackets: 95% bootstrap intervals over documents "
        f"({record['resamples']} resamples, seed {record['bootstrap_seed']}); random baselines resample the seeds too "
        "(seeds, then documents), and give the range of their seeds' effects. "
        "Uniform: k neurons over the sites; site-matched: as many per site as the relation's set, any layer.",
        "",
        "## Original model (P^eva)",
        "",
        "| relation | docs | acc | acc_lenient | choice | gold log-prob | first-token log-prob |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, v in record["original"].items():
        mean = {m: sum(v[m]) / len(v[m]) if v[m] else float("nan") for m in lib.METRICS}
        lines.append(f"| {r} | {len(v['acc'])} | {mean['acc']:.2f} | {mean['acc_lenient']:.2f} | {mean['choice']:.2f} | "
                     f"{mean['logprob']:.2f} | {mean['logprob_first']:.2f} |")
    header = " | ".join(lib.COLUMNS.values())
    lines += ["", "## Effects", "", f"| sites | k | share | metric | {header} |", "|---|---|---|---|" + "---|" * len(lib.COLUMNS)]
    for row in record["rows"]:
        for m in lib.METRICS:
            cells = " | ".join(fmt(row["effects"][name][m], m) for name in lib.COLUMNS)
            lines.append(f"| {row['sites']} | {row['k']} | {100 * row['share']:.2f}% | {m} | {cells} |")
    lines += ["", "## Per relation (all sites)", "", f"| k | relation | metric | {header} |", "|---|---|---|" + "---|" * len(lib.COLUMNS)]
    for row in record["rows"]:
        if row["sites"] != "all":
            continue
        for r, effects in row["effects"]["per_relation"].items():
            for m in lib.METRICS:
                lines.append(f"| {row['k']} | {r} | {m} | " + " | ".join(fmt(effects[name][m], m) for name in lib.COLUMNS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
