"""Sets shared the way models are: ``hf://`` names of neuron-set files on the Hugging Face Hub.

``hf://[datasets/|models/]OWNER/REPO[@REVISION]/PATH`` is the file PATH of a Hub repository
(``.safetensors`` added when PATH lacks it, as for shipped names). Without a prefix the
repository is a *dataset*: sets are data a model is evaluated with, not a model, and
``relspec card`` writes a dataset card for them (docs/sharing.md). REVISION is a branch, tag,
commit or ``refs/pr/N``; without it, ``main``.

The file comes through ``huggingface_hub`` into its cache (``HF_HUB_CACHE``, ``HF_HOME``, read
when the set is loaded, so a test or a script may set them late) and is then read and checked
as any local file (``sets.resolve``). With ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` or
``RELSPEC_OFFLINE`` set nothing is downloaded: only the cache is read. Every failure is one
``NeuronSetError`` line naming the ``hf://`` name and what is missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.util.env import env_flag
from relspec_lmeval.util.suggest import did_you_mean

__all__ = ["HUB_PREFIX", "HubFile", "fetch", "hub_cache_dir", "is_hub_name", "parse_hub_name"]

HUB_PREFIX = "hf://"
_SHAPE = "hf://[datasets/|models/]OWNER/REPO[@REVISION]/PATH"
# the Hub's rule for owner and repository names (huggingface_hub.utils.validate_repo_id)
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RELSPEC_OFFLINE")
_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository, as an ``hf://`` name gives it.

    Example:
        >>> from relspec_lmeval.sets.hub import parse_hub_name
        >>> f = parse_hub_name("hf://me/sets@v1/gemma/person_father")
        >>> f.repo_type, f.repo_id, f.revision, f.path
        ('dataset', 'me/sets', 'v1', 'gemma/person_father.safetensors')
        >>> f.url
        'hf://datasets/me/sets@v1/gemma/person_father.safetensors'
    """

    repo_type: str  # "dataset" or "model"
    repo_id: str  # OWNER/REPO
    path: str  # inside the repository, POSIX
    revision: str | None = None  # None: the default branch

    @property
    def url(self) -> str:
        """The name in full (prefix, revision, suffix), as errors and records give it."""
        at = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_type}s/{self.repo_id}{at}/{self.path}"

    @property
    def what(self) -> str:
        """``dataset me/sets`` (``at revision v1``): the repository in words."""
        return f"{self.repo_type} {self.repo_id}" + (f" at revision {self.revision}" if self.revision else "")


def is_hub_name(name: object) -> bool:
    """True for a value meant as an ``hf://`` name (any case of the prefix): it is never a path.

    Example:
        >>> from relspec_lmeval.sets.hub import is_hub_name
        >>> is_hub_name("hf://me/sets/a.safetensors"), is_hub_name("sets/a.safetensors")
        (True, False)
    """
    return isinstance(name, str) and name.strip()[: len(HUB_PREFIX)].lower() == HUB_PREFIX


def parse_hub_name(name: str) -> HubFile:
    """An ``hf://`` name → the file it names; ``NeuronSetError`` (one line) for a malformed one.

    Args:
        name: ``hf://[datasets/|models/]OWNER/REPO[@REVISION]/PATH`` (no prefix: a dataset).

    Returns:
        The ``HubFile``; PATH gets ``.safetensors`` when it lacks it.

    Example:
        >>> from relspec_lmeval.sets.hub import parse_hub_name
        >>> parse_hub_name("hf://models/me/llama-sets@refs/pr/3/a.safetensors").revision
        'refs/pr/3'
        >>> parse_hub_name("hf://me/sets")
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.NeuronSetError: malformed hf:// name 'hf://me/sets': no file path after OWNER/REPO; expected hf://[datasets/|models/]OWNER/REPO[@REVISION]/PATH
    """
    text = name.strip()
    parts = text[len(HUB_PREFIX):].split("/")
    repo_type = "dataset"
    if parts[0] in ("datasets", "models"):
        repo_type = parts.pop(0)[:-1]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        _malformed(name, "no OWNER/REPO")
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)  # refs%2Fpr%2F3, as HfFileSystem writes it
        if revision == "refs" and len(parts) > 3 and parts[2] == "pr" and parts[3].isdigit():
            revision, parts = f"refs/pr/{parts[3]}", parts[:2] + parts[4:]
        if not revision or revision.strip() != revision:
            _malformed(name, "an empty or spaced revision after '@'")
    for label, value in (("owner", owner), ("repository", repo)):
        if not _NAME.fullmatch(value) or "--" in value or ".." in value:
            _malformed(name, f"{label} {value!r} is not a Hub name (letters, digits, '-', '_', '.'; at most 96)")
    rest = parts[2:]
    if not rest or rest == [""]:
        _malformed(name, "no file path after OWNER/REPO")
    if any(p in ("", ".", "..") or "\\" in p for p in rest):
        _malformed(name, "an empty, '.' or '..' part in the file path")
    path = "/".join(rest)
    return HubFile(repo_type, f"{owner}/{repo}", path if path.endswith(_SUFFIX) else path + _SUFFIX, revision)


def _malformed(name: str, why: str) -> None:
    raise NeuronSetError(f"malformed hf:// name {name!r}: {why}; expected {_SHAPE}")


def hub_cache_dir() -> str | None:
    """The cache folder the environment names now (``HF_HUB_CACHE``, then ``HF_HOME``/hub); None:
    huggingface_hub's own default. Read at each call, since huggingface_hub reads them at import.

    Example:
        >>> import os
        >>> from relspec_lmeval.sets.hub import hub_cache_dir
        >>> hub_cache_dir() == (os.environ.get("HF_HUB_CACHE") or hub_cache_dir())
        True
    """
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return os.path.expandvars(os.path.expanduser(os.environ[variable]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None


def _offline_variable() -> str | None:
    """The variable that forbids downloads, or None (huggingface_hub's own flag, read at its import, counts too)."""
    for variable in _OFFLINE_VARIABLES:
        if env_flag(variable):
            return variable
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE" if constants.is_offline_mode() else None


def fetch(ref: HubFile) -> Path:
    """The file, downloaded into the Hugging Face cache unless it is there (only looked up there offline).

    Args:
        ref: what ``parse_hub_name`` gave.

    Returns:
        The cached file's path (``<cache>/datasets--OWNER--REPO/snapshots/<commit>/PATH``).

    Raises ``NeuronSetError``, one line naming ``ref.url``: no such repository, revision or
    file, the Hub out of reach, or offline with the file not in the cache.

    Example:
        >>> from relspec_lmeval.sets.hub import fetch, parse_hub_name
        >>> fetch(parse_hub_name("hf://me/no-such-sets/a"))  # doctest: +SKIP
        PosixPath('/home/me/.cache/huggingface/hub/datasets--me--no-such-sets/snapshots/…/a.safetensors')
    """
    try:
        from huggingface_hub import errors, hf_hub_download
    except ImportError:  # it comes with transformers; a trimmed environment may lack it
        raise NeuronSetError(f"{ref.url}: reading hf:// sets needs huggingface_hub (pip install huggingface_hub)") from None
    offline, cache = _offline_variable(), hub_cache_dir()
    try:
        return Path(hf_hub_download(ref.repo_id, ref.path, repo_type=ref.repo_type, revision=ref.revision, cache_dir=cache,
                                    local_files_only=offline is not None))
    except errors.GatedRepoError:  # a RepositoryNotFoundError: caught first
        why = f"{ref.repo_type} {ref.repo_id} is gated: accept its terms on the Hub and log in (`hf auth login`)"
    except errors.RepositoryNotFoundError:
        other = "models/" if ref.repo_type == "dataset" else "datasets/"
        why = (f"no {ref.repo_type} repository {ref.repo_id} on the Hugging Face Hub (or it is private: log in with "
               f"`hf auth login`; a {other[:-2]} repository is hf://{other}{ref.repo_id}/…)")
    except errors.RevisionNotFoundError:
        why = f"{ref.repo_type} {ref.repo_id} has no revision {ref.revision!r}"
    except errors.RemoteEntryNotFoundError:
        why = f"{ref.what} has no file {ref.path}"
    except errors.LocalEntryNotFoundError:
        missing, hint = _not_cached(ref, cache)
        if offline is not None:
            why = f"{missing}, and {offline} is set, so it is not downloaded (unset it, or fetch it once online).{hint}"
        else:
            why = f"the Hugging Face Hub could not be reached and {missing} (check the connection).{hint}"
    except errors.HfHubHTTPError as exc:
        why = f"the Hub refused the download ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    except (OSError, ValueError) as exc:  # a cache folder that cannot be written, a name the Hub's own check refuses
        why = f"could not be fetched ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else '-'})"
    raise NeuronSetError(f"neuron-set {ref.url}: {why}")


def _not_cached(ref: HubFile, cache: str | None) -> tuple[str, str]:
    """Why the cache cannot answer, as precisely as its folders tell (no such repository, revision or
    file), and a hint: the cached files most like the one asked for."""
    if cache is None:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    repo = Path(cache) / f"{ref.repo_type}s--{ref.repo_id.replace('/', '--')}"
    if not repo.is_dir():
        return f"{ref.what} is not in the Hugging Face cache {cache}", ""
    revision = ref.revision or "main"
    commit = revision if (repo / "snapshots" / revision).is_dir() else _read_ref(repo / "refs" / revision)
    snapshot = repo / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        return f"revision {revision} of {ref.repo_type} {ref.repo_id} is not in the Hugging Face cache {cache}", ""
    cached = sorted(str(PurePosixPath(*p.relative_to(snapshot).parts)) for p in snapshot.rglob(f"*{_SUFFIX}"))
    hint = did_you_mean(ref.path, cached, n=3, cutoff=0.6) or (f" Cached: {', '.join(cached[:6])}." if cached else "")
    return f"the cached {ref.what} has no file {ref.path}", hint


def _read_ref(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
