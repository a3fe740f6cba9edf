"""Hooks named by the task YAMLs (``!function utils.<name>``); lm-eval loads this file by
path, so it only re-exports from the installed package."""

from relspec_lmeval.data.choice import custom_choice_dataset
from relspec_lmeval.data.logprob import custom_logprob_dataset, process_logprob_results
from relspec_lmeval.data.metrics import process_results
from relspec_lmeval.data.relations import custom_dataset, custom_ppl_dataset
from relspec_lmeval.data.tasks import quiet_metadata_notes

quiet_metadata_notes()  # lm-eval's "--metadata" note, once per task of ours, is noise (docs/tasks.md)

__all__ = ["custom_choice_dataset", "custom_dataset", "custom_logprob_dataset", "custom_ppl_dataset", "process_logprob_results",
           "process_results"]
