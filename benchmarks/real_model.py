#!/usr/bin/env python
"""What the paper's method finds in a real pretrained model: own / others / random drops.

    python benchmarks/real_model.py --model gemma-3-270m --sets neuron_sets/gemma-3-270m \
        --out benchmarks/results/real_model_gemma-3-270m

For each k (default: 0.36%, 1% and 3% of the model's FFN neurons) and each relation with a
scores file in ``--sets``: that relation's top-k set, and ``--seeds`` random sets of k
neurons, are switched off in turn (``relspec_lmeval.ablated``, exact weight edits), and
every relation's P^eva is measured three ways:

* ``acc``: the paper's greedy 2-token prefix check (and ``acc_lenient``, docs/tasks.md);
* ``choice``: relation_choice accuracy, the gold among up to 9 other objects of the
  relation by summed log-likelihood (the lm-eval ``multiple_choice`` ``acc``);
* ``logprob``: the mean log-probability of the gold object's tokens after the prompt.

Drops are relative for accuracies, (original − ablated) / original, and a difference in
nats for log-probabilities (original − ablated; positive = the gold got less likely).
"own" is a relation's set on its own P^eva; "others" its set on the other relations'
P^eva (mean); "random" the random sets on every relation's P^eva (mean over seeds).

By site: the same with sets cut from the scores restricted to ``gate_proj``+``up_proj`` or
to ``down_proj`` (the top k of those sites; random k of those sites), because zeroing a
``down_proj`` channel removes one coordinate of the residual stream, and real models have a
few very large ones (``../shared/REAL-MODELS.md``).

In-process, not through lm-eval, because the plan has hundreds of ablated evaluations; the
numbers use the same docs and metrics as the tasks (``data.relations``, ``data.choice``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from relspec_lmeval.data.choice import build_choice_docs  # noqa: E402
from relspec_lmeval.data.metrics import METRICS  # noqa: E402
from relspec_lmeval.identify.activations import encode_prompts, generate_with_means, pad_token_id  # noqa: E402
from relspec_lmeval.identify.correctness import first_line  # noqa: E402
from relspec_lmeval.lm.ablation import ablated  # noqa: E402
from relspec_lmeval.modelio.load import load_model  # noqa: E402
from relspec_lmeval.modelio.sites import model_shape  # noqa: E402
from relspec_lmeval.sets.folder import SetsFolder  # noqa: E402
from relspec_lmeval.sets.neuron_set import NeuronSet  # noqa: E402
from relspec_lmeval.sets.scores import load_scores, select_flat  # noqa: E402
from relspec_lmeval.sets.shape import SITES  # noqa: E402

SITE_GROUPS = {"all": SITES, "gate+up": ("gate_proj", "up_proj"), "down": ("down_proj",)}


class Evaluator:
    """Every relation's P^eva, scored three ways by one model (whatever is ablated in it now)."""

    def __init__(self, model, tokenizer, relations: list[str], batch_size: int, choice_docs: int, data_dir: str | None) -> None:
        self.model, self.tokenizer, self.batch = model, tokenizer, batch_size
        self.docs = {r: build_choice_docs(r, data_dir=data_dir) for r in relations}
        self.choice_docs = choice_docs
        self.encoded = {r: encode_prompts(tokenizer, [d["prompt"] for d in docs]) for r, docs in self.docs.items()}
        # (prompt ids, continuation ids) of every choice; continuations begin with the space lm-eval's target_delimiter adds
        self.pairs = {
            r: [(ids, tokenizer(" " + choice, add_special_tokens=False)["input_ids"]) for d, ids in zip(docs[:choice_docs], self.encoded[r])
                for choice in d["choices"]]
            for r, docs in self.docs.items()
        }
        self.gold_pairs = {r: [(ids, tokenizer(" " + d["golds"][0], add_special_tokens=False)["input_ids"])
                               for d, ids in zip(docs, self.encoded[r])] for r, docs in self.docs.items()}

    @torch.inference_mode()
    def _loglik(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Summed log-probability of each continuation after its prompt (left padding; logits only where needed)."""
        pad = pad_token_id(self.tokenizer)
        out: list[float] = []
        for start in range(0, len(pairs), self.batch):
            chunk = pairs[start : start + self.batch]
            seqs = [p + c for p, c in chunk]
            width = max(len(s) for s in seqs)
            tail = max(len(c) for _, c in chunk) + 1
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, width - len(s):] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp_min(0)  # left padding must not shift the positions
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=tail).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)  # position j predicts token width - tail + j + 1
            for i, (_, cont) in enumerate(chunk):
                n = len(cont)
                rows = logprobs[i, tail - 1 - n : tail - 1]
                out.append(float(rows.gather(1, torch.tensor(cont).unsqueeze(1)).sum()))
        return out

    def measure(self, label: str = "") -> dict[str, dict[str, float]]:
        start = time.perf_counter()
        result: dict[str, dict[str, float]] = {}
        for r, docs in self.docs.items():
            texts, _ = generate_with_means(self.model, self.tokenizer, self.encoded[r], None, batch_size=self.batch, progress=False)
            acc = {name: sum(check(first_line(t), d["golds"]) for t, d in zip(texts, docs)) / len(docs) for name, check in METRICS.items()}
            scores = self._loglik(self.pairs[r])
            right, at, gold = 0, 0, []
            for d in docs[: self.choice_docs]:
                n = len(d["choices"])
                picked = max(range(n), key=lambda j, at=at: scores[at + j])
                right += picked == d["target"]
                gold.append(scores[at + d["target"]])  # the gold's own log-probability, already computed
                at += n
            gold += self._loglik(self.gold_pairs[r][self.choice_docs :])
            result[r] = {**acc, "choice": right / min(len(docs), self.choice_docs), "logprob": sum(gold) / len(gold)}
        print(f"  measured {label or 'original'} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return result


def cut(scores, k: int, sites: tuple[str, ...], metadata: dict) -> NeuronSet:
    """The top k of ``scores`` among ``sites`` only."""
    ap = scores.ap.clone()
    for _layer, site, off, width in scores.layout.blocks():
        if site not in sites:
            ap[off : off + width] = -math.inf
    chosen = select_flat(ap, k)
    return NeuronSet(scores.layout.group(chosen), metadata)


def random_cut(shape, k: int, sites: tuple[str, ...], seed: int) -> NeuronSet:
    allowed = torch.cat([torch.arange(off, off + width) for _, site, off, width in shape.blocks() if site in sites])
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.sort(allowed[torch.randperm(allowed.numel(), generator=generator)[:k]]).values
    return NeuronSet(shape.group(chosen), {"method": "random", "seed": seed})


def drops(base: dict, ablated_result: dict, relations: list[str], metric: str) -> list[float]:
    out = []
    for r in relations:
        o, a = base[r][metric], ablated_result[r][metric]
        if metric == "logprob":
            out.append(o - a)
        elif o > 0:
            out.append((o - a) / o)
    return out


def mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--sets", required=True, help="a sets folder (relspec identify --out) with scores/")
    p.add_argument("--data-dir", default=None, help="folder of relation files (default: LRE; relspec-tiny: models/relspec-tiny/world)")
    p.add_argument("--relations", default=None, help="comma-separated subset of the sets' relations (default: all with scores)")
    p.add_argument("--ks", default=None, help="comma-separated k (default: 0.36%%, 1%%, 3%% of the FFN neurons)")
    p.add_argument("--seeds", type=int, default=3, help="random sets per k and site group")
    p.add_argument("--site-groups", default="all,gate+up,down")
    p.add_argument("--site-ks", default=None, help="k values for the gate+up / down groups (default: the middle k)")
    p.add_argument("--choice-docs", type=int, default=50, help="P^eva docs per relation scored as multiple choice")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, device="cpu", progress=False)
    shape = model_shape(model)
    folder = SetsFolder(args.sets)
    relations = [r for r in folder.relations() if folder.scores_path(r).is_file()]
    if args.relations:
        wanted = args.relations.split(",")
        unknown = sorted(set(wanted) - set(relations))
        if unknown:
            raise SystemExit(f"real_model.py: no scores for {', '.join(unknown)} in {args.sets}")
        relations = [r for r in relations if r in wanted]
    scores = {r: load_scores(folder.scores_path(r)) for r in relations}
    ks = [int(x) for x in args.ks.split(",")] if args.ks else [round(shape.total * f) for f in (0.0036, 0.01, 0.03)]
    site_ks = [int(x) for x in args.site_ks.split(",")] if args.site_ks else [ks[len(ks) // 2]]
    evaluator = Evaluator(model, tokenizer, relations, args.batch_size, args.choice_docs, args.data_dir)
    base = evaluator.measure()
    metrics = ["acc", "acc_lenient", "choice", "logprob"]
    rows = []
    for group in args.site_groups.split(","):
        sites = SITE_GROUPS[group]
        for k in ks if group == "all" else site_ks:
            per_relation = {}
            for r in relations:
                with ablated(model, cut(scores[r], k, sites, {"relation": r})):
                    result = evaluator.measure(f"{group} k={k} own {r}")
                per_relation[r] = {m: {"own": mean(drops(base, result, [r], m)),
                                       "others": mean(drops(base, result, [x for x in relations if x != r], m))} for m in metrics}
            random_results = []
            for seed in range(args.seeds):
                with ablated(model, random_cut(shape, k, sites, seed)):
                    random_results.append(evaluator.measure(f"{group} k={k} random seed {seed}"))
            random = {m: mean([mean(drops(base, res, relations, m)) for res in random_results]) for m in metrics}
            rows.append({"sites": group, "k": k, "share": k / shape.total, "per_relation": per_relation, "random": random,
                         "own": {m: mean([per_relation[r][m]["own"] for r in relations]) for m in metrics},
                         "others": {m: mean([per_relation[r][m]["others"] for r in relations]) for m in metrics}})
            print(f"{group:8} k={k:6}  " + "  ".join(
                f"{m}: own {_fmt(rows[-1]['own'][m], m)} others {_fmt(rows[-1]['others'][m], m)} random {_fmt(random[m], m)}" for m in metrics),
                flush=True)
    record = {"model": args.model, "sets": str(args.sets), "relations": relations, "neurons": shape.total, "seeds": args.seeds,
              "choice_docs": args.choice_docs, "original": base, "rows": rows, "seconds": time.perf_counter() - start,
              "torch_threads": torch.get_num_threads(), "command": " ".join(["python", "benchmarks/real_model.py", *sys.argv[1:]])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(report(record), encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')} ({record['seconds'] / 60:.1f} min)")
    return 0


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.2f} nats" if metric == "logprob" else f"{100 * v:.1f}%"


def report(record: dict) -> str:
    lines = [
        f"# {record['model']}: own / others / random drops",
        "",
        f"Made by `{record['command']}` in {record['seconds'] / 60:.1f} min ({record['torch_threads']} CPU threads).",
        f"Relations (those with sets in `{record['sets']}`): {', '.join(record['relations'])}; "
        f"{record['neurons']:,} FFN neurons; random: {record['seeds']} seeds; multiple choice on "
        f"{record['choice_docs']} P^eva docs per relation.",
        "",
        "Accuracy drops are relative ((original − ablated) / original; relations with original 0 left out); "
        "log-prob drops are in nats (original − ablated mean log-probability of the gold object).",
        "",
        "## Original model (P^eva)",
        "",
        "| relation | acc | acc_lenient | choice | gold log-prob |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r} | {v['acc']:.2f} | {v['acc_lenient']:.2f} | {v['choice']:.2f} | {v['logprob']:.2f} |" for r, v in record["original"].items()]
    lines += ["", "## Drops", "", "| sites | k | share | metric | own | others | random |", "|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        for m in ("acc", "acc_lenient", "choice", "logprob"):
            lines.append(f"| {row['sites']} | {row['k']} | {100 * row['share']:.2f}% | {m} | {_fmt(row['own'][m], m)} | "
                         f"{_fmt(row['others'][m], m)} | {_fmt(row['random'][m], m)} |")
    lines += ["", "## Per relation (all sites)", "", "| k | relation | acc own | acc others | choice own | choice others | log-prob own | log-prob others |",
              "|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        if row["sites"] != "all":
            continue
        for r, v in row["per_relation"].items():
            lines.append(f"| {row['k']} | {r} | {_fmt(v['acc']['own'], 'acc')} | {_fmt(v['acc']['others'], 'acc')} | "
                         f"{_fmt(v['choice']['own'], 'choice')} | {_fmt(v['choice']['others'], 'choice')} | "
                         f"{_fmt(v['logprob']['own'], 'logprob')} | {_fmt(v['logprob']['others'], 'logprob')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
