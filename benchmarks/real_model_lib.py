"""The parts of ``benchmarks/real_model.py``: P^eva per document, the sets switched off, effects with intervals.

Every measurement is kept per document (``Evaluator.measure``), so an effect is a paired
difference on the same documents and its interval a bootstrap over them; the record the
script writes holds those values, and ``effects`` recomputes every number from it (``--report``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from relspec_lmeval.data.choice import build_choice_docs
from relspec_lmeval.data.logprob import first_token
from relspec_lmeval.data.metrics import METRICS as CHECKS
from relspec_lmeval.experiments.stats import bootstrap_mean, from_resamples
from relspec_lmeval.identify.activations import generate_with_means
from relspec_lmeval.identify.correctness import first_line
from relspec_lmeval.identify.draws import site_matched_draw
from relspec_lmeval.identify.tokens import encode_prompts, pad_token_id
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import select_flat
from relspec_lmeval.sets.shape import SITES

METRICS = ("acc", "acc_lenient", "choice", "logprob", "logprob_first")
LOGPROBS = ("logprob", "logprob_first")  # effects in nats; the others are relative drops of an accuracy
SITE_GROUPS = {"all": SITES, "gate+up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
COLUMNS = {"own": "own", "others": "others", "random_uniform": "random (uniform)", "random_site": "random (site-matched)"}

Values = dict[str, list[float]]  # metric → one value per document


class Evaluator:
    """Every relation's P^eva, scored per document by one model (whatever is ablated in it now).

    ``logprob`` is the summed log-probability of the first gold's tokens (`` " " + gold`` after
    the prompt); ``logprob_first`` that of its first token as ``data.logprob.first_token`` splits
    it, read from the same pass, or scored on its own where that token is not the first of the
    whole gold's tokens (``first_passes`` counts those docs).
    """

    def __init__(self, model, tokenizer, relations: list[str], batch_size: int, choice_docs: int, data_dir: str | None) -> None:
        self.model, self.tokenizer, self.batch, self.choice_docs = model, tokenizer, batch_size, choice_docs
        self.docs = {r: build_choice_docs(r, data_dir=data_dir) for r in relations}
        self.encoded = {r: encode_prompts(tokenizer, [d["prompt"] for d in docs]) for r, docs in self.docs.items()}
        # (prompt ids, continuation ids) of every choice; continuations begin with the space lm-eval's target_delimiter adds
        self.pairs = {r: [(ids, self._continuation(c)) for d, ids in zip(docs[:choice_docs], self.encoded[r]) for c in d["choices"]]
                      for r, docs in self.docs.items()}
        self.gold = {r: [self._continuation(d["golds"][0]) for d in docs] for r, docs in self.docs.items()}
        self.first = {r: [self._first_pair(d, ids, gold) for d, ids, gold in zip(docs, self.encoded[r], self.gold[r])]
                      for r, docs in self.docs.items()}
        self.first_passes = {r: sum(p is not None for p in pairs) for r, pairs in self.first.items()}

    def _continuation(self, text: str) -> list[int]:
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def _first_pair(self, doc: dict, ids: list[int], gold: list[int]) -> tuple[list[int], list[int]] | None:
        """None when the gold's first token (``first_token``) is the first of ``gold``; else the pair to score for it."""
        first = self._continuation(first_token(self.tokenizer, doc["prompt"], doc["golds"][0]))
        return None if first == gold[:1] else (ids, first)

    @torch.inference_mode()
    def _loglik(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Log-probability of each continuation token after its prompt (left padding; logits only where needed)."""
        pad = pad_token_id(self.tokenizer)
        out: list[list[float]] = []
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
                rows = logprobs[i, tail - 1 - len(cont) : tail - 1]
                out.append(rows.gather(1, torch.tensor(cont).unsqueeze(1)).squeeze(1).tolist())
        return out

    def measure(self, relations: list[str] | None = None) -> dict[str, Values]:
        """Per relation (default: all), per metric, one value per doc (``choice``: the first ``choice_docs``)."""
        return {r: self._measure(r) for r in (relations or list(self.docs))}

    def _measure(self, r: str) -> Values:
        docs = self.docs[r]
        texts, _ = generate_with_means(self.model, self.tokenizer, self.encoded[r], None, batch_size=self.batch, progress=False)
        values: Values = {name: [float(check(first_line(t), d["golds"])) for t, d in zip(texts, docs)] for name, check in CHECKS.items()}
        scores = self._loglik(self.pairs[r])
        values["choice"], gold, at = [], [], 0
        for d in docs[: self.choice_docs]:
            sums = [sum(scores[at + j]) for j in range(len(d["choices"]))]
            values["choice"].append(float(max(range(len(sums)), key=sums.__getitem__) == d["target"]))
            gold.append(scores[at + d["target"]])  # the gold's own tokens, already scored
            at += len(d["choices"])
        gold += self._loglik([(ids, cont) for ids, cont in zip(self.encoded[r][self.choice_docs :], self.gold[r][self.choice_docs :])])
        extra = iter(self._loglik([pair for pair in self.first[r] if pair is not None]))
        values["logprob"] = [round(sum(tokens), 5) for tokens in gold]
        values["logprob_first"] = [round(tokens[0] if pair is None else sum(next(extra)), 5) for tokens, pair in zip(gold, self.first[r])]
        return values


def cut(scores, k: int, sites: tuple[str, ...], metadata: dict) -> NeuronSet:
    """The top k of ``scores`` among ``sites`` only."""
    ap = scores.ap.clone()
    for _layer, site, off, width in scores.layout.blocks():
        if site not in sites:
            ap[off : off + width] = -math.inf
    return NeuronSet(scores.layout.group(select_flat(ap, k)), metadata)


def random_cut(shape, k: int, sites: tuple[str, ...], seed: int) -> NeuronSet:
    """k neurons uniform over ``sites`` (over every site: ``identify.draws.plain_draw``, the ``relspec random`` control)."""
    allowed = torch.cat([torch.arange(off, off + width) for _, site, off, width in shape.blocks() if site in sites])
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.sort(allowed[torch.randperm(allowed.numel(), generator=generator)[:k]]).values
    return NeuronSet(shape.group(chosen), {"method": "random", "seed": seed})


def site_cut(base: NeuronSet, shape, seed: int) -> NeuronSet:
    """As many neurons per site as ``base`` (any layer): ``relspec random --site-matched``'s draw."""
    return NeuronSet(site_matched_draw(base, shape, seed), {"method": "random-site-matched", "seed": seed})


# ---------------------------------------------------------------------------- effects


def _effect(metric: str, original: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """From the mean over one relation's docs under each: nats lost, or the accuracy's relative drop (NaN where it was 0)."""
    if metric in LOGPROBS:
        return original - ablated
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(original > 0, (original - ablated) / original, np.nan)


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over axis 0 leaving NaN out (weighted: a resample's seed counts); NaN where nothing is left."""
    weights = np.ones_like(values) if weights is None else np.broadcast_to(weights, values.shape)
    weights = np.where(np.isnan(values), 0.0, weights)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nansum(values * weights, axis=0) / weights.sum(axis=0)


Cell = tuple[str, np.ndarray, np.ndarray]  # (relation evaluated, original per doc, ablated per doc)


class Resampler:
    """Bootstrap draws of each relation's documents, shared by every interval of a row (seeded).

    A draw is a row of counts, so a resampled mean is a matrix product, kept per values array:
    the original's values enter every interval of their relation, and each set's several.
    """

    def __init__(self, resamples: int, seed: int) -> None:
        self.resamples, self.rng = resamples, np.random.default_rng(seed)
        self._counts: dict[tuple[str, int], np.ndarray] = {}
        self._means: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(values) → (means, values: kept alive, so ids stay unique)

    def means(self, relation: str, values: np.ndarray) -> np.ndarray:
        """``values``' mean under each resample of ``relation``'s documents: [resamples]."""
        if id(values) not in self._means:
            self.prime(relation, [values])
        return self._means[id(values)][0]

    def prime(self, relation: str, arrays: list[np.ndarray]) -> None:
        """The resampled means of ``arrays`` (one relation's, of one length), in one matrix product."""
        n = len(arrays[0])
        if (relation, n) not in self._counts:
            self._counts[relation, n] = self.rng.multinomial(n, np.full(n, 1 / n), size=self.resamples) / n
        product = self._counts[relation, n] @ np.stack(arrays, axis=1)
        self._means.update((id(values), (product[:, j], values)) for j, values in enumerate(arrays))

    def weights(self, groups: int) -> np.ndarray:
        """How often each of ``groups`` (seeds) is drawn in each resample: [groups, resamples]."""
        return self.rng.multinomial(groups, np.full(groups, 1 / groups), size=self.resamples).T


def interval(groups: list[list[Cell]], metric: str, boot: Resampler, *, over_groups: bool) -> dict:
    """The mean over ``groups`` of the mean over each group's cells, with a 95% bootstrap interval.

    Documents are resampled per relation, the same draw for every cell of that relation (the
    documents are the same under every ablation: paired). ``over_groups`` (the seeds of a random
    baseline): each resample also draws the groups with replacement, so the interval covers the
    draw of the neurons as well as the documents (two levels), and ``seeds`` lists each group's effect.
    """
    per_group = np.array([float(_nanmean(np.array([_effect(metric, o.mean(), a.mean()) for _, o, a in g]))) for g in groups])
    value = float(_nanmean(per_group))
    out: dict = {"value": None, "low": None, "high": None}
    if over_groups:
        out["seeds"] = [None if math.isnan(v) else v for v in per_group.tolist()]
    if math.isnan(value):
        return out
    boots = np.stack([_nanmean(np.stack([_effect(metric, boot.means(x, o), boot.means(x, a)) for x, o, a in g])) for g in groups])
    result = from_resamples(_nanmean(boots, boot.weights(len(groups)) if over_groups else None), value)
    return {**out, "value": value, "low": result.low, "high": result.high}


def paired(cell: Cell, metric: str, boot: Resampler, seed: int) -> dict:
    """One set on one relation's docs: a log-prob effect by ``stats.bootstrap_mean`` (original − ablated), else ``interval``."""
    _, original, ablated = cell
    if metric not in LOGPROBS:
        return interval([[cell]], metric, boot, over_groups=False)
    result = bootstrap_mean(ablated, original, resamples=boot.resamples, seed=seed)
    return {"value": result.observed, "low": result.low, "high": result.high}


def _arrays(tree):
    """The row's per-document lists as float arrays (once: ``Resampler`` keeps results per array)."""
    if isinstance(tree, dict):
        return {key: _arrays(value) for key, value in tree.items()}
    if isinstance(tree, list) and tree and isinstance(tree[0], (dict, list)):
        return [_arrays(value) for value in tree]
    return np.asarray(tree, dtype=np.float64)


def row_effects(row: dict, original: dict[str, Values], relations: list[str], *, resamples: int, seed: int) -> dict:
    """Own / others / both random baselines of one (sites, k) row, overall and per relation, every metric."""
    boot = Resampler(resamples, seed)  # every row the same draws of each relation's documents
    base, sets, uniform, site = _arrays(original), _arrays(row["own_sets"]), _arrays(row["random_uniform"]), _arrays(row["random_site"])
    out: dict = {name: {} for name in COLUMNS} | {"per_relation": {r: {name: {} for name in COLUMNS} for r in relations}}
    for m in METRICS:
        if not all(len(base[x][m]) for x in relations):  # not measured (e.g. --choice-docs 0): no effect to state
            for column in COLUMNS:
                out[column][m] = _none()
                for r in relations:
                    out["per_relation"][r][column][m] = _none()
            continue
        for x in relations:  # every array evaluated on x, resampled at once
            boot.prime(x, [base[x][m], *(sets[r][x][m] for r in relations), *(res[x][m] for res in uniform), *(v[m] for v in site[x])])

        def cell(x: str, values: dict, m: str = m) -> Cell:
            return x, base[x][m], values[m]

        others = {r: [cell(x, sets[r][x]) for x in relations if x != r] for r in relations}
        out["own"][m] = interval([[cell(r, sets[r][r])] for r in relations], m, boot, over_groups=False)
        out["others"][m] = interval([g for g in others.values() if g], m, boot, over_groups=False) if len(relations) > 1 else _none()
        out["random_uniform"][m] = interval([[cell(x, res[x]) for x in relations] for res in uniform], m, boot, over_groups=True)
        out["random_site"][m] = interval([[cell(r, site[r][i]) for r in relations] for i in range(len(uniform))], m, boot, over_groups=True)
        for r in relations:
            mine = out["per_relation"][r]
            mine["own"][m] = paired(cell(r, sets[r][r]), m, boot, seed)
            mine["others"][m] = interval([others[r]], m, boot, over_groups=False) if others[r] else _none()
            mine["random_uniform"][m] = interval([[cell(r, res[r])] for res in uniform], m, boot, over_groups=True)
            mine["random_site"][m] = interval([[cell(r, values)] for values in site[r]], m, boot, over_groups=True)
    return out


def _none() -> dict:
    return {"value": None, "low": None, "high": None}
