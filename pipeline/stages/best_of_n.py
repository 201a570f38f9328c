"""Best-of-N: among the rollouts of one (image, question), keep the best N; reject the others.

Runs after routing, on the staged shards of a run (before they are published), with the
(image, question) groups that pipeline.stages.dedup wrote to ``groups.parquet`` (two or more members
each; exact duplicates are never members). Every member was replayed, judged and routed like any
record, so each carries its own scores.

"Best", per group, is the order (first wins):
  1. route tier: ``twi`` before ``text`` before ``rejected`` (a record that routing rejects for
     its own reasons — wrong answer, failing code, fabricated observation, contamination — ranks
     below every routable one; a TwI trajectory is the curation's target, a text-route one used
     its image operations to little effect);
  2. quality, descending: the weighted mean of the six final scores (``score_<dim>``) with weights
     ``QUALITY_WEIGHTS`` (scientific_accuracy and code_correctness 3 each, the four others 1). A
     null score (the judge could not score, e.g. no ground truth) is left out and the weights of
     the present scores renormalised; a row with no score at all has a null quality, ranked last
     within its tier;
  3. pixels of the first input image, descending (of a record and its 1/3 downscale with equal
     scores, the original is kept);
  4. (source file, index), then ``sample_id``: among records nothing above separates (e.g. a
     record and its JPEG re-encode, same scores, same size) the earliest is kept, as for exact
     duplicates. A total order over content and position, so the choice never depends on
     parallelism; file order only breaks exact ties of score and size.

The first ``dedup.best_of_n`` members are kept untouched (a kept member that routing rejected
stays rejected for its own reasons). Every other member gets ``duplicate_of`` = the sample_id of
the group's best and is routed again by routing.route (so it becomes ``rejected`` with
``duplicate_of:<best>`` first among its reasons, its text version and lineage cleared as for any
rejected row); its scores, explanations and replay stay, so the choice can be inspected:
``SELECT * FROM samples WHERE duplicate_of = '<best>'``. An exact duplicate whose
``duplicate_of`` named a member that lost is pointed at that group's best too, so ``duplicate_of``
always names a kept record.

Benchmark contamination is applied first, on the same staged shards (:func:`apply_contamination`:
the rows whose sample_id pipeline.stages.dedup.post_verdicts found in a benchmark get
``contaminated_by`` and are routed again), so a contaminated rollout ranks in the rejected tier.

Out of core: DuckDB (a database file in the work dir, spilling beyond its memory limit) joins the
light columns of the staged rows with the groups and ranks them; only the shard files holding a
changed row are rewritten, one at a time (a file is one Ray block), their rows sorted into the
route partitions again. Row counts do not change, so conservation still holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages.route import route_rows
from pipeline.tools.shards import read_shard_file, sql_str
from routing.policy import RoutingPolicy
from schemas import sample as S

QUALITY_WEIGHTS = {
    "scientific_accuracy": 3.0,
    "code_correctness": 3.0,
    "alignment": 1.0,
    "coherence": 1.0,
    "visual_gain": 1.0,
    "educational_value": 1.0,
}
ROUTE_TIER = {route: tier for tier, route in enumerate(S.ROUTES)}  # twi, text, rejected
REWRITTEN_PREFIX = "bestofn-"
_FILE, _IDX, _FILENAME, _RANK, _BEST, _NEW_VALUE = "src_file", "src_idx", "filename", "rank", "best", "new_value"


def quality_sql() -> str:
    """SQL of the quality of a staged row (module doc, 2.): null scores left out."""
    num = " + ".join(f"coalesce({S.score_column(d)} * {w}, 0)" for d, w in QUALITY_WEIGHTS.items())
    den = " + ".join(f"CASE WHEN {S.score_column(d)} IS NULL THEN 0 ELSE {w} END" for d, w in QUALITY_WEIGHTS.items())
    return f"(({num}) / nullif({den}, 0))"


def quality(row: dict[str, Any]) -> float | None:
    """The same quality in Python (for reports and tests)."""
    present = [(w, row[S.score_column(d)]) for d, w in QUALITY_WEIGHTS.items() if row.get(S.score_column(d)) is not None]
    return sum(w * s for w, s in present) / sum(w for w, _ in present) if present else None


def select_best(
    shards_dir: Path,
    groups_file: Path,
    best_of_n: int,
    policy: RoutingPolicy,
    lineage: dict[str, Any],
    work_dir: Path,
    memory_limit: str = "256MB",
) -> dict[str, int]:
    """Apply best-of-N to the staged shards under ``shards_dir`` in place (module doc).

    Returns counts for the manifest: groups, members, rejected (members that lost) and
    redirected (exact duplicates pointed at a group's best)."""
    shards_dir, work_dir = Path(shards_dir), Path(work_dir)
    counts = {"groups": 0, "members": 0, "rejected": 0, "redirected": 0}
    if not groups_file.is_file() or not any(shards_dir.rglob("*.parquet")):
        return counts
    db = work_dir / "best_of_n.duckdb"
    con = _connect(db, work_dir, memory_limit)
    con.execute(f"CREATE TABLE groups AS SELECT * FROM read_parquet({sql_str(groups_file)})")
    n_groups, n_members = con.execute(f"SELECT count(DISTINCT {S.DEDUP_GROUP}), count(*) FROM groups").fetchone()
    counts.update(groups=n_groups, members=n_members)
    if not n_members:
        con.close()
        return counts
    glob = sql_str(shards_dir / "**" / "*.parquet")
    scores = ", ".join(S.SCORE_COLUMNS)
    con.execute(f"""
        CREATE TABLE staged AS
        SELECT {_FILENAME}, {S.SOURCE}.{S.SRC_FILE} AS {_FILE}, {S.SOURCE}.{S.SRC_INDEX} AS {_IDX},
               {S.SAMPLE_ID}, {S.ROUTE}, {S.DUPLICATE_OF}, {scores},
               CAST({S.IMAGES}[1].{S.IMG_WIDTH} AS BIGINT) * {S.IMAGES}[1].{S.IMG_HEIGHT} AS px
        FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true, filename = true)""")
    tiers = " ".join(f"WHEN '{r}' THEN {t}" for r, t in ROUTE_TIER.items())
    con.execute(f"""
        CREATE TABLE ranked AS
        SELECT s.*, g.{S.DEDUP_GROUP},
               row_number() OVER w AS {_RANK}, first_value(s.{S.SAMPLE_ID}) OVER w AS {_BEST}
        FROM staged s JOIN groups g ON g.file = s.{_FILE} AND g.idx = s.{_IDX}
        WINDOW w AS (PARTITION BY g.{S.DEDUP_GROUP}
                     ORDER BY CASE s.{S.ROUTE} {tiers} ELSE 3 END, {quality_sql()} DESC NULLS LAST,
                              px DESC NULLS LAST, s.{_FILE}, s.{_IDX}, s.{S.SAMPLE_ID})""")
    con.execute(f"""
        CREATE TABLE changes AS
        SELECT {_FILENAME}, {_FILE}, {_IDX}, {_BEST} AS {_NEW_VALUE} FROM ranked WHERE {_RANK} > {int(best_of_n)}""")
    counts["rejected"] = con.execute("SELECT count(*) FROM changes").fetchone()[0]
    # exact duplicates of a member that lost: point them at the group's best
    con.execute(f"""
        INSERT INTO changes
        SELECT s.{_FILENAME}, s.{_FILE}, s.{_IDX}, r.{_BEST}
        FROM staged s JOIN ranked r ON s.{S.DUPLICATE_OF} = r.{S.SAMPLE_ID}
        WHERE r.{_RANK} > {int(best_of_n)}""")
    counts["redirected"] = con.execute("SELECT count(*) FROM changes").fetchone()[0] - counts["rejected"]
    for filename, changes in _changes_by_file(con, S.DUPLICATE_OF):
        _rewrite(Path(filename), shards_dir, changes, policy, lineage)
    con.close()
    db.unlink(missing_ok=True)
    return counts


def apply_contamination(
    shards_dir: Path,
    contaminated: dict[str, list[str]],
    policy: RoutingPolicy,
    lineage: dict[str, Any],
    work_dir: Path,
    memory_limit: str = "256MB",
) -> int:
    """Set ``contaminated_by`` on the staged rows whose sample_id overlaps a benchmark
    (``{sample_id: [benchmark names]}`` from pipeline.stages.dedup.post_verdicts) and route them again
    (so they become ``rejected`` with ``contaminated:<name>``). Runs before :func:`select_best`,
    so a contaminated rollout ranks in the rejected tier. Returns the number of rows changed."""
    shards_dir, work_dir = Path(shards_dir), Path(work_dir)
    if not contaminated or not any(shards_dir.rglob("*.parquet")):
        return 0
    db = work_dir / "contamination.duckdb"
    con = _connect(db, work_dir, memory_limit)
    con.execute(f"CREATE TABLE bench_hits({S.SAMPLE_ID} VARCHAR, names VARCHAR[])")
    con.executemany("INSERT INTO bench_hits VALUES (?, ?)", sorted(contaminated.items()))
    glob = sql_str(shards_dir / "**" / "*.parquet")
    con.execute(f"""
        CREATE TABLE changes AS
        SELECT s.{_FILENAME}, s.{S.SOURCE}.{S.SRC_FILE} AS {_FILE}, s.{S.SOURCE}.{S.SRC_INDEX} AS {_IDX},
               h.names AS {_NEW_VALUE}
        FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true, filename = true) s
        JOIN bench_hits h ON h.{S.SAMPLE_ID} = s.{S.SAMPLE_ID}""")
    n = con.execute("SELECT count(*) FROM changes").fetchone()[0]
    for filename, changes in _changes_by_file(con, S.CONTAMINATED_BY):
        _rewrite(Path(filename), shards_dir, changes, policy, lineage)
    con.close()
    db.unlink(missing_ok=True)
    return n


def _connect(db: Path, work_dir: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """A fresh DuckDB database file in the run's work dir that spills beyond ``memory_limit``."""
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute(f"SET temp_directory = {sql_str(work_dir / 'duckdb-tmp')}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET threads = 2")
    return con


def _changes_by_file(
    con: duckdb.DuckDBPyConnection, column: str
) -> Iterator[tuple[str, dict[tuple[str, int], dict[str, Any]]]]:
    """(shard file, {(source file, index): {column: new value}}) of the ``changes`` table,
    streamed in file order."""
    cur = con.execute(f"SELECT {_FILENAME}, {_FILE}, {_IDX}, {_NEW_VALUE} FROM changes ORDER BY 1, 2, 3")
    current, acc = None, {}
    while batch := cur.fetchmany(4096):
        for filename, f, i, value in batch:
            if filename != current and current is not None:
                yield current, acc
                acc = {}
            current = filename
            acc[(f, i)] = {column: value}
    if current is not None:
        yield current, acc


def _rewrite(
    path: Path,
    shards_dir: Path,
    changes: dict[tuple[str, int], dict[str, Any]],
    policy: RoutingPolicy,
    lineage: dict[str, Any],
) -> None:
    """Rewrite one staged shard file with ``changes`` (column updates per row) applied and the
    changed rows routed again (module doc)."""
    table = read_shard_file(path, shards_dir)
    rows = S.to_table(table.select(S.SAMPLE_SCHEMA.names).to_pylist()).to_pylist()
    kept, changed = [], []
    for row in rows:
        update = changes.get((row[S.SOURCE][S.SRC_FILE], row[S.SOURCE][S.SRC_INDEX]))
        if update is None:
            kept.append(row)
        else:
            row.update(update)
            changed.append(row)
    rerouted = route_rows(S.to_table(changed).to_pylist(), policy, lineage) if changed else []
    out = S.to_table(kept + rerouted)
    stem = REWRITTEN_PREFIX + uuid.uuid4().hex[:12]
    for (route, discipline), part in _split(out).items():
        target = shards_dir / f"{S.ROUTE}={route}" / f"{S.DISCIPLINE}={discipline}"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(part.drop_columns(list(S.PARTITION_COLUMNS)), target / f"{stem}.parquet")
    path.unlink()


def _split(table: pa.Table) -> dict[tuple[str, str], pa.Table]:
    keys = list(zip(table.column(S.ROUTE).to_pylist(), table.column(S.DISCIPLINE).to_pylist(), strict=True))
    out = {}
    for key in sorted(set(keys)):
        mask = pa.array([k == key for k in keys])
        out[key] = table.filter(mask)
    return out
