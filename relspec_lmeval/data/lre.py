"""Where the LRE relation files come from.

Order: an explicit directory (argument, ``--metadata '{"lre_dir": ...}'``), then
``RELSPEC_LRE_DIR``, then a cache filled once from the pinned upstream commit. The
cache is filled under a file lock because several ranks of ``accelerate launch``
start at once; each file is checked against the sums below before it is kept, so
a file present in the cache is a verified file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from relspec_lmeval.errors import DataError
from relspec_lmeval.util.cache import cache_root
from relspec_lmeval.util.env import env_flag
from relspec_lmeval.util.files import atomic_write

__all__ = ["HOW_TO_POINT", "LRE_COMMIT", "LRE_REPO", "LRE_SHA256", "LRE_URL", "cache_dir", "fetch_pinned_lre", "resolve_lre_dir"]

LRE_REPO = "evandez/relations"
LRE_COMMIT = "1b9ec3cf2b8368e42bde7e80fcef384312a6ec07"
LRE_URL = f"https://raw.githubusercontent.com/{LRE_REPO}/{LRE_COMMIT}/data/factual/"

# sha256 of every file in data/factual/ at LRE_COMMIT (MIT licence, Hernandez et al. 2024).
LRE_SHA256 = {
    "city_in_country.json": "5fd8f9e99e6d8567d05cfb4e7c9324ed03b07ba1ebf827614b7b58a811bc11a5",
    "company_ceo.json": "c75f9b31c872b85601b7163b2c7a8f11c439f2852a876d5a126401d57ea3a81b",
    "company_hq.json": "22c86cf64b908db86c73b17add31e59fd6022ac74e500840fcad35bd706a8e4e",
    "country_capital_city.json": "9945d2da1fa1145c1d7e59ac61a25ebee74299c00bd53fc9308167f9e1d44fc0",
    "country_currency.json": "4a1a49afbdc4792fc330196475f456a22bc49dfe0ec9eb966439e4f36081d99b",
    "country_language.json": "0996525735107934f0d2e467e6fac7d2c785c42e8300ccb41ae6e9b5dfde2b76",
    "country_largest_city.json": "ffb5e18dc1f26a101786905db84f087370bb191067ff8d9f1294156b1d9bdccc",
    "food_from_country.json": "2e308f61974de104eaa29a432bca1232802f9c6e1ea145151f384d96412d4a21",
    "landmark_in_country.json": "58d545ec481a0d22be5f8ce1f50410093349daf002f3e7c1f8ad26c2c1fde581",
    "landmark_on_continent.json": "64ec992304e0cc91ac4ada2e7d32d13401e171ea9e09fa65525273842b82160b",
    "person_band_lead_singer.json": "ad4943c8bc14d649577dafce7acb8d81b2a56ea1f39ca806cdba20880dcd6742",
    "person_father.json": "796e03665de86d7441b2374fb443c1ddebc77749c01c4bab92c571fda4c8753d",
    "person_mother.json": "bcf99ade0df1d9d8a03d40149aaf054cc7ecbd7f20ec6afe071d9361d2875d02",
    "person_native_language.json": "ad6f699fbad04cecf45a424713249803921598187c6302dd2a8e20702f4c1928",
    "person_occupation.json": "57e89f94c17ff0fd55d5e3ad3aa24ee5e118a3ff7447fff88457113a0e4ce7a7",
    "person_plays_instrument.json": "e7c92e6a4d35b6198775a6f6062c948ca95aaedf2cc84a009b07989e4ccac08a",
    "person_plays_position_in_sport.json": "adfc0605d1f31809329171e9ef348ca354b372934d8197e6e20693b0cb9e1c6f",
    "person_plays_pro_sport.json": "adfea3a51c0315818a63ec0a421fba45818f3854212f9999910c80eac934165c",
    "person_university.json": "739fc4a11861d30a71852243fc6e06e8d34143b8e0ca3dd65cb9bb3bc5a0190c",
    "pokemon_evolutions.json": "254e3982935571cfd4311ea774da0d2a4b2a577c6c86e0f74508a9651efc6494",
    "presidents_birth_year.json": "4b6e7cf48aff48db010a0aa78ab674f0cebeb2d950203d0723a1e7227cb3ad23",
    "presidents_election_year.json": "16a81b72fd253b82d7571d63e0e5ed3906eb62fde565b31ed2cd81967bfc46ee",
    "product_by_company.json": "373dac4b5322dc29ca800b8bf38bac78a0d9297e56ee877100733f68e9c3da40",
    "star_constellation.json": "328aa42c7960f8ce5a75a1fbe766141e0b22473c6a35d8b2e8165a4050188bde",
    "superhero_archnemesis.json": "bd335092e081782d7e49a4a3472c0aac54b14999a3b78e68f6d94fe7ed7dcb38",
    "superhero_person.json": "3b3a3a03d4b5c0b91343d4e7d562a434a17ae85ef286ed151bafee65c19a7804",
}

HOW_TO_POINT = (
    "Point relspec-lmeval at a folder of LRE JSON files (a checkout of "
    f"https://github.com/{LRE_REPO}/tree/{LRE_COMMIT}/data/factual): "
    "`export RELSPEC_LRE_DIR=/path/to/relations/data/factual`, or pass "
    "`--metadata '{\"lre_dir\": \"/path/...\"}'` to lm_eval."
)


def cache_dir() -> Path:
    """Folder the pinned upstream files are downloaded to (``RELSPEC_CACHE_DIR`` overrides the root)."""
    return cache_root() / "lre" / LRE_COMMIT


def _checked_dir(path: str | Path, origin: str) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir() or not any(folder.glob("*.json")):
        raise DataError(f"{origin} = {str(path)!r} holds no LRE JSON files. {HOW_TO_POINT}")
    return folder


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _missing(folder: Path, needed: Sequence[str] = ()) -> list[str]:
    """The pinned files not in ``folder``, those in ``needed`` first: a failed download names the file a task reads."""
    return sorted((name for name in LRE_SHA256 if not (folder / name).is_file()), key=lambda name: name not in needed)


def _download(folder: Path, names: list[str]) -> None:
    base = os.environ.get("RELSPEC_LRE_URL") or LRE_URL  # a mirror, or file:// in tests
    base = base if base.endswith("/") else base + "/"
    for name in names:
        url = base + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https/file URL)
                data = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"Could not download {url}: {err}. {HOW_TO_POINT}") from err
        if _sha256(data) != LRE_SHA256[name]:
            raise DataError(
                f"{url} does not match the pinned sha256 of {LRE_REPO}@{LRE_COMMIT}; "
                f"refusing to use it. {HOW_TO_POINT}"
            )
        atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))  # readers never see half a file


def fetch_pinned_lre(needed: Sequence[str] = ()) -> Path:
    """The cache folder with all pinned files, downloading what is missing (once, under a lock; ``needed`` first)."""
    folder = cache_dir()
    if not _missing(folder):
        return folder
    if env_flag("RELSPEC_OFFLINE"):
        absent = [name for name in needed if not (folder / name).is_file()]
        what = f"the LRE relation file {', '.join(absent)} is" if absent else "LRE relation files are"
        raise DataError(f"{what} not in the cache {folder} and RELSPEC_OFFLINE is set, so they are not downloaded. {HOW_TO_POINT}")
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{LRE_COMMIT}.lock"), timeout=900):
        missing = _missing(folder, needed)  # another process may have finished meanwhile
        if missing:
            _download(folder, missing)
    return folder


def resolve_lre_dir(data_dir: str | Path | None = None, needed: Sequence[str] = ()) -> Path:
    """The folder to read LRE files from: ``data_dir``, else $RELSPEC_LRE_DIR, else the pinned cache
    (``needed``: the file names a task reads, downloaded first)."""
    if data_dir:
        return _checked_dir(data_dir, "lre_dir")
    env = os.environ.get("RELSPEC_LRE_DIR")
    if env:
        return _checked_dir(env, "RELSPEC_LRE_DIR")
    return fetch_pinned_lre(needed)
