"""Reading written shards back: one DuckDB connection with a view ``samples`` over every shard."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import sample as S

SHARDS_DIR = "shards"
VIEW = "samples"


def sql_str(path: str | Path) -> str:
    """``path`` as a single-quoted DuckDB SQL string literal (quotes doubled)."""
    return "'" + str(path).replace("'", "''") + "'"


def read_shard_file(path: Path, shards_dir: Path) -> pa.Table:
    """One shard file's rows with the hive partition columns (route, discipline) restored from
    its folders under ``shards_dir``."""
    path = Path(path)
    table = pq.read_table(path)
    parts = dict(p.split("=", 1) for p in path.parent.relative_to(shards_dir).parts if "=" in p)
    for col in S.PARTITION_COLUMNS:
        if col not in table.column_names:
            table = table.append_column(col, pa.array([parts[col]] * table.num_rows, pa.string()))
    return table


def shard_files(out_dir: Path) -> list[Path]:
    return sorted((Path(out_dir) / SHARDS_DIR).glob("**/*.parquet"))


def connect(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with view ``samples`` (hive columns route, discipline restored)."""
    out_dir = Path(out_dir)
    if not (out_dir / SHARDS_DIR).is_dir():
        raise FileNotFoundError(
            f"{out_dir} has no {SHARDS_DIR}/ folder; point at the --out folder of a `twi-curate run`"
        )
    con = duckdb.connect()
    if shard_files(out_dir):
        glob = sql_str(out_dir / SHARDS_DIR / "**" / "*.parquet")
        con.execute(
            f"CREATE VIEW {VIEW} AS SELECT * FROM read_parquet({glob}, hive_partitioning = true, "
            "union_by_name = true)"
        )
    else:  # a run over zero records: an empty view with the full schema
        con.register("_empty_samples", S.SAMPLE_SCHEMA.empty_table())
        con.execute(f"CREATE VIEW {VIEW} AS SELECT * FROM _empty_samples")
    return con


def fetch_rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Run a query and return its rows as canonical dicts (nested structs and lists intact)."""
    rel = con.sql(sql, params=params or None)
    for name in ("to_arrow_table", "arrow", "fetch_arrow_table"):  # DuckDB 2.x, 1.x
        fn = getattr(rel, name, None)
        if fn is not None:
            table = fn()
            return (table.read_all() if hasattr(table, "read_all") else table).to_pylist()
    raise RuntimeError("this DuckDB cannot return Arrow tables; install duckdb>=1.1")
