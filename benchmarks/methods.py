#!/usr/bin/env python
"""The neuron scores side by side: own / others / random drops of AP, AUROC, mean-diff and LAPE sets.

    python benchmarks/methods.py --model relspec-tiny --data relation_recall_synthetic_det \
        --data-dir models/relspec-tiny/world --ks 38,384 --out benchmarks/results/methods_relspec-tiny
    python benchmarks/methods.py --model gemma-3-270m --relations product_company,landmark_continent,star_constellation \
        --correct-metric acc_lenient --ks 852 --out benchmarks/results/methods_gemma-3-270m

For each method, ``relspec identify --method M`` (in-process, the same positives and negatives
for ap/auroc/mean-diff: the correctness check's answers are computed once and reused through
the answer cache; ``lape`` runs with ``--no-filter``, as it must) writes a sets folder; each
relation's top-k of its scores is switched off and every relation's P^eva is measured by
``real_model.Evaluator`` (greedy ``acc``/``acc_lenient``, ``relation_choice`` accuracy, gold
log-probability). LAPE's sets are Tang et al.'s size (at most k): the table gives each
method's mean set size, since a smaller set is expected to do less. Random controls are the
same for every method (``--seeds`` random sets of k neurons).

``--sites`` compares sites instead (the paper's App. G): ``;``-separated groups of sites, e.g.
``--methods ap --sites "gate_proj,up_proj,down_proj;q_proj,k_proj,v_proj,o_proj"``; each
group is identified and cut at the same k, and its random controls are drawn from its sites.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_model import Evaluator, drops, mean, random_cut  # noqa: E402

from relspec_lmeval.identify.config import IDENTIFY_METHODS, IdentifyConfig  # noqa: E402
from relspec_lmeval.identify.pipeline import identify  # noqa: E402
from relspec_lmeval.lm.ablation import ablated  # noqa: E402
from relspec_lmeval.modelio.load import load_model  # noqa: E402
from relspec_lmeval.modelio.sites import model_shape  # noqa: E402
from relspec_lmeval.sets.folder import SetsFolder  # noqa: E402
from relspec_lmeval.sets.scores import load_scores  # noqa: E402
from relspec_lmeval.sets.shape import DEFAULT_SITES, parse_sites  # noqa: E402

METRICS = ["acc", "acc_lenient", "choice", "logprob"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=None, help="as relspec identify --data (default: the LRE folder)")
    p.add_argument("--data-dir", default=None, help="the relation files P^eva is read from (default: LRE)")
    p.add_argument("--relations", default="all")
    p.add_argument("--methods", default=",".join(IDENTIFY_METHODS))
    p.add_argument("--ks", required=True, help="comma-separated k")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--correct-metric", default="acc")
    p.add_argument("--min-positives", type=int, default=None)
    p.add_argument("--choice-docs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--work", default=None, help="where the sets folders go (default: OUT's folder/methods-work)")
    p.add_argument("--out", required=True)
    p.add_argument("--sites", default=None, help="';'-separated groups of sites to compare (default: the FFN's)")
    p.add_argument("--report", default=None, metavar="JSON", help="only re-render OUT.md from a recorded JSON")
    args = p.parse_args(argv)
    if args.report:
        Path(args.out).with_suffix(".md").write_text(report(json.loads(Path(args.report).read_text())), encoding="utf-8")
        return 0
    start = time.perf_counter()
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / f"{out.name}-work"
    ks = [int(k) for k in args.ks.split(",")]
    groups = [parse_sites(g) for g in args.sites.split(";")] if args.sites else [DEFAULT_SITES]
    # one run per (method, sites): named by the method alone when only the FFN's sites are compared
    runs = {(m if groups == [DEFAULT_SITES] else f"{m} @ {'+'.join(g)}"): (m, g) for g in groups for m in args.methods.split(",")}
    seconds = {}
    for name, (method, sites) in runs.items():  # identification, each run into its own folder
        t = time.perf_counter()
        lape = method == "lape"
        identify(IdentifyConfig(model=args.model, out=str(work / _folder_name(name)), relations=args.relations, data=args.data,
                                k=max(ks), method=method, filter=not lape, correct_metric=args.correct_metric,
                                min_positives=args.min_positives, batch_size=args.batch_size, device="cpu", force=True,
                                command=f"benchmarks/methods.py ({name})", progress=False, print_table=False, sites=sites))
        seconds[name] = time.perf_counter() - t
        print(f"identified with {name} in {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    folders = {name: SetsFolder(work / _folder_name(name)) for name in runs}
    # the relations every two-class method wrote a set for; LAPE (which may assign a relation no
    # neuron) is measured on those of them it has a set for, and the table says how many
    relations = sorted(set.intersection(*(set(f.relations()) for m, f in folders.items() if runs[m][0] != "lape")))
    model, tokenizer = load_model(args.model, device="cpu", progress=False)
    shape = model_shape(model)
    evaluator = Evaluator(model, tokenizer, relations, args.batch_size, args.choice_docs, args.data_dir)
    base = evaluator.measure()
    rows = []
    for k in ks:
        random_of = {}
        for sites in groups:  # random controls drawn from each group's sites
            randoms = []
            for seed in range(args.seeds):
                with ablated(model, random_cut(shape.with_sites(sites), k, sites, seed)):
                    randoms.append(evaluator.measure(f"k={k} random seed {seed} {'+'.join(sites)}"))
            random_of[sites] = {m: mean([mean(drops(base, res, relations, m)) for res in randoms]) for m in METRICS}
        for method, folder in folders.items():
            random = random_of[runs[method][1]]
            own, others, sizes = {m: [] for m in METRICS}, {m: [] for m in METRICS}, []
            mine = [r for r in relations if folder.set_path(r).is_file()]
            for r in mine:
                scores = load_scores(folder.scores_path(r))
                size = k if runs[method][0] != "lape" else min(k, len(folder_set(folder, r)))
                neuron_set = scores.to_neuron_set(size, "top", {"relation": r})
                sizes.append(len(neuron_set))
                with ablated(model, neuron_set):
                    result = evaluator.measure(f"k={k} {method} {r}")
                for m in METRICS:
                    own[m] += drops(base, result, [r], m)
                    others[m].append(mean(drops(base, result, [x for x in relations if x != r], m)))
            if not mine:
                continue
            rows.append({"k": k, "method": method, "relations": len(mine), "mean_size": sum(sizes) / len(sizes),
                         "own": {m: mean(v) for m, v in own.items()}, "others": {m: mean(v) for m, v in others.items()}, "random": random})
            print(f"k={k} {method:9} " + "  ".join(f"{m}: own {_fmt(rows[-1]['own'][m], m)} others {_fmt(rows[-1]['others'][m], m)} "
                                                   f"random {_fmt(random[m], m)}" for m in METRICS), flush=True)
    record = {"model": args.model, "relations": relations, "neurons": shape.total, "ks": ks, "seeds": args.seeds,
              "neurons_per_sites": {"+".join(g): shape.with_sites(g).total for g in groups},
              "identify_seconds": seconds, "original": base, "rows": rows, "seconds": time.perf_counter() - start,
              "command": " ".join(["python", "benchmarks/methods.py", *(argv if argv is not None else sys.argv[1:])])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(report(record), encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} ({record['seconds'] / 60:.1f} min)")
    return 0


def _folder_name(run: str) -> str:
    """``ap @ q_proj+k_proj`` → ``ap@q_proj,k_proj``: no "+", which relspec-hf's neuron_set reads as a union."""
    return run.replace(" @ ", "@").replace("+", ",")


def folder_set(folder: SetsFolder, relation: str):
    from relspec_lmeval.sets.neuron_set import NeuronSet

    return NeuronSet.load(folder.set_path(relation))


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.2f}" if metric == "logprob" else f"{100 * v:.1f}%"


def report(record: dict) -> str:
    lines = [f"# {record['model']}: the neuron scores side by side", "",
             f"Made by `{record['command']}` in {record['seconds'] / 60:.1f} min on a CPU.",
             f"Relations: {', '.join(record['relations'])}; {record['neurons']:,} FFN neurons"
             + "".join(f"; {n:,} at {g}" for g, n in (record.get("neurons_per_sites") or {}).items() if g != "+".join(DEFAULT_SITES))
             + f"; random: {record['seeds']} seeds (the same for every method, drawn from the run's sites). Identification time per run (s): "
             + ", ".join(f"{m} {s:.0f}" for m, s in record["identify_seconds"].items()) + ".", "",
             "Accuracy drops relative ((original − ablated) / original); log-prob drops in nats. own = a relation's set on its "
             "own P^eva, others = on the other relations' P^eva, random = random sets of k neurons on every relation.", "",
             "| k | method | relations | mean set size | acc own / others / random | acc_lenient own / others / random | choice own / others / random | log-prob own / others / random |",
             "|---:|---|---:|---:|---|---|---|---|"]
    for row in record["rows"]:
        cells = [" / ".join(_fmt(row[part][m], m) for part in ("own", "others", "random")) for m in ("acc", "acc_lenient", "choice", "logprob")]
        lines.append(f"| {row['k']} | {row['method']} | {row['relations']} | {row['mean_size']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
