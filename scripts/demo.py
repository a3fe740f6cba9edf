"""`make demo`: the paper's effect on the shipped model relspec-tiny, offline, in about a minute.

Three lm-eval runs of relspec-tiny on its synthetic world (``relation_recall_synthetic``
and the relation-neutral ``relation_ppl_synthetic``): the original model, the model with
one relation's shipped neuron set deactivated, and with as many random neurons. Every
number is an lm-eval result; the CLI equivalent is printed at the end.
"""

from __future__ import annotations

import logging
import sys
import time

RELATION = "person_plays_instrument"
TASKS = ["relation_recall_synthetic", "relation_ppl_synthetic"]
# The shipped 1% sets barely move relspec-tiny (benchmarks/results/tiny_bar.md); its top 10%
# (k384/, cut from the same scores with `relspec select --k 384`) show the paper's effect.
SET = f"relspec-tiny/k384/{RELATION}"
RUNS = {
    "original": "",
    f"{RELATION} set": f",neuron_set={SET}",
    "random control": ",neuron_set=relspec-tiny/k384/random/k384-seed0",  # the control every k384 set shares
}


def main() -> int:
    from lm_eval import simple_evaluate

    from relspec_lmeval.sets.neuron_set import NeuronSet
    from relspec_lmeval.sets.resolve import resolve_set_path

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notices drown the table
    own = NeuronSet.load(resolve_set_path(SET))
    print(f"model: relspec-tiny (shipped, trained on its synthetic world)\n"
          f"set: {SET}, {len(own)} FFN neurons (10%); control: as many random neurons\n")
    results = {}
    for name, extra in RUNS.items():
        start = time.perf_counter()
        out = simple_evaluate(model="relspec-hf", model_args=f"pretrained=relspec-tiny{extra}", tasks=TASKS, device="cpu", batch_size=64)
        results[name] = out["results"]
        print(f"{name}: {time.perf_counter() - start:.0f} s")
    names = list(RUNS)
    print(f"\n{'task':52} {'metric':16}" + "".join(f"{n:>22}" for n in names))
    for task in sorted(results["original"]):
        for metric in ("acc,none", "word_perplexity,none"):
            if metric in results["original"][task]:
                values = "".join(f"{results[n][task][metric]:22.3f}" for n in names)
                print(f"{task:52} {metric.split(',')[0]:16}{values}")
    recall = {n: {t: r["acc,none"] for t, r in results[n].items() if t.startswith("relation_recall_synthetic_")} for n in names}
    own_task = f"relation_recall_synthetic_{RELATION}"
    others = [t for t in recall["original"] if t != own_task]

    def mean(run: str) -> float:
        return sum(recall[run][t] for t in others) / len(others)

    print(f"\nRead: {RELATION} recall {recall['original'][own_task]:.2f} → {recall[names[1]][own_task]:.2f} with its set, "
          f"{recall[names[2]][own_task]:.2f} with the random control; the other 11 relations average "
          f"{mean('original'):.2f} → {mean(names[1]):.2f} (set) and {mean(names[2]):.2f} (random).")
    print(f"CLI: lm_eval --model relspec-hf --model_args pretrained=relspec-tiny,neuron_set={SET} "
          f"--tasks {','.join(TASKS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
