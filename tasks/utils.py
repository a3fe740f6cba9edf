"""Hooks named by the task YAMLs (``!function utils.<name>``); lm-eval loads this file by
path, so it only re-exports from the installed package."""

from relspec_lmeval.data.choice import custom_choice_dataset
from relspec_lmeval.data.metrics import process_results
from relspec_lmeval.data.relations import custom_dataset, custom_ppl_dataset

__all__ = ["custom_choice_dataset", "custom_dataset", "custom_ppl_dataset", "process_results"]
