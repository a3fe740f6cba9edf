"""Verdicts and intervals of ``relspec reproduce`` on synthetic studies whose answer is known (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from relspec_lmeval.data.tasks import SUITES, task_name
from relspec_lmeval.experiments import effects as fx
from relspec_lmeval.experiments import intervals as iv
from relspec_lmeval.experiments import verdicts as vd
from relspec_lmeval.experiments.judging import classify
from relspec_lmeval.experiments.stats import bootstrap_mean
from relspec_lmeval.experiments.study import BASELINE, Condition, Measurement, SetStats, Study

SUITE = SUITES["lre"]
RELATIONS = ["person_father", "person_mother", "company_hq", "landmark_country", "star_constellation"]
N = 50


def correct(k: int, n: int = N) -> list[float]:
    """k correct documents of n (the first k)."""
    return [1.0] * k + [0.0] * (n - k)


class Builder:
    """A study: per condition, per task, per metric, the documents' values."""

    def __init__(self, relations=RELATIONS, seeds=4, site_seeds=4, layers=12, ks=()):
        self.relations, self.seeds, self.site_seeds, self.ks = relations, list(range(seeds)), list(range(site_seeds)), list(ks)
        self.results: dict[Condition, Measurement] = {}
        self.layers = layers
        self.per_layer = {r: {layer: {"gate_proj": 10} for layer in range(layers)} for r in relations}

    def put(self, cond: Condition, group: str | None, relation: str, **metrics: list[float]) -> None:
        if group is None:
            return
        m = self.results.setdefault(cond, Measurement({}, {}))
        m.per_sample.setdefault(task_name(group, relation), {}).update(metrics)
        m.metrics.setdefault(task_name(group, relation), {}).update({k: float(np.mean(v)) for k, v in metrics.items()})

    def acc(self, cond: Condition, relation: str, k: int, split: str = "eva") -> None:
        self.put(cond, SUITE.recall_group(split), relation, acc=correct(k), acc_lenient=correct(k))

    def logprob(self, cond: Condition, relation: str, values, split: str = "eva") -> None:
        self.put(cond, SUITE.logprob_group(split), relation, logprob=list(values))

    def study(self) -> Study:
        sets = {r: SetStats(sum(c for counts in self.per_layer[r].values() for c in counts.values()), self.per_layer[r]) for r in self.relations}
        zeros = {a: {b: 0 for b in self.relations} for a in self.relations}
        settings = {"neuron_sets": "sets", "limit": N, "det_limit": N, "runs": 1, "docs": 1, "run_seconds": 1.0, "new_runs": 0, "elapsed": 1.0}
        return Study(model="m", suite=SUITE, relations=self.relations, seeds=self.seeds, ks=self.ks, num_layers=self.layers, sets=sets,
                     overlaps=zeros, jaccard=zeros, results=self.results, settings=settings, site_seeds=self.site_seeds)


def scenario(base: int = 30, own: int = 3, other: int | None = None, rand: int | None = None, site: int | None = None,
             splits=("eva", "det"), logprob: tuple[float, float, float] | None = None, **kw) -> Builder:
    """Every relation: ``base`` correct of 50; its own set leaves ``own``, the other sets ``other``,
    the random controls ``rand`` (uniform) and ``site`` (site-matched). ``logprob``: the (baseline,
    own, random) mean log-probabilities, per document with noise."""
    b = Builder(**kw)
    rng = np.random.default_rng(0)
    other, rand = base if other is None else other, base if rand is None else rand
    site = rand if site is None else site
    gold = {(split, r): rng.normal(logprob[0], 1.0, N) for split in splits for r in b.relations} if logprob else {}
    for r in b.relations:
        for split in splits:
            b.acc(BASELINE, r, base, split)
            for c in b.relations:
                if split == "eva" or c == r:
                    b.acc(Condition("own", r), c, own if c == r else other, split)
            for s in b.seeds:
                b.acc(Condition("random", r, seed=s), r, rand, split)
            for s in b.site_seeds:
                b.acc(Condition("random_site", r, seed=s), r, site, split)
            if logprob:
                lp_base, lp_own, lp_rand = logprob
                b.logprob(BASELINE, r, gold[split, r], split)
                for c in b.relations:
                    if split == "eva" or c == r:
                        b.logprob(Condition("own", r), c, gold[split, c] + rng.normal(lp_own - lp_base if c == r else 0, 0.3, N), split)
                for kind, seeds in (("random", b.seeds), ("random_site", b.site_seeds)):
                    for s in seeds:
                        b.logprob(Condition(kind, r, seed=s), r, gold[split, r] + rng.normal(lp_rand - lp_base, 0.3, N), split)
    return b


def by_finding(study: Study) -> dict[str, vd.Verdict]:
    return {v.finding.split(" ")[0] + v.finding.split(":")[0][-12:]: v for v in vd.verdicts(study)}


# ---------------------------------------------------------------------------- finding 2


def test_selective_sets_agree():
    study = scenario(base=30, own=3).study()
    v = vd.finding_own_vs_random(study)
    assert v.verdict == "agrees" and v.metric == fx.ACC.label
    assert "5 of 5 significant" in v.statistic and "site-matched" in v.statistic
    assert vd.finding_random_nothing(study).verdict == "agrees"
    assert vd.finding_generalisation(study).verdict == "agrees"


def test_random_as_damaging_as_own_disagrees():
    study = scenario(base=30, own=5, rand=5).study()
    v = vd.finding_own_vs_random(study)
    assert v.verdict == "disagrees" and "0 of 5 significant" in v.statistic
    assert vd.finding_random_nothing(study).verdict == "disagrees"  # random sets drop far more than 10%


def test_site_matched_baseline_must_be_beaten_too():
    """Own beats uniform random, but site-matched controls do as much damage: not 'agrees'."""
    study = scenario(base=30, own=3, rand=30, site=3).study()
    v = vd.finding_own_vs_random(study)
    assert v.verdict == "disagrees"
    assert "own − uniform random: 5 of 5 significant" in v.statistic and "own − site-matched random: 0 of 5 significant" in v.statistic


def test_without_site_seeds_the_uniform_baseline_decides_and_says_so():
    study = scenario(base=30, own=3, site_seeds=0).study()
    v = vd.finding_own_vs_random(study)
    assert v.verdict == "agrees" and "site-matched baseline not run" in v.statistic


def test_acc_without_power_falls_to_logprob():
    """2 correct of 50 on every relation: acc has no power; the log-probability shows the effect."""
    study = scenario(base=2, own=0, logprob=(-2.0, -5.0, -2.0)).study()
    v = vd.finding_own_vs_random(study)
    assert v.metric == fx.LOGPROB.label and v.verdict == "agrees"
    assert fx.has_power(study, fx.LOGPROB, "eva", "person_father") and not fx.has_power(study, fx.ACC, "eva", "person_father")


def test_without_power_and_logprob_cannot_tell():
    study = scenario(base=2, own=0).study()
    v = vd.finding_own_vs_random(study)
    assert v.verdict == "cannot tell" and v.metric == "—"
    assert "acc, acc_lenient: needs ≥ 10 correct P^eva documents in ≥ 3 relations; this model has 0 (best: person_father 2/50" in v.needed
    assert "logprob: not measured on P^eva" in v.needed


def test_power_needs_three_relations():
    b = scenario(base=30, own=3)
    for r in b.relations[2:]:  # 3 of 5 relations: 2 correct documents only
        b.acc(BASELINE, r, 2)
    v = vd.finding_own_vs_random(b.study())
    assert v.verdict == "cannot tell" and "this model has 2 (person_father 30/50, person_mother 30/50)" in v.needed


# ---------------------------------------------------------------------------- finding 1


def test_middle_layers():
    b = Builder(layers=12)
    for r in b.relations:
        b.per_layer[r] = {layer: {"up_proj": 30 if 4 <= layer < 8 else 5} for layer in range(12)}
    v = vd.finding_layers(b.study())
    assert v.verdict == "agrees" and "layers 4–7" in v.statistic
    for r in b.relations:
        b.per_layer[r] = {layer: {"up_proj": 30 if layer < 4 else 5} for layer in range(12)}
    assert vd.finding_layers(b.study()).verdict == "disagrees"
    for r in b.relations:
        b.per_layer[r] = {layer: {"up_proj": 10} for layer in range(12)}
    assert vd.finding_layers(b.study()).verdict == "cannot tell"


# ---------------------------------------------------------------------------- findings 3, 4


def test_interference_cell_detected_and_named():
    b = scenario(base=20, own=2)
    b.acc(Condition("own", "person_father"), "person_mother", 40)  # mother improves a lot when father's set is off
    v = vd.finding_interference(b.study())
    assert v.verdict == "agrees" and "person_father → person_mother" in v.statistic and "1 of 20" in v.statistic


def test_interference_holm():
    """A moderate improvement (7 more correct: McNemar p = 0.016) is significant alone, not among 20 cells."""
    b = scenario(base=20, own=2)
    b.acc(Condition("own", "person_father"), "person_mother", 27)
    assert vd.finding_interference(b.study()).verdict == "cannot tell"  # 20 cells < 66: absence says nothing
    one = scenario(base=20, own=2, relations=RELATIONS[:2])
    one.acc(Condition("own", "person_father"), "person_mother", 27)
    assert vd.finding_interference(one.study()).verdict == "agrees"


def test_classify_applies_holm():
    one = iv.Interval(0.3, 0.01, 0.1, 0.5)
    assert classify([one], unit="relative") == ["significant"]
    assert classify([one] * 10, unit="relative") == ["unclear"] * 10  # 10 × 0.01 → 0.1 each after Holm


def test_others_stable_and_versatility():
    b = scenario(base=30, own=3, relations=[*RELATIONS, "person_pro_sport", "person_sport_position"])
    b.acc(Condition("own", "person_father"), "person_mother", 8)  # the related relation falls too
    study = b.study()
    assert vd.finding_others_stable(study).verdict == "agrees"
    v = vd.finding_versatility(study)
    assert "person_father → person_mother" in v.statistic and "1 of 4 significant" in v.statistic  # 4 testable pairs
    assert "star_constellation → landmark_continent: landmark_continent not in the study" in v.statistic


def test_versatility_needs_the_pairs():
    v = vd.finding_versatility(scenario(relations=["company_hq", "landmark_country", "company_ceo"]).study())
    assert v.verdict == "cannot tell" and "person_father → person_mother: person_father, person_mother not in the study" in v.needed


# ---------------------------------------------------------------------------- intervals


def test_paired_interval_is_bootstrap_mean():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 40), rng.normal(-0.5, 1, 40)
    e = iv.paired(x, y, binary=False, relative=False, seed=7)
    b = bootstrap_mean(y, x, resamples=iv.RESAMPLES, seed=7)
    assert (e.drop.observed, e.drop.low, e.drop.high) == pytest.approx((b.observed, b.low, b.high))


def test_two_level_interval_widens_with_seed_spread():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 60)
    noise = rng.normal(0, 0.2, (6, 60))
    alike = base - 1 + noise
    spread = alike + np.array([-1.5, -0.9, -0.3, 0.3, 0.9, 1.5])[:, None]  # the seeds differ by a constant each
    narrow, wide = (iv.seeded(base, t, relative=False, seed=3) for t in (alike, spread))
    assert narrow.drop.observed == pytest.approx(wide.drop.observed)
    assert (wide.drop.high - wide.drop.low) > 2 * (narrow.drop.high - narrow.drop.low)
    assert wide.seed_std == pytest.approx(np.std([0 - s for s in (-1.5, -0.9, -0.3, 0.3, 0.9, 1.5)], ddof=1), rel=0.05)


def test_two_level_interval_covers_at_about_the_nominal_rate():
    """Seeds × documents with both random: the 95% interval covers the true mean drop in ≥ 88% of simulations."""
    rng = np.random.default_rng(4)
    hits, trials = 0, 150
    for t in range(trials):
        base = rng.normal(0, 1, 40)
        doc_effect = rng.normal(0, 0.5, 40)  # how much each document is hurt, beyond the mean of 0.3
        table = base - 0.3 - doc_effect - rng.normal(0, 0.4, (5, 1)) - rng.normal(0, 0.3, (5, 40))
        e = iv.seeded(base, table, relative=False, seed=t, resamples=500)
        hits += e.drop.low <= 0.3 <= e.drop.high
    assert hits / trials >= 0.88


def test_legacy_per_sample_lists_are_acc():
    m = Measurement({}, {"relation_recall_a": [1, 0, 1]})
    assert m.per_sample == {"relation_recall_a": {"acc": [1, 0, 1]}}


# ---------------------------------------------------------------------------- findings 2 (P^det vs P^eva), 6, 7, 8


def test_generalisation_disagrees_when_only_seen_subjects_drop():
    b = scenario(base=30, own=3)
    for r in b.relations:
        b.acc(Condition("own", r), r, 30, "eva")  # no drop on unseen subjects
    study = b.study()
    assert vd.finding_own_vs_random(study).verdict == "disagrees"
    v = vd.finding_generalisation(study)
    assert v.verdict == "disagrees" and v.statistic.startswith("P^det agrees") and "P^eva disagrees" in v.statistic


def _per_split(b: Builder, split: str, base: int, own: int) -> None:
    for r in b.relations:
        b.acc(BASELINE, r, base, split)
        b.acc(Condition("own", r), r, own, split)


def test_languages_and_second_template():
    b = scenario(base=30, own=3)
    for lang in SUITE.languages:
        _per_split(b, lang, 20, 2 if lang != "ja" else 20)  # every language drops but ja
    _per_split(b, "t2", 25, 5)
    study = b.study()
    v = vd.finding_languages(study)
    assert v.verdict == "cannot tell" and "de: agrees" in v.statistic and "ja: disagrees" in v.statistic
    assert vd.finding_templates(study).verdict == "agrees"
    for lang in SUITE.languages:
        _per_split(b, lang, 20, 2)
    assert vd.finding_languages(b.study()).verdict == "agrees"


def test_perplexity_band():
    b = scenario(base=30, own=3)
    rng = np.random.default_rng(5)
    for r in b.relations:
        loglik = rng.uniform(-40, -20, N)
        b.put(BASELINE, SUITE.ppl, r, word_perplexity=[[float(x), 10.0] for x in loglik])
        b.put(Condition("own", r), SUITE.ppl, r, word_perplexity=[[float(x + rng.normal(0, 0.05)), 10.0] for x in loglik])
    v = vd.finding_perplexity(b.study())
    assert v.verdict == "agrees" and "5 of 5 relations within ±10%" in v.statistic
    for r in b.relations:  # 3 nats more loss per 10 words: word perplexity × e^0.3, +35%
        pairs = b.results[BASELINE].per_sample[f"{SUITE.ppl}_{r}"]["word_perplexity"]
        b.put(Condition("own", r), SUITE.ppl, r, word_perplexity=[[ll - 3.0, w] for ll, w in pairs])
    assert vd.finding_perplexity(b.study()).verdict == "disagrees"


def test_others_stable_disagrees_when_every_relation_falls():
    study = scenario(base=30, own=3, other=3).study()
    v = vd.finding_others_stable(study)
    assert v.verdict == "disagrees" and "0 of 5 significant" in v.statistic


# ---------------------------------------------------------------------------- the report and the flag


def test_report_opens_with_the_verdicts(tmp_path):
    from relspec_lmeval.experiments.report import write_report

    report = write_report(scenario(base=2, own=0, logprob=(-2.0, -5.0, -2.0)).study(), tmp_path).read_text()
    assert report.index("## Verdicts") < report.index("## Fig. 1")
    assert "| 2. own set's drop far above random sets' (P^eva) | **agrees** | gold log-prob (nats) |" in report
    assert "**gold log-prob (nats)**" in report and "site-matched random drop" in report  # Fig. 3 with intervals
    for name in ("verdicts", "fig3_intra_ci", "fig4_cells_ci", "fig4_drop_matrix_logprob", "table2_perplexity_ci"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file()
    assert (tmp_path / "figures" / "fig3_intra_logprob.png").is_file()


def test_negative_site_seeds_is_a_usage_error(tmp_path, capsys):
    from relspec_lmeval.cli import main as cli_main

    args = ["reproduce", "--model", "m", "--neuron-sets", "s", "--suite", "lre", "--out", str(tmp_path / "out"), "--site-seeds", "-1"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "relspec: error: --site-seeds must be 0 (no site-matched controls) or more, got -1"
    assert not (tmp_path / "out").exists()


def test_pooled_drops_of_one_set_on_different_relations_are_kept_apart():
    """The same set, two different (plus, minus) lists of equal length: two different numbers."""
    b = scenario(base=30, own=3, other=30)
    b.acc(Condition("own", "person_father"), "person_mother", 10)
    study = b.study()
    row = lambda _r: Condition("own", "person_father")  # noqa: E731
    first = fx.pooled_drop(study, row, fx.ACC, "eva", ["person_mother"], ["company_hq"])
    second = fx.pooled_drop(study, row, fx.ACC, "eva", ["company_hq"], ["landmark_country"])
    assert first.observed == pytest.approx(20 / 30) and second.observed == pytest.approx(0.0)


def test_no_relative_contrast_without_a_correct_baseline_document():
    zero = [0.0] * 10
    assert iv.contrast(zero, zero, [zero, zero], relative=True, seed=0) is None
    assert iv.contrast(zero, zero, [zero, zero], relative=False, seed=0).observed == 0
