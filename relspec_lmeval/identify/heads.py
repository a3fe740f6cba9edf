"""``relspec heads`` and ``relspec select --heads``: sets that name whole attention heads.

``head_set`` writes the set of given heads of a model (no run: the model's config gives the
widths); ``select_heads`` the top N heads of each scores file, ranked by the mean score of the
channels they resolve to (``sets.heads.rank_heads``). Either way the file holds neurons, as
every set does, and records the heads in its metadata (``heads``: ``via`` and ``names``; a
selection also ``ranked_by`` and each head's ``scores``). docs/ablation.md, "Attention heads".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.errors import OutputError
from relspec_lmeval.identify.controls import default_folder
from relspec_lmeval.modelio.load import load_config, meta_skeleton
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.folder import SetsFolder, locked
from relspec_lmeval.sets.heads import head_neurons, head_values, heads_metadata, parse_heads, rank_heads, via_sites
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import load_scores
from relspec_lmeval.sets.shape import ModelShape, model_metadata
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.resources import refuse_shipped

__all__ = ["head_set", "select_heads"]


def head_set(
    model: str,
    heads: str | Sequence[str],
    out: str | os.PathLike,
    *,
    via: str = "o_proj",
    revision: str | None = None,
    command: str | None = None,
    force: bool = False,
) -> NeuronSet:
    """Write the set of the named attention heads of ``model`` to ``out`` (no weights are loaded).

    Args:
        model: hub id, local folder or shipped model name (its config gives the heads and widths).
        heads: ``LAYER:HEAD`` names (``"3:5,7:0"`` or a list).
        out: the file to write (``.safetensors``).
        via: ``o_proj`` (each head's ``o_proj`` input channels) or ``qkv`` (its q rows and its
            key/value head's k and v rows; ``sets.heads``).
        revision, command: recorded in the file; force: replace an existing ``out``.

    Returns:
        The set written (its ``path`` is ``out``).

    Raises ``UsageError`` for a head the model lacks or a ``qkv`` list that splits a key/value
    group, ``UnsupportedModelError`` for a model without those projections, ``OutputError`` for
    an ``out`` that exists (without ``force``) or is shipped; before anything is written.

    Example:
        >>> from relspec_lmeval.identify.heads import head_set
        >>> made = head_set("relspec-tiny", "2:1,5:3", "two-heads.safetensors")
        >>> made.count_per_site()["o_proj_in"], made.metadata["heads"]
        (64, {'via': 'o_proj', 'names': ['2:1', '5:3']})
    """
    refuse_shipped(out, "--out")
    target = Path(out)
    if target.is_dir() or (target.exists() and not force):
        raise OutputError(f"--out {out} exists{'' if target.is_dir() else '; pass --force to replace it'}")
    names = parse_heads(heads)
    config = load_config(model, revision)
    sites = via_sites(via)
    shape = ModelShape.from_config(config, sites)
    neurons = head_neurons(shape, names, via)
    skeleton = meta_skeleton(config)
    if skeleton is not None:  # the projections exist as separate modules (a fused qkv_proj has no q rows of its own)
        site_modules(skeleton, neurons)
    metadata: dict[str, Any] = {
        "model": model_metadata(config, model, revision, sites=sites),
        "method": "heads",
        "heads": heads_metadata(names, via),
        "k": sum(len(idx) for idx in neurons.values()),
        "package_version": __version__,
        "command": command,
    }
    made = NeuronSet(neurons, metadata)
    made.save(target)
    return made


def select_heads(
    scores_paths: Sequence[str | os.PathLike],
    n: int,
    *,
    via: str = "o_proj",
    out: str | os.PathLike | None = None,
    command: str | None = None,
) -> list[Path]:
    """The top ``n`` heads of each scores file as a set: ``<out>/<relation>.safetensors``.

    Args:
        scores_paths: scores files over the via's sites (``relspec identify --sites o_proj_in``,
            or ``q_proj,k_proj,v_proj`` for ``via="qkv"``).
        n: heads per set, ranked by the mean score of their channels (ties: lower layer, then head).
        via: as for ``head_set``.
        out: the folder (default: ``heads<N>[-qkv]/`` beside the scores folder, or in the working
            directory for shipped scores); command: recorded in the files.

    Returns:
        The set files written; each keeps the scores file's provenance, the channels' scores
        and means (``mode=mean`` works), and ``heads`` with ``ranked_by`` and each head's mean score.

    Example:
        >>> import torch
        >>> from relspec_lmeval import ModelShape, NeuronSet, Scores
        >>> from relspec_lmeval.identify.heads import select_heads
        >>> from relspec_lmeval.sets.scores import save_scores
        >>> shape = ModelShape(2, 8, 16, num_attention_heads=2, num_key_value_heads=2, head_dim=4, sites=("o_proj_in",))
        >>> path = save_scores(Scores(shape, torch.arange(16.0), torch.zeros(16), {"relation": "demo"}), "s/scores/demo.safetensors")
        >>> [made] = select_heads([path], 1)
        >>> made.parent.name, made.name, NeuronSet.load(made).metadata["heads"]["names"]
        ('heads1', 'demo.safetensors', ['1:1'])
    """
    cuts, roots = [], set()
    for path in scores_paths:  # every input is checked before anything is written
        path = Path(path)
        scores = load_scores(path)
        ranked = rank_heads(scores, n, via)
        heads = sorted(head for head, _ in ranked)
        neurons = head_neurons(scores.layout, heads, via)
        ap, means = head_values(scores, neurons)
        method = scores.metadata.get("method", "ap")
        meta = {key: value for key, value in scores.metadata.items() if key != "kind"}
        meta["parameters"] = {**(meta.get("parameters") or {}), "heads": n, "via": via}
        meta.update(
            k=sum(len(idx) for idx in neurons.values()),
            heads=heads_metadata(heads, via, ranked_by=f"the mean {method} score of the head's {'/'.join(via_sites(via))} channels",
                                 scores={f"{layer}:{head}": round(value, 6) for (layer, head), value in ranked}),
            package_version=__version__,
            command=command,
            scores_file={"path": str(path), "sha256": file_sha256(path)},
        )
        relation = scores.relation or path.stem
        folder = default_folder(SetsFolder.of_scores_file(path).root, out)[0]
        roots.add(folder.root)
        folder = folder if out is not None else folder.heads(n, via)
        cuts.append((NeuronSet(neurons, meta, scores=ap, means=means), folder.set_path(relation)))
    with locked(roots), StagedFiles() as staged:
        return [neuron_set.save(target, staged) for neuron_set, target in cuts]
