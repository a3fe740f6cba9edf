"""The neurons of a random control, and whether a file holds a given draw.

A plain draw is ``torch.randperm(shape.total, seeded by seed)[:k]``: it depends on the model
shape, k and the seed only, so every relation whose set has k neurons gets the same neurons
(``relspec random`` writes it once, ``random/k<K>-seed<N>``). A layer-matched draw takes as
many neurons per (layer, site) as the relation's set has there, so it is the relation's own;
a site-matched draw as many per site as the set has at that site over all layers, drawn
from that site's neurons in every layer (sites matched, layers not: on gemma, random
``down_proj`` channels do most of a plain draw's damage, and a set may hold few of them).
"""

from __future__ import annotations

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape, SiteKey

__all__ = ["holds_plain_draw", "layer_matched_draw", "plain_draw", "site_matched_draw"]


def plain_draw(shape: ModelShape, k: int, seed: int) -> dict[SiteKey, torch.Tensor]:
    """``k`` neurons uniform over all of ``shape``'s, per (layer, site)."""
    generator = torch.Generator().manual_seed(int(seed))
    return shape.group(torch.sort(torch.randperm(shape.total, generator=generator)[: int(k)]).values)


def layer_matched_draw(base: NeuronSet, shape: ModelShape, seed: int) -> dict[SiteKey, torch.Tensor]:
    """As many neurons per (layer, site) as ``base`` has there, uniform within each site."""
    generator = torch.Generator().manual_seed(int(seed))
    picked = []
    for (layer, site), index in base.neurons.items():
        draw = torch.randperm(shape.width(site), generator=generator)[: index.numel()]
        picked.append(draw + shape.offset(layer, site))
    return shape.group(torch.sort(torch.cat(picked)).values)


def site_matched_draw(base: NeuronSet, shape: ModelShape, seed: int) -> dict[SiteKey, torch.Tensor]:
    """As many neurons per site as ``base`` has at that site (all layers together), uniform over
    that site's neurons in every layer; the sites in forward order, so a seed gives one draw."""
    generator = torch.Generator().manual_seed(int(seed))
    counts = {site: 0 for site in shape.sites}
    for (_, site), index in base.neurons.items():
        counts[site] += index.numel()
    picked = [torch.empty(0, dtype=torch.int64)]
    for site, count in counts.items():
        if count:
            width = shape.width(site)
            local = torch.randperm(shape.num_layers * width, generator=generator)[:count]  # layer-major: layer * width + channel
            picked.append(torch.tensor([shape.offset(layer, site) for layer in range(shape.num_layers)])[local // width] + local % width)
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
