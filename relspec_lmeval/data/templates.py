"""The paper's 12 relations: LRE file, prompt templates and perplexity sentence.

English templates are the paper's (Liu et al. 2025, Appendix); five of them differ from
the LRE files' own, which is why they live here and not in the data. ``{}`` is the
subject (the object in ``ppl_sentence``). The perplexity sentences are relation-neutral:
they end in an object of the relation but do not state the relation. The paper gives
company_hq's; the other eleven are ours, written in the same spirit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANSWER_AFFIXES", "MULTILINGUAL_TEMPLATES", "PAPER_RELATIONS", "RelationSpec"]


@dataclass(frozen=True)
class RelationSpec:
    """One of the paper's relations: its name, its LRE file, its P^eva/P^det templates, its P^eva-2 template and
    its perplexity sentence (``{}``: the subject in the templates, an object in ``ppl_sentence``)."""

    name: str
    file: str
    templates: tuple[str, ...]  # P^eva / P^det ("main")
    t2_templates: tuple[str, ...]  # P^eva-2 ("t2")
    ppl_sentence: str


_SPECS = (
    RelationSpec(
        "company_ceo",
        "company_ceo.json",
        ("{}'s CEO is", "The CEO of {} is", "The name of the CEO of {} is"),
        ("Who is the CEO of {}? Their name is",),
        "The opening speech at the charity dinner was given by {}.",
    ),
    RelationSpec(
        "company_hq",
        "company_hq.json",
        ("{} is headquartered in the city of", "The headquarters of {} are in the city of"),
        ("Where are the headquarters of {}? It is in the city of",),
        "The company's annual report was mailed directly from its headquarters in {}.",
    ),
    RelationSpec(
        "landmark_continent",
        "landmark_on_continent.json",
        ("{} is on the continent of",),
        ("What continent is {} on? It is on",),
        "The nature documentary followed a flock of birds on their long journey across {}.",
    ),
    RelationSpec(
        "landmark_country",
        "landmark_in_country.json",
        ("{} is in the country of",),
        ("What country is {} in? It is in",),
        "After months of planning, the family finally spent their summer holiday in {}.",
    ),
    RelationSpec(
        "person_father",
        "person_father.json",
        ("{}'s father is named",),
        ("Who is {}'s father? Their father is named",),
        "The old photograph on the museum wall was a portrait of {}.",
    ),
    RelationSpec(
        "person_mother",
        "person_mother.json",
        ("{}'s mother is named", "Name of mother of {} is"),
        ("Who is {}'s mother? Their mother is named",),
        "The letter that arrived on Monday morning was signed by {}.",
    ),
    RelationSpec(
        "person_occupation",
        "person_occupation.json",
        ("{} works as a", "By profession, {} is a"),
        ("{} works professionally as a",),
        "The local newspaper published a long interview with a retired {}.",
    ),
    RelationSpec(
        "person_plays_instrument",
        "person_plays_instrument.json",
        ("{} plays the instrument of", "What instrument does {} play? They play the"),
        ("The instrument that {} plays is",),
        "Every Saturday morning the children met at the community hall for lessons on the {}.",
    ),
    RelationSpec(
        "person_pro_sport",
        "person_plays_pro_sport.json",
        ("{} plays the sport of",),
        ("What sport does {} play? They play",),
        "The weekend newspaper devoted its last three pages to {}.",
    ),
    RelationSpec(
        "person_sport_position",
        "person_plays_position_in_sport.json",
        (
            "{} plays in the position of a",
            "In their sport, {} plays as a",
            "Which position does {} play? They play as a",
        ),
        ("In their sport, {} plays in the position of",),
        "During the training session the coach spent an hour talking to the new {}.",
    ),
    RelationSpec(
        "product_company",
        "product_by_company.json",
        ("{} was created by which company",),
        ("{} is a product of which company",),
        "The press release at the bottom of the page was issued by {}.",
    ),
    RelationSpec(
        "star_constellation",
        "star_constellation.json",
        ("{} is part of the constellation named",),
        ("What is the name of the constellation that {} is part of? It is part of",),
        "On clear winter nights the amateur astronomers pointed their telescopes toward {}.",
    ),
)

PAPER_RELATIONS: dict[str, RelationSpec] = {spec.name: spec for spec in _SPECS}  # name → spec, the paper's 12, in its order

# (prefix, suffix) around the filled template: the paper's "? Answer:" in each language.
# Spanish opens a question with "¿"; French puts a space before "?" and ":"; Chinese
# and Japanese use full-width punctuation with no spaces.
ANSWER_AFFIXES: dict[str, tuple[str, str]] = {
    "en": ("", "? Answer:"),
    "de": ("", "? Antwort:"),
    "es": ("¿", "? Respuesta:"),
    "fr": ("", " ? Réponse :"),
    "zh": ("", "？答案："),
    "ja": ("", "？答え："),
}

# One template per relation and language, the cloze of the first English template in
# natural word order (the object would follow the template). Entity names stay as in LRE.
MULTILINGUAL_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "de": {
        "company_ceo": ("Der CEO von {} ist",),
        "company_hq": ("{} hat seinen Hauptsitz in der Stadt",),
        "landmark_continent": ("Der Kontinent, auf dem {} liegt, ist",),
        "landmark_country": ("Das Land, in dem {} liegt, ist",),
        "person_father": ("Der Vater von {} heißt",),
        "person_mother": ("Die Mutter von {} heißt",),
        "person_occupation": ("{} arbeitet als",),
        "person_plays_instrument": ("Das Instrument, das {} spielt, ist",),
        "person_pro_sport": ("Die Sportart, die {} betreibt, ist",),
        "person_sport_position": ("Die Position, auf der {} spielt, ist",),
        "product_company": ("Von welchem Unternehmen wurde {} entwickelt",),
        "star_constellation": ("{} gehört zum Sternbild",),
    },
    "es": {
        "company_ceo": ("El director ejecutivo de {} es",),
        "company_hq": ("{} tiene su sede en la ciudad de",),
        "landmark_continent": ("El continente en el que se encuentra {} es",),
        "landmark_country": ("El país en el que se encuentra {} es",),
        "person_father": ("El padre de {} se llama",),
        "person_mother": ("La madre de {} se llama",),
        "person_occupation": ("{} trabaja como",),
        "person_plays_instrument": ("El instrumento que toca {} es",),
        "person_pro_sport": ("El deporte que practica {} es",),
        "person_sport_position": ("{} juega en la posición de",),
        "product_company": ("Qué empresa creó {}",),
        "star_constellation": ("{} forma parte de la constelación de",),
    },
    "fr": {
        "company_ceo": ("Le PDG de {} est",),
        "company_hq": ("{} a son siège dans la ville de",),
        "landmark_continent": ("Le continent où se trouve {} est",),
        "landmark_country": ("Le pays où se trouve {} est",),
        "person_father": ("Le père de {} s'appelle",),
        "person_mother": ("La mère de {} s'appelle",),
        "person_occupation": ("{} travaille comme",),
        "person_plays_instrument": ("L'instrument dont joue {} est",),
        "person_pro_sport": ("Le sport que pratique {} est",),
        "person_sport_position": ("{} joue au poste de",),
        "product_company": ("Quelle entreprise a créé {}",),
        "star_constellation": ("{} fait partie de la constellation",),
    },
    "zh": {
        "company_ceo": ("{}的首席执行官是",),
        "company_hq": ("{}的总部所在的城市是",),
        "landmark_continent": ("{}所在的大洲是",),
        "landmark_country": ("{}所在的国家是",),
        "person_father": ("{}的父亲名叫",),
        "person_mother": ("{}的母亲名叫",),
        "person_occupation": ("{}的职业是",),
        "person_plays_instrument": ("{}演奏的乐器是",),
        "person_pro_sport": ("{}从事的运动是",),
        "person_sport_position": ("{}在场上的位置是",),
        "product_company": ("{}是由哪家公司开发的",),
        "star_constellation": ("{}所属的星座是",),
    },
    "ja": {
        "company_ceo": ("{}のCEOは",),
        "company_hq": ("{}の本社がある都市は",),
        "landmark_continent": ("{}がある大陸は",),
        "landmark_country": ("{}がある国は",),
        "person_father": ("{}の父親の名前は",),
        "person_mother": ("{}の母親の名前は",),
        "person_occupation": ("{}の職業は",),
        "person_plays_instrument": ("{}が演奏する楽器は",),
        "person_pro_sport": ("{}がプレーするスポーツは",),
        "person_sport_position": ("{}のポジションは",),
        "product_company": ("{}を開発した会社はどこですか",),
        "star_constellation": ("{}が属する星座は",),
    },
}
