"""Ingest: input files -> canonical sample rows (schemas.sample), one row per input record.

The driver only plans (pipeline.formats.sources): it finds record boundaries (JSONL lines, JSON array
elements, Parquet/Arrow rows) and emits small read tasks; it also detects each file's format
from its first records (the first adapter of pipeline.formats.ADAPTERS that recognises one), or
takes the one forced with ``--format``. Workers read their slice and parse it, so the driver
never holds the corpus. Each record goes to the forced adapter, else to the first adapter that
recognises it (files may mix formats), else to its file's format (see :func:`choose_adapter`).

A record that cannot be used still becomes exactly one row, with ``input_error`` set to a
machine-readable kind (routing turns it into ``invalid_input:<kind>``) and its raw text kept
(truncated). Kinds: non_utf8, malformed_json, not_an_object, unknown_format, missing_field:<f>,
wrong_type, empty_trajectory, missing_image, remote_image, corrupt_image, image_too_large,
decompression_bomb, image_placeholder_mismatch, unterminated_code, unterminated_answer,
unterminated_observation, orphan_observation, unsupported_turns,
unreadable_image, unreadable_file, truncated_file, unreadable_record, binary_file:<what> (a
pickle, archive, image... given as input: one row, never deserialised, see pipeline.formats.sources),
unsupported_tool:<name> (a tool the sandbox cannot have), and
adapter_error:<exception type> for an input shape no adapter anticipated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import IngestConfig
from pipeline.formats import detect_adapter, find_adapter, get_adapter, sources
from pipeline.formats.base import (  # noqa: F401  (re-exported: ingest's public names)
    InputError,
    RecordContext,
    image_from_bytes,
    load_image,
)
from pipeline.formats.sources import ReadTask, discover_inputs  # noqa: F401  (re-exported)
from pipeline.stage import Stage
from schemas import sample as S

_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
DETECT_RECORDS = 16  # records read per file to detect its format
UNKNOWN_FORMAT = "unknown"


# --- planning (driver) ---------------------------------------------------------------------
def detect_file_format(path: Path, n: int = DETECT_RECORDS) -> str:
    """Name of the adapter that recognises the first parseable record of a file ('' if none)."""
    for payload in sources.sample_payloads(path, n):
        try:
            record = _decode(payload)
        except InputError:
            continue
        adapter = detect_adapter(record)
        if adapter is not None:
            return adapter.name
    return ""


def iter_read_tasks(
    files: list[Path], records_per_task: int, limit: int | None = None, format: str | None = None
) -> Iterator[ReadTask]:
    """Read tasks for ``files`` (at most ``limit`` records in total), produced lazily file by
    file. ``format`` forces an adapter for every record; otherwise each file's format is detected
    from its first records."""
    if format is not None:
        get_adapter(format)  # fail early with the list of names
    total = 0
    for f in files:
        if limit is not None and total >= limit:
            return
        fmt = format if format is not None else detect_file_format(Path(f))
        for task in sources.plan_file(Path(f), records_per_task, None if limit is None else limit - total):
            total += task.count
            yield replace(task, format=fmt, forced=format is not None)


def plan_read_tasks(
    files: list[Path], records_per_task: int, limit: int | None = None, format: str | None = None
) -> list[ReadTask]:
    """All read tasks at once (see :func:`iter_read_tasks`; the pipeline streams them instead)."""
    return list(iter_read_tasks(files, records_per_task, limit, format))


def write_plan(tasks: Iterable[ReadTask], path: Path) -> tuple[int, int]:
    """Stream read tasks to a JSONL plan file; returns (records, tasks). The driver keeps the plan
    on disk, so its memory does not grow with the corpus."""
    records = n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for task in tasks:
            fh.write(json.dumps(asdict(task)) + "\n")
            records += task.count
            n += 1
    return records, n


def read_plan(path: Path, window: int) -> Iterator[list[ReadTask]]:
    """The plan file's tasks, ``window`` at a time."""
    batch: list[ReadTask] = []
    with open(path) as fh:
        for line in fh:
            batch.append(ReadTask(**json.loads(line)))
            if len(batch) == window:
                yield batch
                batch = []
    if batch:
        yield batch


# --- parsing (workers) ---------------------------------------------------------------------
def _decode(payload: bytes | dict[str, Any] | Exception) -> Any:
    """A payload from pipeline.formats.sources -> the parsed record; InputError for unreadable ones."""
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, sources.BinaryInput):
        raise InputError(f"binary_file:{payload.what}", str(payload))
    if isinstance(payload, UnicodeError):
        raise InputError("non_utf8", str(payload))
    if isinstance(payload, EOFError):
        raise InputError("truncated_file", str(payload))
    if isinstance(payload, OSError | pa.ArrowException):
        raise InputError("unreadable_file", str(payload))
    if isinstance(payload, Exception):
        raise InputError("unreadable_record", f"{type(payload).__name__}: {payload}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("non_utf8", str(exc)) from exc
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError("malformed_json", str(exc)[:200]) from exc
    if _SURROGATE_ESCAPE.search(payload):  # "\ud800" escapes decode to text UTF-8 cannot hold
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError("non_utf8", f"lone surrogate escape: {exc}"[:200]) from exc
    return record


def _raw_text(payload: bytes | dict[str, Any] | Exception, keep: int) -> str:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload[: keep * 4 + 16]).decode("utf-8", "replace").rstrip("\r\n")[:keep]
    if isinstance(payload, dict):
        def short(v: Any) -> Any:
            return f"<{len(v)} bytes>" if isinstance(v, bytes | bytearray) else repr(v)

        return json.dumps(payload, default=short)[:keep]
    return f"{type(payload).__name__}: {payload}"[:keep]


def choose_adapter(record: Any, file_format: str, forced: bool):
    """The adapter for one record: the forced one; else the first adapter (in the specific-first
    order of pipeline.formats.ADAPTERS) that recognises the record; else the file's detected
    format, so a broken record of a Thyme file reports which Thyme field is wrong instead of
    ``unknown_format``. InputError('unknown_format') if there is none."""
    if not isinstance(record, dict):
        raise InputError("not_an_object", f"got {type(record).__name__}")
    if forced:
        return get_adapter(file_format)
    adapter = detect_adapter(record) or find_adapter(file_format)
    if adapter is None:
        keys = ", ".join(sorted(str(k) for k in record)[:12])
        raise InputError("unknown_format", f"no adapter recognises a record with keys {keys}")
    return adapter


def parse_payload(
    payload: bytes | dict[str, Any] | Exception,
    file: str,
    index: int,
    cfg: IngestConfig,
    file_format: str = "",
    forced: bool = False,
) -> dict[str, Any]:
    """One record (raw JSON bytes, a row dict, or the error that made it unreadable) -> one
    canonical row. Never raises for bad data."""
    used = file_format or UNKNOWN_FORMAT
    try:
        record = _decode(payload)
        adapter = choose_adapter(record, file_format, forced)
        used = adapter.name
        ctx = RecordContext(file=str(file), index=index, cfg=cfg, base_dir=Path(file).parent,
                            dataset=_default_dataset(file))
        return adapter.to_row(record, ctx)
    except InputError as exc:
        return invalid_row(file, index, _raw_text(payload, cfg.raw_keep_chars), exc.kind, cfg, used, exc.detail)
    except Exception as exc:  # an input shape no adapter anticipated: still exactly one row, with the reason
        kind = f"adapter_error:{type(exc).__name__}"
        return invalid_row(file, index, _raw_text(payload, cfg.raw_keep_chars) or repr(exc), kind, cfg, used)


def _default_dataset(file: str) -> str:
    path = Path(file)
    if sources.is_hf_dataset_dir(path.parent):  # HF arrow shards are named data-0000x-of-...
        return path.parent.name
    return path.stem


def invalid_row(
    file: str, index: int, raw: str, kind: str, cfg: IngestConfig, fmt: str = UNKNOWN_FORMAT, detail: str = ""
) -> dict[str, Any]:
    """The row of an unusable record: its error kind, what exactly is wrong, and (truncated) raw text."""
    raw = raw.encode("utf-8", "replace").decode("utf-8")[: cfg.raw_keep_chars]
    row = S.empty_row()
    row.update(
        {
            S.SAMPLE_ID: S.invalid_sample_id(file, index, raw),
            S.SOURCE: {S.SRC_DATASET: _default_dataset(file), S.SRC_FILE: str(file), S.SRC_INDEX: index,
                       S.SRC_FORMAT: fmt},
            S.DISCIPLINE: "unknown",
            S.IMAGES: [],
            S.TURNS: [],
            S.INPUT_ERROR: kind,
            S.INPUT_DETAIL: detail[:2000] or None,
            S.RAW: raw,
        }
    )
    return row


KNOWN = "already_curated"  # a read task's verdict: OUT already holds this record (pipeline.ledger)


def task_flags(task: ReadTask) -> dict[int, dict[str, Any]]:
    """Dedup/contamination verdicts attached to a task by the driver: record index -> columns."""
    if not task.flags:
        return {}
    return {int(k): v for k, v in json.loads(task.flags).items()}


def read_task(task: ReadTask | dict, cfg: IngestConfig) -> list[dict[str, Any]]:
    """Read one task's records and turn each into a canonical row (valid or invalid); rows of
    records the dedup pass flagged carry their verdict columns."""
    if isinstance(task, dict):
        task = ReadTask(**task)
    flags = task_flags(task)
    rows = []
    for index, payload in sources.task_payloads(task):
        row = parse_payload(payload, task.file, index, cfg, task.format, task.forced)
        verdict = flags.get(index)
        if verdict and verdict.get(KNOWN):  # OUT holds this record's row already (pipeline.ledger)
            continue
        if verdict and not row[S.INPUT_ERROR]:
            row[S.DUPLICATE_OF] = verdict.get(S.DUPLICATE_OF)
            row[S.CONTAMINATED_BY] = verdict.get(S.CONTAMINATED_BY) or None
        rows.append(row)
    return rows


def task_items(tasks: list[ReadTask]) -> list[dict[str, Any]]:
    """Tasks as plain dicts for ray.data.from_items."""
    return [asdict(t) for t in tasks]


@dataclass(kw_only=True)
class IngestStage(Stage):
    """Read tasks (rows of :func:`task_items`) -> canonical rows, valid or invalid. In a run, the
    first part of the replay actor (pipeline.run.curation_stages)."""

    name = "ingest"
    recorded = False  # the run's metrics time the curation stages; its rows are the input records
    cfg: IngestConfig

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [row for task in rows for row in read_task(task, self.cfg)]
