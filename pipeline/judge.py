"""Judge stage: apply every judge to every row; a judge that raises scores null with the error."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from judges import Judge
from pipeline.dedup import write_block_keys
from schemas import sample as S


def judge_row(row: dict[str, Any], judges: list[Judge]) -> dict[str, Any]:
    """Fill score_<dim> and why_<dim> for every judge's dimension."""
    for judge in judges:
        if row.get(S.INPUT_ERROR):
            score, why = None, "not judged: invalid input"
        elif row.get(S.DUPLICATE_OF):  # exact duplicate (pipeline.dedup): the kept copy is judged
            score, why = None, f"not judged: exact duplicate of {row[S.DUPLICATE_OF]}"
        else:
            try:
                verdict = judge.judge(row)
                score, why = verdict.score, f"[{judge.name}] {verdict.why}"
            except Exception as exc:  # one bad row must not fail the block
                score, why = None, f"[{judge.name}] judge_error: {type(exc).__name__}: {exc}"[:500]
        row[S.score_column(judge.dimension)] = score
        row[S.metric_score_column(judge.dimension)] = score
        row[S.explanation_column(judge.dimension)] = why
    return row


class JudgeStage:
    """Ray Data callable: judges are built once per worker. With ``keys_dir`` it also writes the
    dedup keys of every block it judges (the first image decoded once, by the judge).

    New records are judged inside the replay actor (pipeline.replay.ReplayActor calls
    :meth:`judge_rows` on the rows it has just replayed: no second pool, no Arrow hop of the
    replayed images); as a stage of its own it re-judges stored replays (pipeline.ledger)."""

    def __init__(self, judges_factory: Any, stage_metrics: Any = None, keys_dir: str | None = None):
        self.judges = judges_factory()
        self.metrics = stage_metrics
        self.keys_dir = keys_dir
        # the decoded inputs of a judge that keeps them (visual gain): the dedup keys reuse them
        self.grey = next((j.grey for j in self.judges if hasattr(j, "grey")), None)

    def judge_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every judge on every row (in place), the block's dedup keys, the stage's metrics."""
        start, cpu = time.perf_counter(), time.process_time()
        rows = [judge_row(r, self.judges) for r in rows]
        if self.keys_dir is not None:  # the main pass's dedup keys (pipeline.dedup), same decode
            write_block_keys(rows, self.keys_dir, self.grey)
        if self.metrics is not None:
            self.metrics.add.remote("judges", len(rows), time.perf_counter() - start, time.process_time() - cpu)
        return rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        return S.to_table(self.judge_rows(batch.to_pylist()))
