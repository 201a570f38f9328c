"""The run ledger: what an OUT has curated, so a nightly run only does what is new or changed.

An OUT's published version (pipeline.publish) holds every row ever curated into it, one per input
record: the ledger *is* its shards (``sample_id``, ``source.file``/``source.index``,
``lineage.run_id`` of the run that produced the row) plus the version manifest's ``stage_hashes``,
the hash of the settings of each stage that produced every row in it. ``ledger.parquet`` in the
version is that table, written with the shards (DuckDB/Parquet readers can use it directly).

A run into an OUT that has results:
  * Records already curated (their ``sample_id``, a content hash, is in the ledger) are skipped:
    neither parsed into a row, replayed nor judged again; the run's manifest counts them as
    ``already_curated``. New records (and changed ones: a new content hash) are curated and
    their rows added as new shard files. A changed record (same source file and index, new
    content) replaces its old row.
  * The earlier rows are carried into the new version as hard links of their shard files
    (no copy), unless a stage's settings changed: then every earlier row is recomputed from the
    first changed stage on, from what the row stores (a routing change re-routes from the stored
    scores, a judge change re-judges the stored replays, a replay change replays the stored
    trajectories). ``--recompute replay|judges|routing`` forces it.
  * Ingest and dedup settings apply to the records a run reads; an OUT written before the ledger
    (no ``stage_hashes``) is replaced by the run's rows, as every run did before.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.formats.sources import ReadTask
from pipeline.stages.dedup import KEY_FILE, KEY_IDX, KEY_SID
from pipeline.stages.ingest import KNOWN, task_flags
from pipeline.tools.shards import SHARDS_DIR, shard_files, sql_str
from schemas import sample as S

STAGES = ("replay", "judges", "routing")  # in data-flow order: a change recomputes from there on
LEDGER_FILE = "ledger.parquet"


# How a stage runs, not what it produces: changing these never recomputes stored rows.
OPERATIONAL = frozenset({
    "actors", "cpus_per_actor", "cpus_per_task", "batch_size", "concurrency", "per_actor_concurrency",
    "max_retries", "timeout_s", "backoff_base_s", "backoff_max_s", "api_key_env", "max_error_rate",
    "stop_after_failures", "circuit_breaker_after", "deadline_s", "probe", "min_sandbox_level", "sandbox",
})


def _outcome_settings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _outcome_settings(v) for k, v in value.items() if k not in OPERATIONAL}
    return value


def stage_hashes(cfg: RunConfig) -> dict[str, str]:
    """Per stage, the hash of every setting its output depends on (its own and upstream ones;
    OPERATIONAL settings excluded). ``routing.recovered_errors`` belongs to the judges (the
    code-correctness judge reads it)."""
    routing = cfg.routing.model_dump(mode="json")
    sections = (
        cfg.replay.model_dump(mode="json"),
        {**cfg.judges.model_dump(mode="json"), "recovered_errors": routing.get("recovered_errors")},
        routing,
    )
    out, acc = {}, ""
    for stage, section in zip(STAGES, sections, strict=True):
        acc = hashlib.sha256((acc + json.dumps(_outcome_settings(section), sort_keys=True)).encode()).hexdigest()
        out[stage] = acc[:16]
    return out


def first_changed_stage(previous: dict[str, str] | None, current: dict[str, str], forced: str | None) -> str | None:
    """The stage earlier rows are recomputed from (None: carried as they are)."""
    if forced is not None:
        if forced not in STAGES:
            raise ValueError(f"--recompute must be one of {', '.join(STAGES)}, not {forced!r}")
        return forced
    if previous is None:
        return None
    return next((s for s in STAGES if previous.get(s) != current[s]), None)


def _shard_glob(shards: Path) -> str:
    return f"read_parquet({sql_str(Path(shards) / '**' / '*.parquet')}, hive_partitioning = true, filename = true)"


def known_and_superseded(
    prekey_files: list[str], previous_shards: Path
) -> tuple[dict[tuple[str, int], dict[str, Any]], set[tuple[str, int]]]:
    """From the pre-pass's ids of this run's records and the previous version's rows:
    ``known`` = {(file, idx): {KNOWN: true}} for records whose sample_id OUT already holds, and
    ``superseded`` = the (file, idx) of earlier rows that this run's input replaces with new
    content (same place, another sample_id)."""
    if not prekey_files or not shard_files(previous_shards.parent):
        return {}, set()
    con = duckdb.connect()
    files_sql = "[" + ", ".join(sql_str(f) for f in prekey_files) + "]"
    con.execute(f"CREATE VIEW new AS SELECT {KEY_SID} AS sid, {KEY_FILE} AS f, {KEY_IDX} AS i FROM read_parquet({files_sql})")
    con.execute(f"""CREATE VIEW old AS SELECT {S.SAMPLE_ID} AS sid, {S.SOURCE}.{S.SRC_FILE} AS f,
                    {S.SOURCE}.{S.SRC_INDEX} AS i FROM {_shard_glob(previous_shards)}""")
    known = {(f, i): {KNOWN: True} for f, i in con.execute(
        "SELECT f, i FROM new WHERE sid IN (SELECT sid FROM old)").fetchall()}
    superseded = set(con.execute(
        "SELECT o.f, o.i FROM old o JOIN new n ON n.f = o.f AND n.i = o.i WHERE n.sid <> o.sid "
        "AND n.sid NOT IN (SELECT sid FROM old)").fetchall())
    con.close()
    return known, superseded


def pending_tasks(tasks: list[ReadTask]) -> list[ReadTask]:
    """The read tasks that still hold a record to curate: a task whose every record OUT holds
    already (its verdicts, pipeline.stages.dedup.attach_verdicts) is not read again, and a window of
    such tasks starts no stage at all (an unchanged rerun replays and judges nothing)."""
    return [t for t in tasks if not (t.count and len(flags := task_flags(t)) == t.count
                                     and all(v.get(KNOWN) for v in flags.values()))]


def carry_over(previous_shards: Path, staging_shards: Path, superseded: set[tuple[str, int]]) -> int:
    """Hard-link the previous version's shard files into the staging shards (a file holding a
    superseded row is rewritten without it instead). Returns the rows carried."""
    carried = 0
    for src in shard_files(previous_shards.parent):
        dst = staging_shards / src.relative_to(previous_shards)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if superseded:
            table = pq.read_table(src)
            src_col = table.column(S.SOURCE).to_pylist()
            keep = [(s[S.SRC_FILE], s[S.SRC_INDEX]) not in superseded for s in src_col]
            if not all(keep):
                table = table.filter(pa.array(keep))
                if table.num_rows:
                    pq.write_table(table, dst)
                carried += table.num_rows
                continue
        os.link(src, dst)
        carried += pq.ParquetFile(dst).metadata.num_rows
    return carried


def write_ledger(version_dir: Path) -> int:
    """``ledger.parquet`` of a staged version: one row per row of its shards. Returns its rows."""
    shards = Path(version_dir) / SHARDS_DIR
    target = Path(version_dir) / LEDGER_FILE
    con = duckdb.connect()
    if not shard_files(version_dir):
        con.close()
        return 0
    con.execute(f"""COPY (SELECT {S.SAMPLE_ID}, {S.SOURCE}.{S.SRC_FILE} AS file, {S.SOURCE}.{S.SRC_INDEX} AS idx,
                    {S.LINEAGE}.{S.LIN_RUN_ID} AS run_id, {S.ROUTE}
                    FROM {_shard_glob(shards)} ORDER BY file, idx) TO {sql_str(target)} (FORMAT parquet)""")
    n = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(target)})").fetchone()[0]
    con.close()
    return n
