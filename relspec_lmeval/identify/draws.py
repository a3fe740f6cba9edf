"""The neurons of a random control, and whether a file holds a given draw.

A plain draw is ``torch.randperm(shape.total, seeded by seed)[:k]``: it depends on the model
shape, k and the seed only, so every relation whose set has k neurons gets the same neurons
(``relspec random`` writes it once, ``random/k<K>-seed<N>``). A layer-matched draw takes as
many neurons per (layer, site) as the relation's set has there, so it is the relation's own.
"""

from __future__ import annotations

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape, Site

__all__ = ["holds_plain_draw", "layer_matched_draw", "plain_draw"]


def plain_draw(shape: ModelShape, k: int, seed: int) -> dict[Site, torch.Tensor]:
    """``k`` neurons uniform over all of ``shape``'s, per (layer, site)."""
    generator = torch.Generator().manual_seed(int(seed))
    return shape.group(torch.sort(torch.randperm(shape.total, generator=generator)[: int(k)]).values)


def layer_matched_draw(base: NeuronSet, shape: ModelShape, seed: int) -> dict[Site, torch.Tensor]:
    """As many neurons per (layer, site) as ``base`` has there, uniform within each site."""
    generator = torch.Generator().manual_seed(int(seed))
    picked = []
    for (layer, site), index in base.neurons.items():
        draw = torch.randperm(shape.width(site), generator=generator)[: index.numel()]
        picked.append(draw + shape.offset(layer, site))
    return shape.group(torch.sort(torch.cat(picked)).values)


def holds_plain_draw(neuron_set: NeuronSet, shape: ModelShape, k: int, seed: int) -> bool:
    """True when ``neuron_set`` records ``shape`` and holds exactly the plain draw of (k, seed)."""
    try:
        if neuron_set.recorded_shape() != shape:
            return False
    except NeuronSetError:  # no shape recorded: not a file relspec random wrote
        return False
    drawn = plain_draw(shape, k, seed)
    have = neuron_set.neurons
    return have.keys() == drawn.keys() and all(torch.equal(have[key], drawn[key]) for key in drawn)
