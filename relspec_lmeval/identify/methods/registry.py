"""The one table of ``--method``s: each score's function and what it needs from the run.

This module imports no torch: ``IdentifyConfig.check`` and ``relspec identify --help`` read it
before any model is loaded; a ``Method`` imports its function on first use.

To add a method: write ``f(values [prompts, neurons], labels [prompts]) -> float64 [neurons]``
(higher = more specific to the positives) in a module of this package, then add one
``Method`` here. ``--method``'s choices, the checks of ``--no-filter``, ``--select`` and
``--sites``, the chunking under ``--memory-budget`` and the recorded parameters follow from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from relspec_lmeval.errors import UsageError

__all__ = ["DEFAULT_METHOD", "LAPE_BAR_RATIO", "LAPE_FILTER_RATE", "LAPE_SITE", "LAPE_TOP_RATE", "METHODS", "Method", "method"]

# Tang et al.'s identify.py defaults, recorded in the files as parameters.lape (identify.methods.lape)
LAPE_TOP_RATE, LAPE_FILTER_RATE, LAPE_BAR_RATIO = 0.01, 0.95, 0.95
LAPE_SITE = "gate_proj"  # the site whose channel index is LAPE's neuron


@dataclass(frozen=True)
class Method:
    """One ``--method``: its score function and what it needs.

    Args:
        name: the ``--method`` value.
        kind: ``"two-class"`` (``f(matrix, labels)``, positives against negatives) or
            ``"multi-class"`` (every relation at once: ``identify.methods.lape``).
        needs: the pass it scores: ``"prompt-means"`` (the statistics pass's [prompts, neurons]
            matrix) or ``"active-counts"`` (LAPE's counting pass).
        function: ``"module:name"`` of the score function, imported on first use.
        bytes_per_element: working memory per (prompt, neuron) value: the chunk size under a
            memory budget (``identify.methods.chunking``); 0 for a multi-class method (not chunked).
        selects: the ``--select`` modes that mean something for it (``both`` = a bottom half).
        citation: where the score comes from.
        filter: whether the correctness filter applies (if not, ``--no-filter`` is required).
        sites: whether ``--sites`` applies (if not, the method scores ``scored`` only).
        scored: what the method scores when ``sites`` is False, for the error message.
        parameters: constants recorded in the files as ``parameters.<name>``.

    Example:
        >>> from relspec_lmeval.identify.methods.registry import METHODS
        >>> METHODS["auroc"].kind, METHODS["auroc"].selects
        ('two-class', ('top', 'both'))
        >>> METHODS["lape"].filter, METHODS["lape"].needs
        (False, 'active-counts')
    """

    name: str
    kind: str
    needs: str
    function: str
    bytes_per_element: int
    selects: tuple[str, ...]
    citation: str
    filter: bool = True
    sites: bool = True
    scored: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def score(self) -> Callable[..., Any]:
        """The score function itself (imports its module, and torch)."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


_HERE = "relspec_lmeval.identify.methods"
DEFAULT_METHOD = "ap"
METHODS: dict[str, Method] = {
    # working memory of AP: the sorted keys, labels, counts, precision and cumulative maxima
    "ap": Method("ap", "two-class", "prompt-means", f"{_HERE}.ap:average_precision", 64, ("top", "both"),
                 "Liu et al. 2025, arXiv 2502.17355 (average precision)"),
    # AUROC: keys, sorted keys, labels, counts, tie-group starts (cummax values and indices), contributions
    "auroc": Method("auroc", "two-class", "prompt-means", f"{_HERE}.auroc:auroc", 96, ("top", "both"),
                    "Suau et al., Whispering Experts, ICML 2024 (AurA)"),
    # mean-diff: a float64 copy and its running sum
    "mean-diff": Method("mean-diff", "two-class", "prompt-means", f"{_HERE}.mean_diff:mean_difference", 24, ("top", "both"),
                        "Antverg & Belinkov, On the Pitfalls of Analyzing Individual Neurons in Language Models, ICLR 2022"),
    "lape": Method("lape", "multi-class", "active-counts", f"{_HERE}.lape:lape_scores", 0, ("top",),
                   "Tang et al., Language-Specific Neurons, ACL 2024 (LAPE)", filter=False, sites=False,
                   scored="the activation act_fn(gate_proj) (Tang et al.'s neuron)",
                   parameters=MappingProxyType({"top_rate": LAPE_TOP_RATE, "filter_rate": LAPE_FILTER_RATE,
                                                "activation_bar_ratio": LAPE_BAR_RATIO, "site": LAPE_SITE,
                                                "prompts": "every P^det prompt of each relation of the pool"})),
}


def method(name: str) -> Method:
    """The registered method ``name`` (``UsageError`` naming the known ones otherwise).

    Example:
        >>> from relspec_lmeval.identify.methods.registry import method
        >>> method("mean-diff").bytes_per_element
        24
        >>> method("gini")
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.UsageError: unknown method 'gini'; choose one of ap, auroc, mean-diff, lape
    """
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
