"""``relspec random``: one plain control per (k, seed) shared by every relation of a folder;
layer-matched and site-matched ones per relation; legacy per-relation folders still read; nothing replaced silently.

Built on copies of the shipped relspec-tiny sets (k = 38, one identify run: the scores files
agree on the means) and its shipped model, so nothing here trains or runs a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from relspec_lmeval.cli import main
from relspec_lmeval.errors import OutputError
from relspec_lmeval.identify import controls
from relspec_lmeval.identify.controls import random_controls, random_sets
from relspec_lmeval.identify.draws import holds_plain_draw
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path
from relspec_lmeval.sets.scores import load_scores, save_scores

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "neuron_sets" / "relspec-tiny"
TWO = ("company_hq", "person_father")


@pytest.fixture
def sets(tmp_path) -> Path:
    """A writable sets folder: three relations' sets and scores from the shipped relspec-tiny."""
    folder = tmp_path / "sets"
    (folder / "scores").mkdir(parents=True)
    for relation in (*TWO, "person_mother"):
        shutil.copy(SHIPPED / f"{relation}.safetensors", folder)
        shutil.copy(SHIPPED / "scores" / f"{relation}.safetensors", folder / "scores")
    return folder


def old_draw(base: NeuronSet, seed: int) -> set[tuple[int, str, int]]:
    """The per-relation plain draw as ``random_sets`` made it before the controls were shared."""
    shape = base.recorded_shape()
    flat = torch.sort(torch.randperm(shape.total, generator=torch.Generator().manual_seed(seed))[: len(base)]).values
    return NeuronSet(shape.group(flat)).keys()


def test_two_relations_share_one_file_written_once(sets, monkeypatch):
    saved: list[Path] = []
    save = NeuronSet.save
    monkeypatch.setattr(controls.NeuronSet, "save", lambda self, path, staged=None: saved.append(Path(path)) or save(self, path, staged))
    written = random_controls([str(sets / f"{r}.safetensors") for r in TWO], [0, 1], command="test")
    folder = SetsFolder(sets)
    assert written == {folder.random_path(38, 0): True, folder.random_path(38, 1): True}
    assert sorted(saved) == sorted(written) and sorted(p.name for p in (sets / "random").iterdir()) == ["k38-seed0.safetensors", "k38-seed1.safetensors"]
    control = NeuronSet.load(folder.random_path(38, 1))
    meta = control.metadata
    assert meta["method"] == "random" and meta["k"] == 38 and meta["seed"] == 1 and meta["layer_matched"] is False
    assert [e["relation"] for e in meta["like"]] == list(TWO) and "relation" not in meta
    assert meta["like"][1]["sha256"] == NeuronSet.load(sets / "person_father.safetensors").sha256()
    assert not control.scores  # one relation's AP would not be the other's
    means = load_scores(sets / "scores" / "person_father.safetensors").means
    assert control.has_means and all(torch.equal(control.means[key], means[idx + control.recorded_shape().offset(*key)])
                                     for key, idx in control.neurons.items())

    # a later call for a third relation with the same k finds the files and leaves them as they are
    saved.clear()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written}
    again = random_controls([str(sets / "person_mother.safetensors")], [0, 1, 2], command="later")
    assert again == {folder.random_path(38, 0): False, folder.random_path(38, 1): False, folder.random_path(38, 2): True}
    assert saved == [folder.random_path(38, 2)] and {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == before
    # the same sets in another order give byte-identical files
    other = random_sets([str(sets / f"{r}.safetensors") for r in reversed(TWO)], [0], out=sets.parent / "o", command="test")
    assert other[0].read_bytes() == folder.random_path(38, 0).read_bytes()


@pytest.mark.parametrize("seed", [0, 7])
def test_the_shared_draw_is_the_old_per_relation_draw(sets, seed):
    random_sets([str(sets / f"{r}.safetensors") for r in TWO], [seed])
    shared = NeuronSet.load(SetsFolder(sets).random_path(38, seed))
    for relation in TWO:
        assert shared.keys() == old_draw(NeuronSet.load(sets / f"{relation}.safetensors"), seed)
    assert holds_plain_draw(shared, shared.recorded_shape(), 38, seed) and not holds_plain_draw(shared, shared.recorded_shape(), 38, seed + 1)


def test_layer_matched_controls_stay_per_relation(sets):
    paths = random_sets([str(sets / f"{r}.safetensors") for r in TWO], [0], layer_matched=True)
    assert paths == [SetsFolder(sets).layer_random_path(r, 0) for r in TWO]
    for relation, path in zip(TWO, paths):
        control, base = NeuronSet.load(path), NeuronSet.load(sets / f"{relation}.safetensors")
        assert control.count_per_layer() == base.count_per_layer() and control.metadata["relation"] == relation
        assert control.has_means and control.scores and control.metadata["method"] == "random-layer-matched"
    assert NeuronSet.load(paths[0]).keys() != NeuronSet.load(paths[1]).keys()


def test_disagreeing_means_are_left_out(sets):
    """Scores files of two identify runs (other means): the shared control keeps none."""
    scores = load_scores(sets / "scores" / "company_hq.safetensors")
    scores.means = scores.means + 1.0
    save_scores(scores, sets / "scores" / "company_hq.safetensors")
    (path,) = random_sets([str(sets / f"{r}.safetensors") for r in TWO], [0])
    assert not NeuronSet.load(path).means and "different means" in NeuronSet.load(path).metadata["means_left_out"]
    # and one relation alone (its own means) may not claim the file for its means either
    with pytest.raises(OutputError, match="without the means"):
        random_sets([str(sets / "company_hq.safetensors")], [0])


@pytest.mark.parametrize("content", ["other neurons", "other means", "not a set"])
def test_an_existing_shared_file_with_other_content_is_not_replaced(sets, content, capsys):
    folder = SetsFolder(sets)
    target = folder.random_path(38, 0)
    target.parent.mkdir()
    if content == "not a set":
        target.write_bytes(b"my notes")
    else:
        random_sets([str(sets / "person_father.safetensors")], [0])
        made = NeuronSet.load(target)
        if content == "other neurons":
            made.neurons = {key: (idx + 1) % 256 if key[1] != "down_proj" else idx for key, idx in made.neurons.items()}
        else:
            made.means = {key: m + 1 for key, m in made.means.items()}
        made.save(target)
    before = target.read_bytes()
    argv = ["random", "--like", str(sets / "company_hq.safetensors"), "--seeds", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"relspec: error: {target} exists and") and "--force" in err and len(err.splitlines()) == 1
    assert target.read_bytes() == before and not folder.random_path(38, 1).exists()  # nothing written
    assert main([*argv, "--force"]) == 0
    assert "wrote 2 random control set(s)" in capsys.readouterr().out
    replaced = NeuronSet.load(target)
    assert holds_plain_draw(replaced, replaced.recorded_shape(), 38, 0) and [e["relation"] for e in replaced.metadata["like"]] == ["company_hq"]


def test_legacy_folders_still_serve_reproduce(sets, tmp_path):
    """A folder written before the shared controls: reproduce uses its per-relation file and makes the rest, once."""
    from relspec_lmeval.experiments.plan import ReproduceConfig, make_sets, prepare
    from relspec_lmeval.experiments.study import Condition

    legacy = SetsFolder(sets).legacy_random_path("person_father", 0)
    base = NeuronSet.load(sets / "person_father.safetensors")
    NeuronSet(NeuronSet.from_keys(old_draw(base, 0)).neurons, {"model": base.metadata["model"], "method": "random",
              "relation": "person_father", "seed": 0, "k": 38}).save(legacy)
    assert SetsFolder(sets).find_random("person_father", 38, 0) == legacy and SetsFolder(sets).find_random("company_hq", 38, 0) is None
    out = tmp_path / "out"
    # an OUT/sets/random file that holds something else (another model's draw, an old file) is made again
    stale = SetsFolder(out / "sets").random_path(38, 1)
    NeuronSet({(0, "up_proj"): list(range(38))}, {"model": base.metadata["model"]}).save(stale)
    cfg = ReproduceConfig(model="relspec-tiny", site_seeds=0, neuron_sets=str(sets), suite="synthetic", out=str(out), relations=",".join(TWO),
                          seeds=2, ks=[38], progress=False)
    inp = prepare(cfg)
    made = SetsFolder(out / "sets")
    assert inp.derived[Condition("random", "person_father", seed=0)] == legacy
    assert inp.derived[Condition("random", "company_hq", seed=0)] == made.random_path(38, 0)
    assert {c for c in inp.to_make if c.kind == "random"} == {Condition("random", r, seed=s) for r, s in
                                                            (("company_hq", 0), ("company_hq", 1), ("person_father", 1))}
    make_sets(inp)
    assert sorted(p.name for p in (out / "sets" / "random").iterdir()) == ["k38-seed0.safetensors", "k38-seed1.safetensors"]
    for seed in (0, 1):
        assert holds_plain_draw(NeuronSet.load(made.random_path(38, seed)), base.recorded_shape(), 38, seed)
    again = prepare(cfg)  # a rerun finds them made from the same inputs
    assert not [c for c in again.to_make if c.kind == "random"]


def test_old_shipped_control_names_name_the_shared_files():
    """``relspec-tiny/k384/random/<relation>-seed<N>`` (what scripts written before the controls were shared name) still resolves."""
    assert resolve_set_path("relspec-tiny/k384/random/person_plays_instrument-seed3") == SHIPPED / "k384" / "random" / "k384-seed3.safetensors"
    assert resolve_set_path("relspec-tiny/random/company_hq-seed0") == SHIPPED / "random" / "k38-seed0.safetensors"
    assert resolve_set_path("relspec-tiny/random/k38-seed9") == SHIPPED / "random" / "k38-seed9.safetensors"
    for gone in ("relspec-tiny/random/no_such_relation-seed0", "relspec-tiny/random/company_hq-seed10", "relspec-tiny/random/company_hq-layer-seed0"):
        with pytest.raises(Exception, match="not found"):
            resolve_set_path(gone)
    assert not [p for p in SHIPPED.rglob("random/*.safetensors") if not p.name.startswith("k")]  # the migration is complete


# ---------------------------------------------------------------------------- site-matched controls (#21)


def concentrated() -> NeuronSet:
    """A set of relspec-tiny's shape whose 40 neurons all sit in layer 3 (20 gate_proj, 5 up_proj, 15 down_proj)."""
    base = NeuronSet.load(SHIPPED / "company_hq.safetensors")
    return NeuronSet({(3, "gate_proj"): list(range(20)), (3, "up_proj"): list(range(5)), (3, "down_proj"): list(range(15))},
                     {"model": base.metadata["model"]})


def test_a_site_matched_draw_matches_the_sites_not_the_layers():
    from relspec_lmeval.identify.draws import site_matched_draw

    base = concentrated()
    shape = base.recorded_shape()
    drawn = NeuronSet(site_matched_draw(base, shape, 0))
    assert drawn.count_per_site() == base.count_per_site() == {"gate_proj": 20, "up_proj": 5, "down_proj": 15}
    assert len(drawn.count_per_layer()) >= 4 and drawn.count_per_layer() != base.count_per_layer()  # spread over the 6 layers
    drawn.validate(shape)  # every index within its site's width
    assert all(torch.equal(idx, torch.sort(idx).values) for idx in drawn.neurons.values())
    again, other = (NeuronSet(site_matched_draw(base, shape, s)) for s in (0, 1))
    assert again.keys() == drawn.keys() and other.keys() != drawn.keys()  # seeded: the same seed, the same neurons
    shipped = NeuronSet.load(SHIPPED / "person_father.safetensors")
    assert NeuronSet(site_matched_draw(shipped, shape, 3)).count_per_site() == shipped.count_per_site()


def test_site_matched_control_files(sets, capsys):
    folder = SetsFolder(sets)
    assert folder.find_site_random("person_father", 0) is None
    paths = random_sets([str(sets / f"{r}.safetensors") for r in TWO], [0, 1], site_matched=True, command="test")
    assert paths == [folder.site_random_path(r, s) for r in TWO for s in (0, 1)]
    assert folder.site_random_path("person_father", 1) == sets / "random" / "person_father-site-seed1.safetensors"
    assert folder.find_site_random("person_father", 1) == paths[3] and folder.find_site_random("person_father", 2) is None
    for relation, path in zip([r for r in TWO for _ in (0, 1)], paths):
        control, base = NeuronSet.load(path), NeuronSet.load(sets / f"{relation}.safetensors")
        meta = control.metadata
        assert meta["method"] == "random-site-matched" and meta["site_matched"] is True and "layer_matched" not in meta
        assert meta["relation"] == relation and meta["k"] == len(base) == len(control) and meta["seed"] == int(path.stem[-1])
        assert meta["like"] == {"path": str(sets / f"{relation}.safetensors"), "sha256": base.sha256()} and meta["command"] == "test"
        assert control.count_per_site() == base.count_per_site() and control.has_means and control.scores
    assert NeuronSet.load(paths[0]).keys() != NeuronSet.load(paths[1]).keys()
    # not mistaken for a legacy plain control of a relation "<r>-site"
    assert SetsFolder.legacy_random_name(paths[0]) is None and folder.find_random("person_father-site", 38, 0) is None

    # like the layer-matched ones: the relation's own, so a new call replaces them (the same call: the same bytes)
    before = paths[0].read_bytes()
    paths[0].write_bytes(b"stale")
    assert main(["random", "--like", str(sets / "company_hq.safetensors"), "--seeds", "1", "--site-matched"]) == 0
    assert "wrote 1 random control set(s)" in capsys.readouterr().out
    assert NeuronSet.load(paths[0]).metadata["command"] != "test" and len(NeuronSet.load(paths[0])) == 38  # replaced, no --force
    assert random_sets([str(sets / "company_hq.safetensors")], [0], site_matched=True, command="test") == [paths[0]]
    assert paths[0].read_bytes() == before
    # and a folder in the way is refused, --force or not, before anything is written
    shutil.rmtree(sets / "random")
    folder.site_random_path("person_father", 1).mkdir(parents=True)
    for force in ([], ["--force"]):
        assert main(["random", "--like", *(str(sets / f"{r}.safetensors") for r in TWO), "--seeds", "2", "--site-matched", *force]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"relspec: error: {folder.site_random_path('person_father', 1)} is a folder, not a random control; move it away"
        assert sorted(p.name for p in (sets / "random").iterdir()) == ["person_father-site-seed1.safetensors"]


def test_layer_and_site_matched_exclude_each_other(sets, capsys):
    argv = ["random", "--like", str(sets / "company_hq.safetensors"), "--seeds", "1", "--layer-matched", "--site-matched"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "relspec: error: --layer-matched and --site-matched exclude each other: give one (or neither, for plain controls)"]
    from relspec_lmeval.errors import UsageError

    with pytest.raises(UsageError, match="layer_matched and site_matched exclude each other"):
        random_controls([str(sets / "company_hq.safetensors")], 1, layer_matched=True, site_matched=True)
    assert not (sets / "random").exists()


def test_identify_force_removes_site_matched_controls(tmp_path):
    """``relspec identify --force`` replaces the whole run: its site-matched controls go with its sets."""
    import json

    from relspec_lmeval.identify.config import IdentifyConfig
    from relspec_lmeval.identify.pipeline import identify

    world = tmp_path / "world"
    world.mkdir()
    for name in ("person_father", "company_ceo"):  # the other relation gives the negatives
        raw = json.loads((REPO / "models" / "relspec-tiny" / "world" / f"{name}.json").read_text(encoding="utf-8"))
        raw["samples"] = raw["samples"][:48]
        (world / f"{name}.json").write_text(json.dumps(raw), encoding="utf-8")
    out = tmp_path / "ns"

    def run(k: int, force: bool = False) -> None:
        identify(IdentifyConfig(model="relspec-tiny", out=str(out), data=str(world), relations="person_father", k=k, min_positives=5,
                                batch_size=16, device="cpu", command="test", progress=False, print_table=False, force=force))

    run(20)
    assert main(["random", "--like", str(out / "person_father.safetensors"), "--seeds", "2", "--site-matched"]) == 0
    site = [SetsFolder(out).site_random_path("person_father", s) for s in (0, 1)]
    assert all(p.is_file() for p in site) and set(site) <= set(SetsFolder(out).run_files())
    run(20)  # the same run again: the folder's consistency checks see no stray set, and the controls stay
    assert all(p.is_file() for p in site)
    run(30, force=True)
    assert not (out / "random").exists() and sorted(p.name for p in out.glob("*.safetensors")) == ["person_father.safetensors"]
