"""``IdentifyConfig`` (the flags of ``relspec identify``), its checks, and the batch size."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relspec_lmeval.data.metrics import METRICS
from relspec_lmeval.errors import UsageError
from relspec_lmeval.sets.shape import DEFAULT_SITES, SELECT_MODES, parse_sites

__all__ = ["CORRECT_BY", "IDENTIFY_METHODS", "DEFAULT_CAP", "DEFAULT_K", "DEFAULT_MIN_POSITIVES", "DEFAULT_NEGATIVE_RATIO", "MAX_NEW_TOKENS", "BatchSize", "IdentifyConfig", "memory_budget"]

DEFAULT_K = 3000
DEFAULT_CAP = 500
DEFAULT_NEGATIVE_RATIO = 4
# Below this many correctly answered prompts a relation is skipped: with 1 positive and 4
# negatives, 35,723 of gemma-3-270m's 85,248 neurons tie at AP 1 and the "set" is a tie-break.
DEFAULT_MIN_POSITIVES = 20
MAX_NEW_TOKENS = 2
CORRECT_BY = ("generate", "choice")
# identify.methods' names, here so that parsing the command line needs no torch (a test keeps them
# equal); ap, auroc and mean-diff score the statistics pass's matrix, lape a counting pass of its own
IDENTIFY_METHODS = ("ap", "auroc", "mean-diff", "lape")


@dataclass
class IdentifyConfig:
    """Everything ``relspec identify`` takes; the fields mirror its flags (docs/identification.md)."""

    model: str
    out: str
    relations: str | Sequence[str] | None = "all"
    data: str | None = None
    k: int = DEFAULT_K
    select: str = "top"
    cap: int = DEFAULT_CAP
    negative_ratio: int = DEFAULT_NEGATIVE_RATIO
    min_positives: int | None = None  # None: DEFAULT_MIN_POSITIVES with the filter, 1 without (all prompts are positives)
    seed: int = 0
    batch_size: int | str = 32
    max_batch_size: int = 64
    dtype: str = "auto"
    device: str | None = None
    device_map: str | None = None
    revision: str | None = None
    gguf_file: str | None = None  # with model a folder: the GGUF file in it (converted once, cached)
    filter: bool = True
    cache: bool = True  # keep and reuse the correctness check's answers (identify.answer_cache)
    apply_chat_template: bool = False  # prompts as lm_eval --apply_chat_template builds them
    system_instruction: str | None = None  # lm_eval --system_instruction (with apply_chat_template)
    correct_metric: str = "acc"  # the paper's prefix check, or acc_lenient (data.metrics)
    method: str = "ap"  # the neuron score (identify.methods): ap (the paper's), auroc, mean-diff
    correct_by: str = "generate"  # positives by greedy generation (the paper's) or by relation_choice (choice_check)
    sites: str | Sequence[str] | None = None  # the sites scored (sets.shape.SITES); None: gate_proj, up_proj, down_proj
    template_set: str = "main"
    language: str = "en"
    lre_dir: str | None = None
    memory_budget_gb: float | None = None
    force: bool = False
    command: str | None = None
    progress: bool = True
    print_table: bool = True

    @property
    def min_positives_needed(self) -> int:
        if self.min_positives is not None:
            return self.min_positives
        return DEFAULT_MIN_POSITIVES if self.filter else 1

    @property
    def site_names(self) -> tuple[str, ...]:
        """The sites scored, in forward order (``UsageError`` for an unknown one)."""
        return parse_sites(self.sites)

    def check(self) -> None:
        """``UsageError`` for a flag value that cannot work (checked before anything is loaded)."""
        if self.site_names != DEFAULT_SITES and self.method == "lape":
            raise UsageError("--method lape scores the activation act_fn(gate_proj) (Tang et al.'s neuron); --sites does not apply to it")
        if self.k < 1:
            raise UsageError(f"--k must be at least 1, got {self.k}")
        if self.select not in SELECT_MODES:
            raise UsageError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.cap < 1:
            raise UsageError(f"--cap must be at least 1, got {self.cap}")
        if self.system_instruction is not None and not self.apply_chat_template:
            raise UsageError("--system-instruction goes with --apply-chat-template")
        if self.method not in IDENTIFY_METHODS:
            raise UsageError(f"--method must be one of {', '.join(IDENTIFY_METHODS)}, got {self.method!r}")
        if self.method == "lape" and (self.filter or self.select != "top"):
            raise UsageError("--method lape scores every P^det prompt of each relation (LAPE has no correctness check and no "
                             "bottom half): give --no-filter, and --select top")
        if self.correct_by not in CORRECT_BY:
            raise UsageError(f"--correct-by must be one of {', '.join(CORRECT_BY)}, got {self.correct_by!r}")
        if self.correct_by == "choice" and not self.filter:
            raise UsageError("--correct-by choice is a correctness check; --no-filter keeps every prompt without one")
        if self.correct_by == "choice" and self.correct_metric != "acc":
            raise UsageError("--correct-metric goes with --correct-by generate (the choice check is lm-eval's multiple-choice acc)")
        if self.correct_metric not in METRICS:
            raise UsageError(f"--correct-metric must be one of {', '.join(METRICS)}, got {self.correct_metric!r}")
        if self.min_positives is not None and self.min_positives < 1:
            raise UsageError(f"--min-positives must be at least 1, got {self.min_positives}")
        if self.negative_ratio < 1:
            raise UsageError(f"--negative-ratio must be at least 1, got {self.negative_ratio}")
        if self.batch_size != "auto" and (not str(self.batch_size).isdigit() or int(self.batch_size) < 1):
            raise UsageError(f"--batch-size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise UsageError("--memory-budget must be positive (GiB)")


class BatchSize:
    """A fixed batch size, or ``auto``: start at ``max_batch_size`` and halve on out-of-memory."""

    def __init__(self, value: int | str, maximum: int) -> None:
        self.auto = value == "auto"
        self.value = int(maximum if self.auto else value)

    def run(self, fn: Callable[[int], Any]) -> Any:
        import torch

        while True:
            try:
                return fn(self.value)
            except torch.OutOfMemoryError:
                if not self.auto or self.value == 1:
                    raise
                self.value //= 2
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def memory_budget(cfg: IdentifyConfig, device: Any) -> int:
    import torch

    if cfg.memory_budget_gb is not None:
        return int(cfg.memory_budget_gb * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 4 << 30
