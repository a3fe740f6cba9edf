"""``relspec random``: one plain control per (k, seed) shared by every relation of a folder;
layer-matched ones per relation; legacy per-relation folders still read; nothing replaced silently.

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
    cfg = ReproduceConfig(model="relspec-tiny", neuron_sets=str(sets), suite="synthetic", out=str(out), relations=",".join(TWO),
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
