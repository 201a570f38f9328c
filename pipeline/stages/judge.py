"""Judge stage: apply every judge to every row; a judge that raises scores null with the error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from judges import Judge
from pipeline.stage import Stage
from pipeline.stages.dedup import write_block_keys
from schemas import sample as S


def judge_row(row: dict[str, Any], judges: list[Judge]) -> dict[str, Any]:
    """Fill score_<dim> and why_<dim> for every judge's dimension."""
    for judge in judges:
        if row.get(S.INPUT_ERROR):
            score, why = None, "not judged: invalid input"
        elif row.get(S.DUPLICATE_OF):  # exact duplicate (pipeline.stages.dedup): the kept copy is judged
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


@dataclass(kw_only=True)
class JudgeStage(Stage):
    """Ray stage (actors): every metric judge on every row, the judges built once per actor. With
    ``keys_dir`` it also writes the dedup keys of every batch it judges (the first image decoded
    once, by the judge).

    New records are judged in the replay actor, fused after pipeline.stages.replay.ReplayStage
    (pipeline.stage.Fused: no second pool, no Arrow hop of the replayed images); as a pool of
    its own it re-judges stored replays (pipeline.ledger)."""

    name = "judges"
    actor = True
    judges_factory: Callable[[], list[Judge]]
    keys_dir: str | None = None

    def setup(self, metrics: Any | None) -> None:
        self.judges = self.judges_factory()
        # the decoded inputs of a judge that keeps them (visual gain): the dedup keys reuse them
        self.grey = next((j.grey for j in self.judges if hasattr(j, "grey")), None)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = [judge_row(r, self.judges) for r in rows]
        if self.keys_dir is not None:  # the main pass's dedup keys (pipeline.stages.dedup), same decode
            write_block_keys(rows, self.keys_dir, self.grey)
        return rows
