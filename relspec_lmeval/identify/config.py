"""``IdentifyConfig`` (the flags of ``relspec identify``, each stated once), its checks, and the batch size."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relspec_lmeval.data.metrics import METRICS
from relspec_lmeval.errors import UsageError
from relspec_lmeval.identify.methods.registry import DEFAULT_METHOD, METHODS, Method
from relspec_lmeval.sets.shape import DEFAULT_SITES, SELECT_MODES, parse_sites
from relspec_lmeval.util.options import option

__all__ = [
    "CORRECT_BY", "DEFAULT_CAP", "DEFAULT_K", "DEFAULT_MIN_POSITIVES", "DEFAULT_NEGATIVE_RATIO", "EXIT_SKIPPED", "IDENTIFY_METHODS",
    "MAX_NEW_TOKENS", "BatchSize", "IdentifyConfig", "memory_budget",
]

DEFAULT_K = 3000
DEFAULT_CAP = 500
DEFAULT_NEGATIVE_RATIO = 4
# Below this many correctly answered prompts a relation is skipped: with 1 positive and 4
# negatives, 35,723 of gemma-3-270m's 85,248 neurons tie at AP 1 and the "set" is a tie-break.
DEFAULT_MIN_POSITIVES = 20
EXIT_SKIPPED = 3  # relspec identify's exit status when some relations were written, others skipped
MAX_NEW_TOKENS = 2
CORRECT_BY = ("generate", "choice")
IDENTIFY_METHODS = tuple(METHODS)  # the registry's names (identify.methods.registry: no torch)


@dataclass
class IdentifyConfig:
    """Everything ``relspec identify`` takes: each field with a help text is its flag (``util.options``).

    Args:
        model: a hub id, a local folder or a shipped model name (``relspec-tiny``).
        out: the sets folder to write (``SetsFolder``).
        k, select, method, sites, …: as the flags of the same names (``relspec identify --help``,
            docs/identification.md); ``filter``, ``cache`` and ``progress`` are ``--no-filter``,
            ``--no-cache`` and ``--quiet`` inverted.
        command: the command line recorded in the files (the CLI sets it).
        print_table: print the summary table at the end.

    Example:
        >>> from relspec_lmeval import IdentifyConfig
        >>> cfg = IdentifyConfig(model="relspec-tiny", out="sets", k=50, select="both")
        >>> cfg.check()  # flag errors, before anything is loaded
        >>> cfg.min_positives_needed, cfg.site_names
        (20, ('gate_proj', 'up_proj', 'down_proj'))
        >>> IdentifyConfig(model="relspec-tiny", out="sets", method="lape").check()
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.UsageError: --method lape has no correctness check and no bottom half: give --no-filter and --select top
    """

    model: str = option(help="hub id, local folder or shipped model name (relspec-tiny)")
    out: str = option(help="output folder, e.g. neuron_sets/<model>/")
    relations: str | Sequence[str] | None = option("all", help="'all' or comma-separated relation names (default: %(default)s)")
    data: str | None = option(None, help="folder of LRE JSON files, or a task group such as relation_recall_det (default: the LRE "
                              "folder: RELSPEC_LRE_DIR or the download cache)")
    k: int = option(DEFAULT_K, help="neurons per set (default %(default)s)")
    select: str = option("top", choices=SELECT_MODES, help="top k, or top k/2 + bottom k/2")
    cap: int = option(DEFAULT_CAP, help="at most this many positives (default %(default)s)")
    min_positives: int | None = option(  # None: DEFAULT_MIN_POSITIVES with the filter, 1 without (all prompts are positives)
        None, help=f"skip relations with fewer correctly answered prompts (default {DEFAULT_MIN_POSITIVES}; 1 with --no-filter); "
        f"exit status {EXIT_SKIPPED} when any was skipped")
    negative_ratio: int = option(DEFAULT_NEGATIVE_RATIO, help="negatives per positive (default %(default)s)")
    seed: int = option(0, help="seed of the positive subsample and the negatives (default %(default)s)")
    batch_size: int | str = option(32, help="prompts per batch, or 'auto' (default %(default)s)")
    max_batch_size: int = option(64, help="where --batch-size auto starts (default %(default)s)")
    dtype: str = option("auto", help="auto, float32, bfloat16, float16, float64")
    device: str | None = option(None, help="cuda, cuda:1, cpu … (default: cuda if available)")
    device_map: str | None = option(None, help="e.g. auto: shard a big model over the visible GPUs")
    revision: str | None = option(None, help="model revision on the hub")
    gguf_file: str | None = option(None, metavar="NAME", help="with --model a folder: the GGUF file in it to load")  # converted once, cached
    filter: bool = option(True, flag="--no-filter", invert=True,
                          help="keep every P^det prompt as a positive (no correctness filter); recorded as filter=none")
    cache: bool = option(True, flag="--no-cache", invert=True,  # identify.answer_cache
                         help="neither reuse nor keep the correctness check's answers (kept per model, check and prompt in the user cache)")
    correct_metric: str = option(  # data.metrics
        "acc", choices=sorted(METRICS),
        help="which answers count as correct for the positives: acc (the paper's prefix check, default) or acc_lenient "
        "(also without trailing punctuation, or a gold then a word boundary; docs/tasks.md)")
    method: str = option(  # identify.methods.registry
        DEFAULT_METHOD, choices=IDENTIFY_METHODS,
        help="the neuron score: ap (average precision, the paper's; default), auroc (AurA's area under the ROC curve) or "
        "mean-diff (mean over positives minus mean over negatives, the probeless ranking) or lape (Tang et al.'s activation-"
        "probability entropy over all relations; with --no-filter); docs/identification.md")
    sites: str | Sequence[str] | None = option(  # sets.shape.SITES; None: gate_proj, up_proj, down_proj
        None, metavar="SITE,…",
        help="the sites whose output channels are scored: any of gate_proj, up_proj, down_proj (the default, the paper's) "
        "and the attention's q_proj, k_proj, v_proj, o_proj (the paper's App. G), comma-separated")
    correct_by: str = option(  # identify.choice_check for choice
        "generate", choices=CORRECT_BY,
        help="how positives are chosen: generate (greedy 2-token answer checked by --correct-metric, the paper's; default) "
        "or choice (the gold wins relation_choice's log-likelihood comparison against up to 9 other objects)")
    apply_chat_template: bool = option(
        False, help="build every prompt as `lm_eval --apply_chat_template` does (instruct and chat models); recorded in the sets")
    system_instruction: str | None = option(None, help="as lm_eval's --system_instruction (with --apply-chat-template)")
    template_set: str = option("main", help="with a data folder: main or t2 (default %(default)s)")
    language: str = option("en", help="with a data folder: prompt language (default %(default)s)")
    lre_dir: str | None = option(None, help="where the LRE files are, for task groups")
    memory_budget_gb: float | None = option(
        None, flag="--memory-budget", metavar="GIB",
        help="device memory for the activation matrix and the scores (default: half the free GPU memory, 4 on CPU); "
        "a larger matrix stays in host memory and the scores run over neuron chunks")
    force: bool = option(
        False, help="replace what --out holds (sets of another model or with other parameters; their scores, random controls, "
        "re-cuts, dampened sets and summary.json are removed when this run writes its first set); without it a run with the "
        "same parameters adds its relations to the folder and any other is refused")
    progress: bool = option(True, flag="--quiet", invert=True, help="no progress bars")
    command: str | None = None
    print_table: bool = True

    @property
    def min_positives_needed(self) -> int:
        """``min_positives``, or its default: DEFAULT_MIN_POSITIVES with the filter, 1 without (every prompt is a positive)."""
        if self.min_positives is not None:
            return self.min_positives
        return DEFAULT_MIN_POSITIVES if self.filter else 1

    @property
    def site_names(self) -> tuple[str, ...]:
        """The sites scored, in forward order (``UsageError`` for an unknown one)."""
        return parse_sites(self.sites)

    def check(self) -> None:
        """``UsageError`` for a flag value that cannot work (checked before anything is loaded)."""
        spec = METHODS.get(self.method)
        if self.site_names != DEFAULT_SITES and spec is not None and not spec.sites:
            raise UsageError(f"--method {self.method} scores {spec.scored}; --sites does not apply to it")
        if self.k < 1:
            raise UsageError(f"--k must be at least 1, got {self.k}")
        if self.select not in SELECT_MODES:
            raise UsageError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.cap < 1:
            raise UsageError(f"--cap must be at least 1, got {self.cap}")
        if self.system_instruction is not None and not self.apply_chat_template:
            raise UsageError("--system-instruction goes with --apply-chat-template")
        if spec is None:
            raise UsageError(f"--method must be one of {', '.join(IDENTIFY_METHODS)}, got {self.method!r}")
        limits = _limits(spec, self)
        if not all(given for _, _, given in limits):
            raise UsageError(f"--method {self.method} has {' and '.join(w for w, _, _ in limits)}: give {' and '.join(f for _, f, _ in limits)}")
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


def _limits(spec: Method, cfg: IdentifyConfig) -> list[tuple[str, str, bool]]:
    """What ``spec`` does not do, the flag that says so, and whether ``cfg`` gives that flag."""
    limits = []
    if not spec.filter:
        limits.append(("no correctness check", "--no-filter", not cfg.filter))
    if "both" not in spec.selects:
        limits.append(("no bottom half", f"--select {spec.selects[0]}", cfg.select in spec.selects))
    return limits


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
