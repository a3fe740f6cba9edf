"""relspec-lmeval: relation-specific neurons for lm-evaluation-harness.

The public Python API. Kept import-light: each name is imported from its module on first
use (``relspec_lmeval.NeuronSet`` imports torch; ``RelspecHFLM`` imports lm-eval), so the
import hook and ``relspec --help`` stay fast. Package map: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> module that owns it
_EXPORTS = {
    "NeuronSet": "relspec_lmeval.sets.neuron_set",
    "ModelShape": "relspec_lmeval.sets.shape",
    "Scores": "relspec_lmeval.sets.scores",
    "load_scores": "relspec_lmeval.sets.scores",
    "SetsFolder": "relspec_lmeval.sets.folder",
    "load_sets": "relspec_lmeval.sets.resolve",
    "AblationSpec": "relspec_lmeval.lm.ablation",
    "apply_ablation": "relspec_lmeval.lm.ablation",
    "ablated": "relspec_lmeval.lm.ablation",
    "RelspecHFLM": "relspec_lmeval.lm.hflm",
    "IdentifyConfig": "relspec_lmeval.identify.config",
    "identify_sets": "relspec_lmeval.identify.pipeline",  # not "identify": that is the identify/ package
    "random_sets": "relspec_lmeval.identify.controls",
    "select_sets": "relspec_lmeval.identify.controls",
    "ReproduceConfig": "relspec_lmeval.experiments.config",
    "reproduce": "relspec_lmeval.experiments.runner",
    "RelspecError": "relspec_lmeval.errors",
    "NeuronSetError": "relspec_lmeval.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relspec_lmeval' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
