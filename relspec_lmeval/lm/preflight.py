"""What can be wrong with a ``relspec-hf`` run, found before anything slow.

``check_model_args`` is ``RelspecHFLM``'s own check of its arguments (the ablation spec, the
sets, their shape against the model's config), run before it loads the weights.
``check_cli_args`` runs it earlier still: the import hook calls it from lm-eval's
``HarnessCLI.execute`` for ``--model relspec-hf``, before lm-eval indexes its ~15k task YAMLs,
and it also checks that the relation files our tasks in ``--tasks`` read are there (or can be
downloaded), naming the file a task needs. Each failure is a ``RelspecError``: the hook turns it
into one ``lm_eval: error: relspec-hf: …`` line and exit status 2.

torch is imported only to load a neuron-set file; lm-eval's parser only for a ``--config`` file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relspec_lmeval.data.lre import HOW_TO_POINT, resolve_lre_dir
from relspec_lmeval.data.relations import available_relations, task_data_dir
from relspec_lmeval.data.tasks import GROUPS, GroupSpec
from relspec_lmeval.data.templates import PAPER_RELATIONS
from relspec_lmeval.errors import DataError, NeuronSetError, UsageError

if TYPE_CHECKING:
    from relspec_lmeval.lm.ablation import AblationSpec
    from relspec_lmeval.sets.neuron_set import NeuronSet
    from relspec_lmeval.sets.shape import ModelShape

__all__ = ["NOT_GIVEN", "CheckedArgs", "check_cli_args", "check_model_args", "check_sets", "check_task_data", "flag"]

MODEL_NAME = "relspec-hf"
NOT_GIVEN: Any = object()  # neuron_set left out (the unmodified model), as opposed to neuron_set=none
# the model_args check_model_args reads; every other one is HFLM's
_MODEL_ARGS = ("pretrained", "neuron_set", "mode", "factor", "ablate_with", "allow_empty", "positions", "revision", "gguf_file", "dtype")


def flag(value: Any, name: str) -> bool:
    """lm-eval passes true/false as bool from the CLI and the Python parser alike; accept their text too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise NeuronSetError(f"{name} must be true or false, got {value!r}")


@dataclass
class CheckedArgs:
    """``relspec-hf``'s arguments once checked: how to ablate, whether empty sets are fine, the sets,
    and the model config they were checked against (None when there was no set or no model name)."""

    spec: AblationSpec
    allow_empty: bool
    sets: list[NeuronSet]
    config: Any = None


def check_sets(sets: Sequence[NeuronSet], shape: ModelShape, spec: AblationSpec, allow_empty: bool) -> None:
    """Each set fits the model's ``shape`` and has what ``spec``'s mode needs (means, factors)."""
    from relspec_lmeval.lm.ablation import check_mode_fits

    for s in sets:
        s.validate(shape, allow_empty=allow_empty)
        check_mode_fits(s, spec)


def check_model_args(
    pretrained: Any = None,
    neuron_set: Any = NOT_GIVEN,
    mode: str = "zero",
    factor: Any = None,
    ablate_with: str = "auto",
    allow_empty: Any = False,
    positions: str = "all",
    revision: str | None = None,
    gguf_file: str | None = None,
    dtype: Any = "auto",
) -> CheckedArgs:
    """``relspec-hf``'s arguments, checked without the weights: ``NeuronSetError`` for a bad mode,
    factor, method, positions or flag, a missing or malformed set; ``ModelError`` or
    ``NeuronSetError`` when a set does not fit the config of a ``pretrained`` given by name, or a
    factor is not finite in the ``dtype`` the model will load in."""
    from relspec_lmeval.lm.ablation import AblationSpec
    from relspec_lmeval.lm.overflow import check_factor_fits, planned_dtype
    from relspec_lmeval.sets.resolve import load_sets

    spec = AblationSpec(mode=mode, factor=factor, method=ablate_with, positions=positions)
    allow = flag(allow_empty, "allow_empty")
    sets = [] if neuron_set is NOT_GIVEN else load_sets(neuron_set)
    config = None
    if sets and isinstance(pretrained, str):
        from relspec_lmeval.modelio.load import load_config
        from relspec_lmeval.sets.shape import ModelShape

        config = load_config(pretrained, revision, gguf_file)
        check_sets(sets, ModelShape.from_config(config), spec, allow)
    if sets:
        check_factor_fits(spec, sets, planned_dtype(dtype, config))
    return CheckedArgs(spec, allow, sets, config)


# ---------------------------------------------------------------- the lm_eval command line


def _as_dict(value: Any) -> dict:
    """A ``model_args``/``metadata`` value as lm-eval reads it: a dict, or ``k=v,…`` text (a --config file)."""
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(value)


def _cli_values(namespace: Any) -> dict:
    """The run's settings with lm-eval's precedence: the command line over a ``--config`` YAML."""
    values = dict(vars(namespace))
    if values.get("config"):
        from lm_eval.config.evaluate_config import EvaluatorConfig

        given = {k: v for k, v in values.items() if v or v == 0}  # what EvaluatorConfig.from_cli keeps
        values = {**EvaluatorConfig.load_yaml_config(values["config"]), **given}
    return values


_CLI_OWNED = ("device", "batch_size", "max_batch_size")


def check_cli_args(namespace: Any) -> None:
    """The pre-flight of ``lm_eval run --model relspec-hf …`` (argparse ``namespace``): the model
    arguments (``check_model_args``) and our tasks' data (``check_task_data``); other models pass."""
    values = _cli_values(namespace)
    if values.get("model") != MODEL_NAME:
        return
    model_args = _as_dict(values.get("model_args"))
    # lm-eval passes its own --batch_size/--max_batch_size/--device (a --device left out is cuda:0 in
    # EvaluatorConfig) beside model_args, so one of these inside model_args would reach the model twice
    # and end in "got multiple values for keyword argument": stock lm-eval's crash, said here in one line.
    for key in _CLI_OWNED:
        if key in model_args:
            raise UsageError(f"{key}= belongs on lm_eval's command line (--{key} {model_args[key]}), not in --model_args")
    check_model_args(**{k: v for k, v in model_args.items() if k in _MODEL_ARGS})
    tasks = values.get("tasks") or []
    tasks = tasks.split(",") if isinstance(tasks, str) else [t for task in tasks for t in str(task).split(",")]
    metadata = {**model_args, **_as_dict(values.get("metadata"))}  # lm-eval gives tasks model_args | metadata
    check_task_data(tasks, metadata.get("lre_dir"))


# ---------------------------------------------------------------- our tasks' relation files


def _our_tasks(patterns: Iterable[str]) -> dict[str, tuple[GroupSpec, str]]:
    """Task name → (group, relation) for each of our tasks that ``patterns`` (task or group names,
    lm-eval's globs) select; other tasks, files and folders are lm-eval's to find."""
    selected: dict[str, tuple[GroupSpec, str]] = {}
    for pattern in patterns:
        for group in GROUPS:
            whole = bool(fnmatch.filter([group.name], pattern))
            for relation in group.relations:
                name = f"{group.name}_{relation}"
                if whole or fnmatch.filter([name], pattern):
                    selected.setdefault(name, (group, relation))
    return selected


def _file_of(relation: str) -> str:
    """The LRE file a relation's task reads (``product_company`` → ``product_by_company.json``)."""
    spec = PAPER_RELATIONS.get(relation)
    return spec.file if spec is not None else f"{relation}.json"


def check_task_data(tasks: Iterable[str], lre_dir: str | Path | None = None) -> None:
    """Each selected task of ours finds its relation file where the run will look: its shipped
    folder, ``lre_dir`` (``--metadata``), ``RELSPEC_LRE_DIR``, or the pinned cache (downloaded
    now, the needed files first, unless ``RELSPEC_OFFLINE``). ``DataError`` naming the task and file."""
    selected = _our_tasks(tasks)
    needed = sorted({_file_of(relation) for group, relation in selected.values() if not group.data_dir})
    for task, (group, relation) in selected.items():
        file = _file_of(relation)
        try:
            folder = task_data_dir(group.data_dir, lre_dir) if group.data_dir else resolve_lre_dir(lre_dir, needed=[file, *needed])
            found = relation in available_relations(folder)
        except DataError as exc:
            raise DataError(f"task {task} needs the relation file {file}: {exc}") from None
        if not found:
            raise DataError(f"task {task} needs the relation file {file}, which is not in {folder}. {HOW_TO_POINT}")
