"""DuckDB views over written shards: the canned summaries of `twi-curate inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.tools.shards import VIEW, connect
from schemas import sample as S


def query(out_dir: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run any SQL over the view ``samples``; returns (column names, rows)."""
    con = connect(out_dir)
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description] if cur.description else []
    return cols, cur.fetchall()


def routes_by_discipline(out_dir: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    cases = ", ".join(f"count(*) FILTER (WHERE {S.ROUTE} = '{r}') AS {r}" for r in S.ROUTES)
    return query(
        out_dir,
        f"SELECT * FROM (SELECT {S.DISCIPLINE}, {cases}, count(*) AS total FROM {VIEW} GROUP BY 1 "
        f"UNION ALL SELECT 'ALL', {cases}, count(*) FROM {VIEW}) "
        f"ORDER BY {S.DISCIPLINE} = 'ALL', {S.DISCIPLINE}",
    )


def mean_scores_by_route(out_dir: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    means = ", ".join(f"round(avg({S.score_column(d)}), 3) AS {d}" for d in S.DIMENSIONS)
    return query(out_dir, f"SELECT {S.ROUTE}, count(*) AS n, {means} FROM {VIEW} GROUP BY 1 ORDER BY 1")


def top_reasons(out_dir: Path, route: str = S.ROUTE_REJECTED, limit: int = 15) -> tuple[list[str], list[tuple[Any, ...]]]:
    return query(
        out_dir,
        f"SELECT reason, count(*) AS n FROM (SELECT unnest({S.ROUTE_REASONS}) AS reason FROM {VIEW} "
        f"WHERE {S.ROUTE} = '{route}') GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}",
    )


def stages_by_discipline(out_dir: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Samples per curriculum stage and discipline under the default curriculum policy."""
    from pipeline.tools.export import load_rows
    from routing.curriculum import STAGES, CurriculumPolicy, select_stage

    rows = load_rows(out_dir)
    policy = CurriculumPolicy()
    chosen = {stage: select_stage(rows, stage, policy) for stage in STAGES}
    disciplines = sorted({r[S.DISCIPLINE] for r in rows})
    table = [
        (d, *[sum(r[S.DISCIPLINE] == d for r in chosen[st]) for st in STAGES]) for d in disciplines
    ]
    table.append(("ALL", *[len(chosen[st]) for st in STAGES]))
    return ["discipline", *STAGES], table


def exports(out_dir: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The exports written from this run (OUT/exports.jsonl, appended by `twi-curate export`)."""
    import json

    path = Path(out_dir) / "exports.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    cols = ["written_at", "format", "stage", "samples", "by_route", "dest"]
    return cols, [tuple(r.get(c) for c in cols) for r in recs]
