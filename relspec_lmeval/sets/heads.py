"""Attention heads by name: ``LAYER:HEAD`` resolved to the neurons a set stores.

A set stays neuron-level; a head is a block of channels, resolved when the set is made and
recorded in its metadata (``heads``: the names and how they were resolved, ``via``):

* ``via="o_proj"`` (the default): head h's output, ``o_proj``'s input channels h × head_dim to
  (h + 1) × head_dim (site ``o_proj_in``). Zeroing them removes exactly that head's term from
  the attention's output, with grouped-query attention too.
* ``via="qkv"``: head h's ``q_proj`` rows and the ``k_proj``/``v_proj`` rows of its key/value head
  g = h // (num_attention_heads / num_key_value_heads) (transformers' ``repeat_kv`` order). With
  grouped-query attention a key/value head serves several query heads, so its rows cannot be
  switched off for one of them: a name list must hold every query head of such a group (or
  use ``via="o_proj"``), and is refused otherwise.

Heads are ranked from a scores file by the mean score of the channels they resolve to
(``rank_heads``: ``o_proj_in`` scores for ``o_proj``, ``q/k/v_proj`` scores for ``qkv``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.sets.shape import ModelShape, SiteKey

if TYPE_CHECKING:
    from relspec_lmeval.sets.scores import Scores

__all__ = ["HEAD_VIAS", "Head", "check_heads", "head_names", "head_neurons", "head_values", "heads_metadata", "parse_heads", "rank_heads",
           "via_sites"]

HEAD_VIAS = ("o_proj", "qkv")
Head = tuple[int, int]  # (layer, head)
_NAME = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_heads(value: str | Iterable[str], flag: str = "--heads") -> tuple[Head, ...]:
    """``"3:5,7:0"`` (or a list of such names) → ``((3, 5), (7, 0))``, sorted by layer, then head.

    Args:
        value: ``LAYER:HEAD`` names, comma-separated or as a list.
        flag: named in errors.

    Returns:
        The heads, each once, in (layer, head) order.

    Raises ``UsageError`` for a name that is not ``LAYER:HEAD``, a head named twice, or no head.

    Example:
        >>> from relspec_lmeval.sets.heads import parse_heads
        >>> parse_heads("7:0, 3:5")
        ((3, 5), (7, 0))
    """
    names = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [n for n in names if n.strip()]
    if not names:
        raise UsageError(f"{flag} names no head; give LAYER:HEAD names, e.g. {flag} 3:5,7:0")
    heads: list[Head] = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None:
            raise UsageError(f"{flag}: {name.strip()!r} is not LAYER:HEAD (e.g. 3:5: layer 3, head 5; both count from 0)")
        head = (int(match[1]), int(match[2]))
        if head in heads:
            raise UsageError(f"{flag} names head {head[0]}:{head[1]} twice")
        heads.append(head)
    return tuple(sorted(heads))


def head_names(heads: Iterable[Head]) -> list[str]:
    """``[(3, 5)]`` → ``["3:5"]``."""
    return [f"{layer}:{head}" for layer, head in heads]


def _group_size(shape: ModelShape) -> int:
    return int(shape.num_attention_heads) // int(shape.num_key_value_heads)  # type: ignore[arg-type]


def check_heads(shape: ModelShape, heads: Iterable[Head], via: str = "o_proj", flag: str = "--heads") -> None:
    """Refuse heads the model does not have, or a ``qkv`` list that splits a key/value group.

    Args:
        shape: the model's shape (with its attention widths).
        heads: (layer, head) pairs.
        via: ``o_proj`` or ``qkv``.
        flag: named in errors.

    Raises ``UsageError`` with one line naming the head and the model's count.

    Example:
        >>> from relspec_lmeval import ModelShape
        >>> from relspec_lmeval.sets.heads import check_heads
        >>> shape = ModelShape(2, 32, 64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        >>> check_heads(shape, [(1, 4)])
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.UsageError: --heads: head 1:4 does not exist: the model has 4 attention heads per layer (0-3)
    """
    if via not in HEAD_VIAS:
        raise UsageError(f"--via {via!r}: choose {' or '.join(HEAD_VIAS)}")
    if not shape.has_attention_widths:
        raise NeuronSetError(f"{flag}: the model shape records no attention heads ({shape.model_type})")
    heads = list(heads)
    count = int(shape.num_attention_heads)  # type: ignore[arg-type]
    for layer, head in heads:
        if not 0 <= layer < shape.num_layers:
            raise UsageError(f"{flag}: head {layer}:{head} is in layer {layer}, but the model has {shape.num_layers} "
                             f"decoder layers (0-{shape.num_layers - 1})")
        if not 0 <= head < count:
            raise UsageError(f"{flag}: head {layer}:{head} does not exist: the model has {count} attention heads per layer (0-{count - 1})")
    group = _group_size(shape)
    if via != "qkv" or group == 1:
        return
    named = set(heads)
    for layer, head in heads:
        first = head // group * group
        members = [(layer, h) for h in range(first, first + group)]
        missing = [m for m in members if m not in named]
        if missing:
            raise UsageError(
                f"{flag} with --via qkv: head {layer}:{head} shares key/value head {head // group} with "
                f"{', '.join(head_names(m for m in members if m != (layer, head)))} (grouped-query attention: "
                f"{count} query heads, {shape.num_key_value_heads} key/value heads), so its k/v rows cannot be "
                f"switched off for it alone; name {','.join(head_names(members))}, or use --via o_proj (its output alone)"
            )


def via_sites(via: str) -> tuple[str, ...]:
    """The sites a head resolves to: ``("o_proj_in",)`` or ``("q_proj", "k_proj", "v_proj")``."""
    return ("o_proj_in",) if via == "o_proj" else ("q_proj", "k_proj", "v_proj")


def head_neurons(shape: ModelShape, heads: Iterable[Head], via: str = "o_proj") -> dict[SiteKey, list[int]]:
    """The channels of the heads, per (layer, site), after ``check_heads``.

    Args:
        shape: the model's shape (with its attention widths).
        heads: (layer, head) pairs.
        via: ``o_proj`` (``o_proj_in`` channels) or ``qkv`` (q rows, and the k/v rows of the heads' key/value heads).

    Returns:
        ``{(layer, site): sorted channel indices}``.

    Example:
        >>> from relspec_lmeval import ModelShape
        >>> from relspec_lmeval.sets.heads import head_neurons
        >>> shape = ModelShape(2, 8, 16, num_attention_heads=4, num_key_value_heads=2, head_dim=2)
        >>> head_neurons(shape, [(1, 2)])
        {(1, 'o_proj_in'): [4, 5]}
        >>> head_neurons(shape, [(0, 0), (0, 1)], via="qkv")
        {(0, 'q_proj'): [0, 1, 2, 3], (0, 'k_proj'): [0, 1], (0, 'v_proj'): [0, 1]}
    """
    heads = list(heads)
    check_heads(shape, heads, via)
    size, group = int(shape.head_dim), _group_size(shape)  # type: ignore[arg-type]
    out: dict[SiteKey, set[int]] = {}
    for layer, head in heads:
        for site, block in _blocks(head, via, group).items():
            out.setdefault((layer, site), set()).update(range(block * size, (block + 1) * size))
    return {key: sorted(out[key]) for key in sorted(out, key=lambda k: (k[0], via_sites(via).index(k[1])))}


def _blocks(head: int, via: str, group: int) -> dict[str, int]:
    """Which ``head_dim`` block of each site a head is: its own, and its key/value head's for k/v."""
    return {"o_proj_in": head} if via == "o_proj" else {"q_proj": head, "k_proj": head // group, "v_proj": head // group}


def heads_metadata(heads: Iterable[Head], via: str, **extra: Any) -> dict[str, Any]:
    """The set's ``heads`` metadata entry: ``{"via": …, "names": ["3:5", …], **extra}``."""
    return {"via": via, "names": head_names(heads), **extra}


def rank_heads(scores: Scores, n: int, via: str = "o_proj") -> list[tuple[Head, float]]:
    """The ``n`` heads whose channels score highest on average (ties: the lower layer, then head).

    Args:
        scores: a scores file over the via's sites (``o_proj_in``, or ``q_proj``, ``k_proj`` and ``v_proj``).
        n: how many heads.
        via: as for ``head_neurons``; ``qkv`` needs a model without grouped-query attention
            (a key/value head's rows belong to several query heads).

    Returns:
        ``[((layer, head), mean score), …]``, best first.

    Example:
        >>> import torch
        >>> from relspec_lmeval import ModelShape, Scores
        >>> from relspec_lmeval.sets.heads import rank_heads
        >>> shape = ModelShape(1, 4, 8, num_attention_heads=2, num_key_value_heads=2, head_dim=2, sites=("o_proj_in",))
        >>> rank_heads(Scores(shape, torch.tensor([0.0, 0.25, 1.0, 0.5]), torch.zeros(4)), 1)
        [((0, 1), 0.75)]
    """
    import torch

    layout, where = scores.layout, scores.path or "the scores"
    need = via_sites(via)
    if via == "qkv" and _group_size(layout) > 1:
        raise UsageError(
            f"--via qkv cannot rank single heads of a model with grouped-query attention ({layout.num_attention_heads} query heads, "
            f"{layout.num_key_value_heads} key/value heads: a key/value head's rows serve several); use --via o_proj"
        )
    missing = [s for s in need if s not in layout.sites]
    if missing:
        raise NeuronSetError(
            f"{where} has no {', '.join(missing)} scores (its sites: {', '.join(layout.sites)}), which heads via {via} are ranked by; "
            f"score them with relspec identify --sites {','.join(need)}" + (", or use --via qkv" if via == "o_proj" else ", or use --via o_proj")
        )
    count = int(layout.num_attention_heads)  # type: ignore[arg-type]
    total = layout.num_layers * count
    if not 1 <= n <= total:
        raise UsageError(f"--heads {n}: choose 1 to {total} (the model's {layout.num_layers} layers × {count} heads)")
    per_site, size, group = layout.split(scores.ap), int(layout.head_dim), _group_size(layout)  # type: ignore[arg-type]
    means = []
    for layer in range(layout.num_layers):  # every head exists: head_neurons' checks are not needed here
        for head in range(count):
            parts = [per_site[(layer, site)][block * size:(block + 1) * size] for site, block in _blocks(head, via, group).items()]
            means.append(torch.cat(parts).to(torch.float64).mean())
    values = torch.stack(means)
    if bool(torch.isnan(values).any()):
        raise NeuronSetError(f"{where}: scores contain NaN")
    order = torch.argsort(values, descending=True, stable=True)[:n].tolist()  # stable: ties to the lower (layer, head)
    return [((i // count, i % count), float(values[i])) for i in order]


def head_values(scores: Scores, neurons: Mapping[SiteKey, list[int]]) -> tuple[dict, dict]:
    """A scores file's per-neuron scores and means at ``neurons`` (for a set's ``scores`` and ``means``).

    Args:
        scores: the scores file (its sites must hold ``neurons``' sites).
        neurons: ``head_neurons``' result.

    Returns:
        ``(scores, means)``, each ``{(layer, site): float32 values aligned with the indices}``.

    Example:
        >>> import torch
        >>> from relspec_lmeval import ModelShape, Scores
        >>> from relspec_lmeval.sets.heads import head_values
        >>> shape = ModelShape(1, 4, 8, num_attention_heads=2, num_key_value_heads=2, head_dim=2, sites=("o_proj_in",))
        >>> ap, means = head_values(Scores(shape, torch.arange(4.0), torch.ones(4)), {(0, "o_proj_in"): [2, 3]})
        >>> ap[(0, "o_proj_in")].tolist(), means[(0, "o_proj_in")].tolist()
        ([2.0, 3.0], [1.0, 1.0])
    """
    import torch

    ap, means = scores.layout.split(scores.ap), scores.layout.split(scores.means)
    picked = {key: torch.tensor(idx) for key, idx in neurons.items()}
    return {key: ap[key][idx] for key, idx in picked.items()}, {key: means[key][idx] for key, idx in picked.items()}
