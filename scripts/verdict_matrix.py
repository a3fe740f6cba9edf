"""The paper's findings side by side: one column per `relspec reproduce` report.

Reads each report folder's ``tables/verdicts.json`` (written by ``relspec reproduce``) and
prints one Markdown table: a row per finding, a column per model, each cell the verdict and
the metric it rests on. Nothing is recomputed, so the table says exactly what the reports say.

    python scripts/verdict_matrix.py docs/reproduce-relspec-tiny docs/reproduce-gemma-3-270m \
        --out docs/verdicts.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

__all__ = ["load_verdicts", "matrix", "main"]

VERDICTS_FILE = Path("tables") / "verdicts.json"
# The model's name as report.md's title gives it: "# Relation-specific neurons: MODEL (SUITE suite)".
_TITLE = re.compile(r"^# Relation-specific neurons: (?P<model>.+?) \((?P<suite>\w+) suite\)")


def load_verdicts(folder: Path) -> tuple[str, list[dict[str, str]]]:
    """Read one report's model name and verdict rows.

    Args:
        folder: a folder written by ``relspec reproduce`` (holds report.md and tables/).

    Returns:
        (the model's name from report.md's title, or the folder's name; the verdict rows).

    Example:
        >>> import json, tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / "tables").mkdir()
        >>> _ = (d / "tables" / "verdicts.json").write_text(json.dumps([{"finding": "1", "verdict": "agrees", "metric": "-"}]))
        >>> load_verdicts(d)[1][0]["verdict"]
        'agrees'
    """
    path = folder / VERDICTS_FILE
    if not path.is_file():
        raise SystemExit(f"verdict_matrix: {path} not found (made by relspec reproduce of this version)")
    rows = json.loads(path.read_text())
    model = folder.name
    report = folder / "report.md"
    if report.is_file() and (m := _TITLE.match(report.read_text().split("\n", 1)[0])):
        model = m["model"]
    return model, rows


def matrix(reports: list[tuple[str, list[dict[str, str]]]]) -> str:
    """One Markdown table: findings as rows (in the first report's order), models as columns.

    Args:
        reports: (model, verdict rows) per report, as ``load_verdicts`` returns them.

    Returns:
        The table; a cell reads "verdict (metric)", or "—" where that report has no such row.

    Example:
        >>> print(matrix([("a", [{"finding": "f", "verdict": "agrees", "metric": "logprob"}])]))
        | finding | a |
        |---|---|
        | f | agrees (logprob) |
    """
    findings: list[str] = []
    for _, rows in reports:
        findings += [r["finding"] for r in rows if r["finding"] not in findings]
    lines = ["| finding | " + " | ".join(m for m, _ in reports) + " |", "|---" * (len(reports) + 1) + "|"]
    for f in findings:
        cells = []
        for _, rows in reports:
            row = next((r for r in rows if r["finding"] == f), None)
            if row is None:
                cells.append("—")
                continue
            # A finding that rests on no metric (Finding 1 counts neurons; "—": none has power).
            bare = row.get("metric") in (None, "", "—", "-")
            cells.append(row["verdict"] + ("" if bare else f" ({row['metric']})"))
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="report folders written by relspec reproduce")
    ap.add_argument("--out", type=Path, help="write the table here (else stdout)")
    args = ap.parse_args(argv)
    table = matrix([load_verdicts(f) for f in args.folders])
    if args.out:
        args.out.write_text(table + "\n")
    else:
        sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
