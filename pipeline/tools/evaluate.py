"""Agreement of a run with evaluation labels (labels.jsonl). Evaluation only: never an input to
judges or routing, which run before this and never see the labels file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.tools.shards import VIEW, connect, sql_str
from schemas import sample as S

LABELS_FILE = "labels.jsonl"


def find_labels(inputs: list[Path]) -> Path | None:
    """labels.jsonl beside (or inside) the single input, as `sample-corpus` writes it."""
    if len(inputs) != 1:
        return None
    p = Path(inputs[0])
    candidate = (p if p.is_dir() else p.parent) / LABELS_FILE
    return candidate if candidate.is_file() else None


def agreement(out_dir: Path, labels: Path) -> dict[str, Any]:
    """Routes in OUT against the labels of the records OUT holds (a run over part of a labelled
    corpus, e.g. --limit or a subset file beside its labels.jsonl, is scored on that part; the
    labels without a row are counted as ``not_in_out``)."""
    con = connect(out_dir)
    con.execute(f"CREATE TEMP VIEW labels AS SELECT * FROM read_json_auto({sql_str(labels)})")
    rows = con.execute(
        f"SELECT l.sample_id, l.case, l.expected_route, s.{S.ROUTE}, s.{S.ROUTE_REASONS} "
        f"FROM labels l JOIN {VIEW} s ON s.{S.SAMPLE_ID} = l.sample_id ORDER BY l.sample_id"
    ).fetchall()
    total = con.execute("SELECT count(*) FROM labels").fetchone()[0]
    by_case: dict[str, dict[str, int]] = {}
    mismatches = []
    for sid, case, expected, got, reasons in rows:
        c = by_case.setdefault(case, {"n": 0, "agree": 0})
        c["n"] += 1
        if got == expected:
            c["agree"] += 1
        else:
            mismatches.append({"sample_id": sid, "case": case, "expected": expected, "got": got,
                               "reasons": reasons})
    n = len(rows)
    agree = sum(c["agree"] for c in by_case.values())
    return {"labels": str(labels), "labeled": n, "not_in_out": total - n, "agree": agree,
            "agreement": round(agree / n, 4) if n else None, "by_case": by_case, "mismatches": mismatches}
