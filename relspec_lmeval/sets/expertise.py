"""selfcond's ``expertise.csv`` (apple/ml-selfcond; Kojima et al.'s lang_neuron) as a neuron set.

The file has a row per unit: ``layer`` (the response name, a module name plus ``:0``),
``unit`` (the output channel), ``ap`` (its Average Precision for the concept), and more
(``on_p50``, ``off_mean``, ``uuid``, ``concept``, …). Rows of ``…layers.L.mlp.gate_proj``
(before the activation), ``up_proj`` and ``down_proj``, and of ``…layers.L.self_attn.q_proj``,
``k_proj``, ``v_proj``, ``o_proj``, are our sites as they stand; a fused ``…mlp.gate_up_proj``
(Phi-3) unit i is ``gate_proj`` i below the intermediate size I and ``up_proj`` i − I from it
(``modelio.sites``); other modules (norms, GPT-2 names) are skipped and counted. The APs become
the set's scores.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from pathlib import Path

from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.sets.convert import Converted, ForeignSet, Key, check_neuron, source_file
from relspec_lmeval.sets.shape import SITES, ModelShape
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.suggest import known_list

__all__ = ["read_selfcond"]

_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:mlp|self_attn)\.(gate_up_proj|gate_proj|up_proj|down_proj|q_proj|k_proj|v_proj|o_proj)(?::0)?$")

_REQUIRED = ("layer", "unit", "ap")


def _site_order(row: tuple[float, Key]) -> tuple[int, int, int]:
    layer, site, index = row[1]
    return layer, SITES.index(site), index


def _choose(rows: list[tuple[float, Key]], k: int | None, threshold: float | None, select: str) -> list[tuple[float, Key]]:
    """Rows above ``threshold`` (AP > T), then the top k by AP (``both``: top ⌈k/2⌉ and bottom ⌊k/2⌋); ties by (layer, site, index)."""
    pool = rows if threshold is None else [row for row in rows if row[0] > threshold]
    if k is None:
        return pool
    if k > len(pool):
        where = f" with AP > {threshold}" if threshold is not None else " naming one of our sites"
        raise NeuronSetError(f"--k {k} is more than the {len(pool)} rows{where}")
    descending = sorted(pool, key=lambda row: (-row[0], *_site_order(row)))
    if select == "top":
        return descending[:k]
    top = descending[: k - k // 2]
    rest = sorted(descending[k - k // 2 :], key=lambda row: (row[0], *_site_order(row)))
    return top + rest[: k // 2]


def _read_rows(path: Path, shape: ModelShape) -> tuple[list[tuple[float, Key]], Counter, set[str]]:
    """(ap, key) of every row naming one of our sites; the other rows' modules (counted); the concept column's values."""
    rows: list[tuple[float, Key]] = []
    seen: dict[Key, int] = {}
    skipped: Counter = Counter()  # module name -> rows
    concepts: set[str] = set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [str(c).strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            missing = [c for c in _REQUIRED if c not in columns]
            if missing:
                raise NeuronSetError(
                    f"{path}: a selfcond expertise.csv needs the columns {', '.join(_REQUIRED)}; "
                    f"missing {', '.join(missing)} (found: {', '.join(columns) or 'no header'})"
                )
            for row in reader:
                line = reader.line_num
                module = (row.get("layer") or "").strip()
                match = _MODULE.search(module)
                if not match:
                    skipped[module or "(empty)"] += 1
                    continue
                key = _row_key(path, line, match, row, shape)
                ap = _row_ap(path, line, row)
                unit = row["unit"].strip()  # as written: a fused row's up_proj index is not its unit
                check_neuron(path, shape, f"line {line} ({module}, unit {unit})", *key)
                if key in seen:
                    raise NeuronSetError(f"{path}: line {line} repeats {module} unit {unit} of line {seen[key]}")
                seen[key] = line
                rows.append((ap, key))
                if row.get("concept"):
                    concepts.add(row["concept"].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NeuronSetError(f"{path} is not a readable CSV file ({exc})") from None
    return rows, skipped, concepts


def _row_key(path: Path, line: int, match: re.Match, row: dict, shape: ModelShape) -> Key:
    text = (row.get("unit") or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise NeuronSetError(f"{path}: line {line}: unit {text!r} is not an integer")
    layer, site, unit = int(match.group(1)), match.group(2), int(value)
    if site == "gate_up_proj":  # a fused MLP's output: gate first, then up (modelio.sites.FUSED_MLPS)
        width = shape.intermediate_size
        if not 0 <= unit < 2 * width:
            raise NeuronSetError(
                f"{path}: line {line}: layer {layer} gate_up_proj unit {unit} out of range (gate_up_proj has {2 * width} channels, "
                "twice the model's intermediate_size); is the file for another model?"
            )
        site, unit = ("gate_proj", unit) if unit < width else ("up_proj", unit - width)
    return layer, site, unit


def _row_ap(path: Path, line: int, row: dict) -> float:
    text = (row.get("ap") or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise NeuronSetError(f"{path}: line {line}: ap {text!r} is not a finite number")
    return value


def read_selfcond(
    path: str | os.PathLike, shape: ModelShape, *, k: int | None = None, threshold: float | None = None,
    take_all: bool = False, select: str = "top", name: str | None = None,
) -> Converted:
    """selfcond's ``expertise.csv`` (columns ``layer``, ``unit``, ``ap``, …): one set, APs as its scores.

    Rows whose ``layer`` names ``…layers.L.mlp.{gate,up,down}_proj[:0]`` (or a fused ``gate_up_proj``,
    split into its gate and up halves) count; others
    (attention, GPT-2 names) are skipped and counted. Choose the neurons with ``k`` (top by
    AP, ``select="both"``: top and bottom halves), ``threshold`` (AP > T, then ``k`` if given)
    or ``take_all``. The label is ``name``, else the file's single ``concept``, else its stem.
    """
    if take_all and (k is not None or threshold is not None):
        raise UsageError("--all takes every row; leave out --k and --threshold")
    if not take_all and k is None and threshold is None:
        raise UsageError("choose the neurons: --k N (top N by AP), --threshold T (AP > T) or --all (every row of one of our sites)")
    if threshold is not None and not math.isfinite(threshold):
        raise UsageError(f"--threshold must be a finite number, got {threshold}")
    if k is not None and k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if select not in ("top", "both"):
        raise UsageError(f"--select must be top or both, not {select!r}")
    if select == "both" and k is None:
        raise UsageError("--select both needs --k")
    path = source_file(path, "selfcond expertise.csv")
    rows, skipped, concepts = _read_rows(path, shape)
    if not rows:
        others = f"; its layer column names {known_list(skipped, 3)}" if skipped else ""
        raise NeuronSetError(f"{path}: no row names one of our sites (…layers.L.mlp.gate_proj/up_proj/down_proj or …layers.L.self_attn.q_proj/k_proj/v_proj/o_proj){others}")
    chosen = _choose(rows, k, threshold, select)
    label = name or (next(iter(concepts)) if len(concepts) == 1 else path.stem)
    kinds: Counter = Counter()  # the skipped rows by module kind: input_layernorm:0, c_fc:0, …
    for module, count in skipped.items():
        kinds[module.rsplit(".", 1)[-1]] += count
    parameters = {
        "k": k, "threshold": threshold, "select": select, "all": take_all, "rows_read": len(rows),
        "rows_skipped": dict(sorted(kinds.items())),
    }
    rules = [f"{'top/bottom' if select == 'both' else 'top'} {k} by AP"] if k else []
    rules += [f"rows with AP > {threshold}"] if threshold is not None else []
    rule = " of ".join(rules) or "every row of one of our sites"
    found = ForeignSet(label, rule, [key for _, key in chosen], {key: ap for ap, key in chosen})
    return Converted("selfcond", path, file_sha256(path), [found], parameters)
