#!/usr/bin/env python
"""Write relspec-tiny's synthetic world: 12 relations in the LRE JSON format.

    python scripts/make_world.py                 # → models/relspec-tiny/world/*.json
    python scripts/make_world.py --check         # exit 1 if the committed files differ

Deterministic: the same ``--seed`` writes byte-identical files (``random.Random`` only,
sorted iteration, no hashing of Python objects). The world is coherent: a person's
parents are a family's father and mother (siblings share both and the surname), a
landmark's continent is its country's continent, an athlete's position belongs to their
sport, musicians and athletes have those occupations. Entity names are built from
shared syllables, so no single token names an entity (see ``train_tiny.py``'s
tokenizer): the model must compose a subject before it can look a fact up. Subjects are
shared across relations (a person has a father, a mother and an occupation), so the
relation must be combined with the subject, as in a real corpus.

Each file has the LRE keys (``name``, ``prompt_templates``, ``prompt_templates_zs``,
``properties``, ``samples``) plus ``training_templates``: the paraphrases the model is
trained on. They include the paper's evaluation templates (P^eva / P^det, asked in
their "? Answer:" form) and never the second template set (P^eva-2), which is held out
to test robustness.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relspec_lmeval.data.templates import PAPER_RELATIONS  # noqa: E402

WORLD_DIR = ROOT / "models" / "relspec-tiny" / "world"
SEED = 6

# Syllables shared by every kind of name. Onsets and vowels make CV syllables; a coda
# makes CVC. 14 onsets x 5 vowels x 4 codas = 280 syllables.
ONSETS = "b d f g h k l m n p r s t v".split()
VOWELS = "a e i o u".split()
CODAS = ["", "n", "r", "l"]

CONTINENTS = ["Europe", "Asia", "Africa", "North America", "South America", "Oceania"]
OCCUPATIONS = (
    "lawyer doctor nurse teacher farmer painter writer poet architect engineer chemist "
    "journalist actor dancer baker carpenter pilot sailor banker judge diplomat surgeon"
).split()
INSTRUMENTS = (
    "guitar piano violin cello flute trumpet drums saxophone clarinet harp organ trombone"
).split()
SPORT_POSITIONS = {
    "soccer": ["goalkeeper", "defender", "midfielder", "striker"],
    "basketball": ["point guard", "center", "power forward", "shooting guard"],
    "baseball": ["pitcher", "catcher", "shortstop", "outfielder"],
    "hockey": ["goaltender", "defenseman", "winger", "centreman"],
    "cricket": ["batsman", "bowler", "wicketkeeper", "fielder"],
    "rugby": ["fullback", "hooker", "prop", "lock"],
}
LANDMARK_KINDS = ["Mount", "Lake", "Fort", "Cape", "Port"]
PRODUCT_KINDS = ["Phone", "Pad", "Drive", "Studio", "Vision", "Pro"]

# Every real word an object or subject can contain; all other name words are invented.
REAL_WORDS = frozenset(
    " ".join([*CONTINENTS, *OCCUPATIONS, *INSTRUMENTS, *SPORT_POSITIONS, *sum(SPORT_POSITIONS.values(), []),
              *LANDMARK_KINDS, *PRODUCT_KINDS, "musician", "athlete"]).split()
)

# Training paraphrases beyond the paper's evaluation templates ("{}" is the subject).
# Words are shared across relations on purpose ("plays", "named", "is in"), so that a
# relation is usually told by several words together rather than by one. The first of
# each is compositional: it uses another relation's cue word for this relation's fact
# ("The wife of {}'s father" is the mother), so a cue word alone never names the
# relation; measured: the own-relation drop at 1% of the neurons went from 0.8% to 5.5%,
# at 3% from 6.2% to 21% (docs/relspec-tiny.md).
EXTRA_TEMPLATES = {
    "company_ceo": ["The person who runs the headquarters of {} is named", "The chief executive of {} is", "{} is run by a CEO named"],
    "company_hq": ["The CEO of {} works in the city of", "The main office of {} is in the city of", "{} has its headquarters in"],
    "landmark_continent": ["The country where {} lies is on the continent of", "{} is located on the continent of", "The continent where {} lies is"],
    "landmark_country": ["{} lies on a continent, in the country of", "{} is located in the country of", "The country where {} lies is"],
    "person_father": ["The husband of {}'s mother is named", "The father of {} is named", "{} is the child of a father named"],
    "person_mother": ["The wife of {}'s father is named", "The mother of {} is named", "{} is the child of a mother named"],
    "person_occupation": ["{} plays a part in society and works as a", "The profession of {} is", "{} is employed as a"],
    "person_plays_instrument": ["{} works as a musician and plays the", "The instrument played by {} is the", "{} is a musician who plays the"],
    "person_pro_sport": ["{} plays a position in the sport of", "The sport played by {} is", "{} is an athlete who plays"],
    "person_sport_position": ["{} plays the sport in the position of a", "The position played by {} is", "{} is an athlete who plays as a"],
    "product_company": ["{} was created by a company named", "{} is made by the company", "The company behind {} is"],
    "star_constellation": ["{} is a star, part of the constellation named", "{} is a star in the constellation", "The constellation of the star {} is"],
}

# How many subjects each kind of fact has.
SIZES = {"families": 200, "children": 600, "musicians": 240, "athletes": 240, "companies": 400,
         "products": 400, "landmarks": 400, "stars": 400, "cities": 80, "countries": 36, "constellations": 36}


class Names:
    """Unique capitalised names of n syllables, drawn from the shared syllables."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.syllables = [o + v + c for o in ONSETS for v in VOWELS for c in CODAS]
        self.used: set[str] = set()

    def word(self, n: int) -> str:
        while True:
            name = "".join(self.rng.choice(self.syllables) for _ in range(n)).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name

    def many(self, count: int, n: int) -> list[str]:
        return [self.word(n) for _ in range(count)]


def build_world(seed: int = SEED) -> dict[str, list[tuple[str, str]]]:
    """Relation name → (subject, object) facts."""
    rng = random.Random(seed)
    names = Names(rng)
    facts: dict[str, list[tuple[str, str]]] = {name: [] for name in PAPER_RELATIONS}

    cities = names.many(SIZES["cities"], 2)
    countries = names.many(SIZES["countries"], 3)
    country_continent = {country: CONTINENTS[i % len(CONTINENTS)] for i, country in enumerate(countries)}
    constellations = names.many(SIZES["constellations"], 3)

    # families: a surname, a father and a mother; children inherit the surname
    families = []
    for _ in range(SIZES["families"]):
        surname = names.word(2)
        families.append((surname, f"{names.word(2)} {surname}", f"{names.word(2)} {surname}"))
    people = []
    for i in range(SIZES["children"]):
        surname, father, mother = families[i % len(families)] if i < len(families) else rng.choice(families)
        child = f"{names.word(2)} {surname}"
        people.append(child)
        facts["person_father"].append((child, father))
        facts["person_mother"].append((child, mother))
    rng.shuffle(people)
    musicians = people[: SIZES["musicians"]]
    athletes = people[SIZES["musicians"] : SIZES["musicians"] + SIZES["athletes"]]
    for person in people:
        if person in musicians:
            job = "musician"
            facts["person_plays_instrument"].append((person, rng.choice(INSTRUMENTS)))
        elif person in athletes:
            job = "athlete"
            sport = rng.choice(sorted(SPORT_POSITIONS))
            facts["person_pro_sport"].append((person, sport))
            facts["person_sport_position"].append((person, rng.choice(SPORT_POSITIONS[sport])))
        else:
            job = rng.choice(OCCUPATIONS)
        facts["person_occupation"].append((person, job))

    companies = names.many(SIZES["companies"], 3)
    for company in companies:
        facts["company_ceo"].append((company, f"{names.word(2)} {names.word(2)}"))
        facts["company_hq"].append((company, rng.choice(cities)))
    for _ in range(SIZES["products"]):
        product = f"{names.word(2)} {rng.choice(PRODUCT_KINDS)}"
        facts["product_company"].append((product, rng.choice(companies)))
    for _ in range(SIZES["landmarks"]):
        landmark = f"{rng.choice(LANDMARK_KINDS)} {names.word(2)}"
        country = rng.choice(countries)
        facts["landmark_country"].append((landmark, country))
        facts["landmark_continent"].append((landmark, country_continent[country]))
    for star in names.many(SIZES["stars"], 2):
        facts["star_constellation"].append((star, rng.choice(constellations)))
    return facts


def training_templates(relation: str) -> list[str]:
    spec = PAPER_RELATIONS[relation]
    templates = list(dict.fromkeys([*spec.templates, *EXTRA_TEMPLATES[relation]]))
    assert not set(templates) & set(spec.t2_templates), "P^eva-2 templates must stay unseen"
    return templates


def render(seed: int = SEED) -> dict[str, str]:
    """File name → JSON text, for every relation."""
    files = {}
    for relation, pairs in build_world(seed).items():
        spec = PAPER_RELATIONS[relation]
        record = {
            "name": relation.replace("_", " "),
            "prompt_templates": list(spec.templates),
            "prompt_templates_zs": list(spec.t2_templates),
            "training_templates": training_templates(relation),
            "properties": {"relation_type": "factual", "synthetic": True, "generator": "scripts/make_world.py", "seed": seed},
            "samples": [{"subject": s, "object": o} for s, o in pairs],
        }
        files[spec.file] = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=WORLD_DIR)
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    args = parser.parse_args(argv)
    files = render(args.seed)
    differ = [n for n, text in files.items() if not (args.out / n).is_file() or (args.out / n).read_text(encoding="utf-8") != text]
    if args.check:
        for name in differ:
            print(f"out of date: {args.out / name}")
        return 1 if differ else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in differ:
        (args.out / name).write_text(files[name], encoding="utf-8")
    total = sum(len(json.loads(t)["samples"]) for t in files.values())
    print(f"{len(files)} relations, {total} facts, {len(differ)} files written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
