"""Relation data: splits, prompts, metric, data location (no model, no network)."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import LRE_DIR

from relspec_lmeval.data import lre as lre_data
from relspec_lmeval.data.relations import (
    EVA_SIZE,
    RELATIONS,
    SPLIT_SEED,
    build_docs,
    build_ppl_docs,
    custom_dataset,
    docs_hash,
    is_correct,
    process_results,
    resolve_lre_dir,
)
from relspec_lmeval.errors import DataError

pytestmark = pytest.mark.usefixtures("lre_env")  # every test reads the local LRE copy



PAPER_ORDER = (
    "company_ceo company_hq landmark_continent landmark_country person_father person_mother "
    "person_occupation person_plays_instrument person_pro_sport person_sport_position "
    "product_company star_constellation"
).split()

# The paper's templates, copied literally from its appendix (PAPER.md), not from the code.
PAPER_TEMPLATES = {
    "company_ceo": ["{}'s CEO is", "The CEO of {} is", "The name of the CEO of {} is"],
    "company_hq": ["{} is headquartered in the city of", "The headquarters of {} are in the city of"],
    "landmark_continent": ["{} is on the continent of"],
    "landmark_country": ["{} is in the country of"],
    "person_father": ["{}'s father is named"],
    "person_mother": ["{}'s mother is named", "Name of mother of {} is"],
    "person_occupation": ["{} works as a", "By profession, {} is a"],
    "person_plays_instrument": ["{} plays the instrument of", "What instrument does {} play? They play the"],
    "person_pro_sport": ["{} plays the sport of"],
    "person_sport_position": [
        "{} plays in the position of a",
        "In their sport, {} plays as a",
        "Which position does {} play? They play as a",
    ],
    "product_company": ["{} was created by which company"],
    "star_constellation": ["{} is part of the constellation named"],
}
PAPER_T2 = {
    "company_ceo": "Who is the CEO of {}? Their name is",
    "company_hq": "Where are the headquarters of {}? It is in the city of",
    "landmark_continent": "What continent is {} on? It is on",
    "landmark_country": "What country is {} in? It is in",
    "person_father": "Who is {}'s father? Their father is named",
    "person_mother": "Who is {}'s mother? Their mother is named",
    "person_occupation": "{} works professionally as a",
    "person_plays_instrument": "The instrument that {} plays is",
    "person_pro_sport": "What sport does {} play? They play",
    "person_sport_position": "In their sport, {} plays in the position of",
    "product_company": "{} is a product of which company",
    "star_constellation": "What is the name of the constellation that {} is part of? It is part of",
}

# docs_hash of (P^eva, P^det) with SPLIT_SEED 250217355, computed once: any change to
# the split rule, templates or doc fields shows up here.
PINNED = {
    "company_ceo": ("cdcda03636b2dcb3afc33531134936762bcba867b6d31b9b2fffdb8b010d47e5", "6dc2c6a4b58f12d8bbc9794e526cb466a039213995b6cb3284f855b4ec522437"),
    "company_hq": ("4b27b54a1bddfcb99d04b3a18afdfaf36ebfaa60fca54b917db17d2a13e05460", "f07dafaef3c2bd7c93ecfd7ead0c3030403debcf60f25424ec4c78880e2dcc4a"),
    "landmark_continent": ("ce60c6df74f66ef4b092c7810a4e2c980eed2ce915c03b013259be21402f9528", "780497cb736c23054e6f166d22f646de502471236cda8ba0c68d2f4614e96613"),
    "landmark_country": ("c20a5c4f66fdd2b320ea405690d1b1cf2a86c1bbed545ba1a7bfeeedcf8480ac", "a5e22a6a1241e57feb0bf837f4dfb99f13a6f202dbba9208fea6aac2b7124970"),
    "person_father": ("d08315ebd2732521f181fb1d593b825e8d8026ee4b685e32353ac33607a0d4cf", "b2356b5766b73530f8bb0ccc32e5e62570c25f5da93041c89e5b64ba8ff739c0"),
    "person_mother": ("a6a3f96d3ef48f2641a45aac81277fddf5e3f06ab9a17118c4938f3be0ef9ef3", "3726469d2aaf4d06bb303161d73bbf5581e6b48c276813ac24083f81ddff9099"),
    "person_occupation": ("c5a153d06cd3de5149f3c29400031a353f5d5eb7164ece6476ffbf803c955eec", "9cfa0f26cc738c45f0a294cd3b8dd11373d3361e60f7dfd2aef4c2b68695a308"),
    "person_plays_instrument": ("1d71149bf7782411c57156b3a0d48b286916fbecfd2b6deba9e5f71c32b48f18", "cb1f64e8c3de9d41e3ce32c1c227c40e3e04fb41e64bb55afeb61657a1e1d199"),
    "person_pro_sport": ("b86016ed6acdd0a8f51a27618eb1a10ff4e5bbd6c2eb8cf3cd410dfd9435abd0", "d9a8b43b6c87d35d3d9a72d4b54c75ba4f5ab35844a3cd4d624bc33b2c7254f0"),
    "person_sport_position": ("35f5e15ad846c55eb958436d78fc4cd4611f0b876025e55899c7250d6fdb451d", "9695f1fdda7c95f3458c280a7faf9801469bce5e083a9edfc5f45b6fc3300cea"),
    "product_company": ("c61d5882d7801d000cf7a0f7054fbd5c9da16c091c96fccce77c03902bac2ef6", "3a41b76675a3c5e4e73988631940b31b276979971d3d1b7f6b7ff4f560dd0c4e"),
    "star_constellation": ("186d7415abb1b481203798381b09e0c36ac7dc7fa1fe2798789fc381d00ab6c5", "15d48e9336cfb6ee7a73a9d88edcf5d65534f8f9eaa6a6a63f6c75d91aed16f4"),
}  # fmt: skip


def _samples(relation):
    from relspec_lmeval.data.templates import PAPER_RELATIONS

    return json.loads((LRE_DIR / PAPER_RELATIONS[relation].file).read_text())["samples"]


# ---------------------------------------------------------------- splits


def test_relations_are_the_papers_in_order():
    assert RELATIONS == tuple(PAPER_ORDER)
    assert SPLIT_SEED == 250217355


@pytest.mark.parametrize("relation", PAPER_ORDER)
def test_split_sizes_disjointness_and_pinned_hash(relation):
    eva, det = build_docs(relation, "eva"), build_docs(relation, "det")
    assert len(eva) == EVA_SIZE == 50
    eva_subjects = {d["subject"] for d in eva}
    det_subjects = {d["subject"] for d in det}
    assert len(eva_subjects) == 50
    assert not eva_subjects & det_subjects
    # every subject of the file is in exactly one split
    assert eva_subjects | det_subjects == {s["subject"] for s in _samples(relation)}
    # P^det: all templates x remaining subjects
    assert len(det) == len(det_subjects) * len(PAPER_TEMPLATES[relation])
    assert (docs_hash(eva), docs_hash(det)) == PINNED[relation]


def test_duplicates_dropped_and_multi_object_subjects_keep_all_golds():
    samples = _samples("product_company")
    assert ("Windows Server 2003", "Microsoft") in [(s["subject"], s["object"]) for s in samples]
    docs = {d["subject"]: d for d in build_docs("product_company", "eva") + build_docs("product_company", "det")}
    assert docs["Windows Server 2003"]["golds"] == ["Microsoft"]  # listed twice in LRE
    assert docs["SNES-CD"]["golds"] == ["Nintendo", "Sony"]
    for doc in build_docs("person_plays_instrument", "eva") + build_docs("person_plays_instrument", "det"):
        want = list(dict.fromkeys(s["object"] for s in _samples("person_plays_instrument") if s["subject"] == doc["subject"]))
        assert doc["golds"] == want
    multi = [d for d in build_docs("person_plays_instrument") if len(d["golds"]) > 1]
    assert multi and process_results(multi[0], [" " + multi[0]["golds"][1]]) == {"acc": 1.0, "acc_lenient": 1.0}


def test_split_does_not_depend_on_file_order(tmp_path):
    raw = json.loads((LRE_DIR / "company_ceo.json").read_text())
    raw["samples"] = raw["samples"][::-1] + raw["samples"][:5]  # reversed, with duplicates
    (tmp_path / "company_ceo.json").write_text(json.dumps(raw))
    assert docs_hash(build_docs("company_ceo", data_dir=tmp_path)) == PINNED["company_ceo"][0]


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("relation", PAPER_ORDER)
def test_prompts_are_the_papers_templates(relation):
    templates = PAPER_TEMPLATES[relation]
    for i, doc in enumerate(build_docs(relation)):
        assert doc["template"] == templates[i % len(templates)]  # round robin over P^eva
        assert doc["prompt"] == doc["template"].replace("{}", doc["subject"]) + "? Answer:"
        assert doc["relation"] == relation and doc["language"] == "en"
    for doc in build_docs(relation, template_set="t2"):
        assert doc["prompt"] == PAPER_T2[relation].replace("{}", doc["subject"]) + "? Answer:"


def test_literal_prompts():
    eva = build_docs("company_ceo")
    assert eva[0]["prompt"] == "Simon & Schuster's CEO is? Answer:"
    assert eva[1]["prompt"] == "The CEO of Alibaba Group is? Answer:"
    assert eva[2]["prompt"] == "The name of the CEO of Valeo is? Answer:"
    assert build_docs("person_father")[0]["prompt"] == "George Clooney's father is named? Answer:"
    assert build_docs("product_company")[0]["prompt"] == "WebM was created by which company? Answer:"
    assert build_docs("star_constellation", template_set="t2")[0]["prompt"] == (
        "What is the name of the constellation that Lambda Hydrae is part of? It is part of? Answer:"
    )
    assert not any(d["prompt"].startswith("<s>") for d in build_docs("person_mother"))  # BOS: the model's job


@pytest.mark.parametrize("language", ["de", "es", "fr", "zh", "ja"])
def test_multilingual_uses_the_same_triples(language):
    suffix = {"de": "? Antwort:", "es": "? Respuesta:", "fr": " ? Réponse :", "zh": "？答案：", "ja": "？答え："}
    for relation in PAPER_ORDER:
        english, other = build_docs(relation), build_docs(relation, language=language)
        assert [(d["subject"], d["golds"]) for d in other] == [(d["subject"], d["golds"]) for d in english]
        for doc in other:
            assert doc["language"] == language and doc["prompt"].endswith(suffix[language])
            assert doc["subject"] in doc["prompt"] or language == "fr"  # French may elide "de"
            assert "Answer" not in doc["prompt"]


def test_multilingual_literal_prompts():
    assert build_docs("person_father", language="de")[0]["prompt"] == "Der Vater von George Clooney heißt? Antwort:"
    assert build_docs("person_father", language="es")[0]["prompt"] == "¿El padre de George Clooney se llama? Respuesta:"
    assert build_docs("company_ceo", language="fr")[1]["prompt"] == "Le PDG d'Alibaba Group est ? Réponse :"
    assert build_docs("person_father", language="zh")[0]["prompt"] == "George Clooney的父亲名叫？答案："
    assert build_docs("person_father", language="ja")[0]["prompt"] == "George Clooneyの父親の名前は？答え："


def test_ppl_docs():
    docs = build_ppl_docs("company_hq")
    assert len(docs) == 50 and len({d["object"] for d in docs}) == 50
    det_objects = {g for d in build_docs("company_hq", "det") for g in d["golds"]}
    for doc in docs:
        assert doc["object"] in det_objects
        assert doc["text"] == f"The company's annual report was mailed directly from its headquarters in {doc['object']}."
    for relation in PAPER_ORDER:
        docs = build_ppl_docs(relation)
        assert 1 <= len(docs) <= 50
        assert all(d["text"].endswith(d["object"] + ".") for d in docs)
    assert len(build_ppl_docs("landmark_continent")) == 5  # LRE has 5 continents


# ---------------------------------------------------------------- metric


@pytest.mark.parametrize(
    ("generated", "golds", "expected"),
    [
        (" Paris", ["Paris"], True),  # generate_until output keeps its leading space
        ("Paris", ["Paris"], True),
        (" Paris\n", ["Paris"], True),
        (" Par", ["Paris"], True),  # a partial word is a prefix (2 tokens may end mid-word)
        (" Tim Cook", ["Tim Cook"], True),
        (" Tim", ["Tim Cook"], True),
        (" Tim Co", ["Tim Cook"], True),
        (" Paris.", ["Paris"], False),  # trailing punctuation is not a prefix
        (" Paris, France", ["Paris"], False),
        (" Parisian", ["Paris"], False),
        (" London", ["Paris"], False),
        ("", ["Paris"], False),  # empty output is never right
        ("   \n", ["Paris"], False),
        (" paris", ["Paris"], False),  # case-sensitive, like the paper's string prefix
        (" PARIS", ["Paris"], False),
        (" guitar", ["violin", "guitar"], True),  # any gold counts
        (" piano", ["violin", "guitar"], False),
        (" Paris", [], False),
        (" Tim", [" Tim Cook "], True),
    ],
)

def test_is_correct(generated, golds, expected):
    assert is_correct(generated, golds) is expected


# ---------------------------------------------------------------- data location


def test_unknown_relation_suggests_a_close_match():
    with pytest.raises(ValueError, match="Did you mean 'person_father'") as err:
        build_docs("person_fathr")
    assert "star_constellation" in str(err.value)  # lists what is available
    with pytest.raises(ValueError, match="split"):
        build_docs("company_ceo", split="test")


def test_lre_file_stem_is_an_alias_and_other_lre_relations_load():
    assert build_docs("landmark_on_continent") == build_docs("landmark_continent")
    docs = build_docs("country_capital_city")  # not a paper relation: the file's own templates
    raw = json.loads((LRE_DIR / "country_capital_city.json").read_text())
    assert {d["template"] for d in docs} <= set(raw["prompt_templates"])
    assert 0 < len(docs) < 50  # small file: half its subjects


def test_user_relation_in_any_folder(tmp_path):
    samples = [{"subject": f"Town {i}", "object": f"Land {i % 3}"} for i in range(10)]
    rel = {"prompt_templates": ["{} lies in"], "prompt_templates_zs": ["Where is {}? In"], "samples": samples}
    (tmp_path / "town_land.json").write_text(json.dumps(rel))
    eva, det = build_docs("town_land", data_dir=tmp_path), build_docs("town_land", "det", data_dir=tmp_path)
    assert len(eva) == 5 and len(det) == 5
    assert eva[0]["prompt"] == eva[0]["subject"] + " lies in? Answer:"
    assert build_docs("town_land", template_set="t2", data_dir=tmp_path)[0]["template"] == "Where is {}? In"
    with pytest.raises(ValueError, match="templates"):
        build_docs("town_land", language="de", data_dir=tmp_path)
    with pytest.raises(ValueError, match="ppl_sentence"):
        build_ppl_docs("town_land", data_dir=tmp_path)


def test_missing_data_error_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("RELSPEC_LRE_DIR", str(tmp_path))  # empty
    with pytest.raises(DataError, match="RELSPEC_LRE_DIR"):
        build_docs("company_ceo")
    monkeypatch.delenv("RELSPEC_LRE_DIR")  # nothing cached, downloads forbidden
    with pytest.raises(DataError, match="RELSPEC_OFFLINE.*RELSPEC_LRE_DIR"):
        resolve_lre_dir()


def test_metadata_dir_overrides_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RELSPEC_LRE_DIR", str(tmp_path))
    data = custom_dataset(relation="person_father", lre_dir=str(LRE_DIR), pretrained="x", version=1.0)
    assert docs_hash(data["test"]) == PINNED["person_father"][0]


def test_sha256_sums_match_the_local_copy():
    local = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in LRE_DIR.glob("*.json")}
    assert local == lre_data.LRE_SHA256


def test_download_fills_the_cache_and_checks_sums(monkeypatch, tmp_path):
    monkeypatch.delenv("RELSPEC_LRE_DIR")
    monkeypatch.delenv("RELSPEC_OFFLINE")
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    (bad / "city_in_country.json").write_text("{}")
    monkeypatch.setenv("RELSPEC_LRE_URL", bad.as_uri())
    with pytest.raises(DataError, match="sha256"):
        resolve_lre_dir()
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing unverified is kept

    monkeypatch.setenv("RELSPEC_LRE_URL", LRE_DIR.as_uri())  # a mirror with the real files
    folder = resolve_lre_dir()
    assert folder == lre_data.cache_dir() and len(list(folder.glob("*.json"))) == 26
    monkeypatch.setenv("RELSPEC_OFFLINE", "1")  # the filled cache needs no network
    assert docs_hash(build_docs("company_ceo")) == PINNED["company_ceo"][0]


@pytest.mark.parametrize(
    ("generated", "golds", "expected"),
    [
        (" Antarctica.", ["Antarctica"], True),  # gemma: one word token, then "."
        (" Paris,", ["Paris"], True),
        (" Microsoft Corporation", ["Microsoft"], True),  # the gold, then a word boundary
        (" Tim Cook.", ["Tim Cook"], True),
        (" Par", ["Paris"], True),  # still a prefix
        (" Parisian", ["Paris"], False),  # no word boundary after the gold
        (" Paris2", ["Paris"], False),
        (" paris.", ["Paris"], False),  # still case-sensitive
        (" .", ["Paris"], False),  # nothing left after the punctuation
        ("", ["Paris"], False),
        (" London.", ["Paris"], False),
    ],
)
def test_is_correct_lenient(generated, golds, expected):
    from relspec_lmeval.data.metrics import is_correct_lenient

    assert is_correct_lenient(generated, golds) is expected
    if expected is False:
        assert is_correct(generated, golds) is False  # lenient never rejects what the paper accepts


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("build", ["recall", "choice", "ppl"])
def test_a_failed_download_names_the_file_the_task_reads(build, offline, monkeypatch, tmp_path):
    """The Python API path (simple_evaluate's custom_dataset) as the lm_eval pre-flight does: not city_in_country.json."""
    from relspec_lmeval.data.choice import custom_choice_dataset
    from relspec_lmeval.data.relations import custom_dataset, custom_ppl_dataset
    from relspec_lmeval.errors import DataError

    monkeypatch.delenv("RELSPEC_LRE_DIR", raising=False)
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("RELSPEC_LRE_URL", (tmp_path / "empty").as_uri())  # a mirror without the files
    if not offline:
        monkeypatch.delenv("RELSPEC_OFFLINE")
    loader = {"recall": custom_dataset, "choice": custom_choice_dataset, "ppl": custom_ppl_dataset}[build]
    with pytest.raises(DataError, match="product_by_company.json") as info:
        loader(relation="product_company")
    assert "city_in_country" not in str(info.value)
