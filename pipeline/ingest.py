"""Ingest: input files -> canonical sample rows (schemas.sample), one row per input record.

The driver only plans: it scans each JSONL file once for line offsets and emits small read
tasks (file, byte offset, first record index, record count). Workers read their slice and
parse it, so the driver never holds the corpus. A record that cannot be parsed still becomes
exactly one row, with ``input_error`` set to a machine-readable kind and its raw text kept.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.config import IngestConfig
from pipeline.formats import native as N
from schemas import sample as S

JSONL_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class ReadTask:
    """A contiguous slice of one JSONL file: ``count`` non-blank lines starting at ``offset``."""

    file: str
    offset: int
    first_index: int
    count: int


class InputError(ValueError):
    """A record is unusable; ``kind`` becomes ``invalid_input:<kind>`` in the route reasons."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def discover_inputs(inputs: list[Path]) -> list[Path]:
    """Expand directories to the JSONL files below them (sorted); check that every path exists."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in JSONL_SUFFIXES)
            found = [f for f in found if f.name != "labels.jsonl"]  # evaluation labels are never input
            if not found:
                raise FileNotFoundError(f"{p} holds no {'/'.join(JSONL_SUFFIXES)} files; point INPUT at a corpus")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist; pass a JSONL file or a directory of them")
    return files


def plan_read_tasks(files: list[Path], records_per_task: int, limit: int | None = None) -> list[ReadTask]:
    """Scan files (streaming, O(1) memory per line) into read tasks; ``limit`` caps the records."""
    tasks: list[ReadTask] = []
    total = 0
    for f in files:
        index = 0
        start_offset = None
        start_index = 0
        count = 0
        offset = 0
        with open(f, "rb") as fh:
            for line in fh:
                if limit is not None and total >= limit:
                    break
                if line.strip():
                    if count == 0:
                        start_offset, start_index = offset, index
                    count += 1
                    index += 1
                    total += 1
                    if count == records_per_task:
                        tasks.append(ReadTask(str(f), start_offset, start_index, count))
                        count = 0
                offset += len(line)
        if count:
            tasks.append(ReadTask(str(f), start_offset, start_index, count))
        if limit is not None and total >= limit:
            break
    return tasks


def read_task(task: ReadTask | dict, cfg: IngestConfig) -> list[dict[str, Any]]:
    """Read one task's records and turn each into a canonical row (valid or invalid)."""
    if isinstance(task, dict):
        task = ReadTask(**task)
    rows = []
    with open(task.file, "rb") as fh:
        fh.seek(task.offset)
        index = task.first_index
        while len(rows) < task.count:
            line = fh.readline()
            if not line:  # the file shrank since planning: the missing records are still reported
                rows.append(_invalid_row(task.file, index, b"", "truncated_file", cfg))
                index += 1
                continue
            if not line.strip():
                continue
            rows.append(parse_line(line, task.file, index, cfg))
            index += 1
    return rows


def parse_line(line: bytes, file: str, index: int, cfg: IngestConfig) -> dict[str, Any]:
    """One JSONL line -> one canonical row. Never raises for bad data."""
    try:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("non_utf8", str(exc)) from exc
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError("malformed_json", str(exc)) from exc
        return native_record_to_row(record, Path(file), index, cfg)
    except InputError as exc:
        return _invalid_row(file, index, line, exc.kind, cfg)


def _invalid_row(file: str, index: int, line: bytes, kind: str, cfg: IngestConfig) -> dict[str, Any]:
    raw = line.decode("utf-8", "replace").rstrip("\r\n")
    row = S.empty_row()
    row.update(
        {
            S.SAMPLE_ID: S.invalid_sample_id(file, index, raw),
            S.SOURCE: _source(file, index, Path(file).stem),
            S.DISCIPLINE: "unknown",
            S.IMAGES: [],
            S.TURNS: [],
            S.INPUT_ERROR: kind,
            S.RAW: raw[: cfg.raw_keep_chars],
        }
    )
    return row


def _source(file: str, index: int, dataset: str) -> dict[str, Any]:
    return {S.SRC_DATASET: dataset, S.SRC_FILE: str(file), S.SRC_INDEX: index, S.SRC_FORMAT: "native"}


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InputError(f"missing_field:{field}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InputError("wrong_type", f"{field} must be a string, got {type(value).__name__}")
    return str(value)


def load_image(path: Path, cfg: IngestConfig) -> dict[str, Any]:
    """Read and check one image file -> IMAGE_TYPE dict; decompression bombs never get decoded."""
    if not path.is_file():
        raise InputError("missing_image", str(path))
    if path.stat().st_size > cfg.max_image_bytes:
        raise InputError("image_too_large", f"{path} is {path.stat().st_size} bytes")
    data = path.read_bytes()
    return image_from_bytes(data, path.name, cfg)


def image_from_bytes(data: bytes, name: str, cfg: IngestConfig, path: str | None = None) -> dict[str, Any]:
    """Check encoded image bytes (header size before decoding, then integrity) -> IMAGE_TYPE dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size  # header only: nothing decoded yet
                if width * height > cfg.max_image_pixels:
                    raise InputError("decompression_bomb", f"{name} is {width}x{height}")
                im.verify()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise InputError("corrupt_image", f"{name}: {exc}") from exc
    return S.image_record(name, data, width, height, path)


def native_record_to_row(record: Any, file: Path, index: int, cfg: IngestConfig) -> dict[str, Any]:
    """A parsed native record -> canonical row; raises InputError for unusable records."""
    if not isinstance(record, dict):
        raise InputError("not_an_object", f"got {type(record).__name__}")
    base = file.parent
    question = _text(record.get(N.KEY_QUESTION), N.KEY_QUESTION, required=True)
    discipline = _text(record.get(N.KEY_DISCIPLINE), N.KEY_DISCIPLINE) or "unknown"
    discipline = discipline.strip().lower()
    if discipline not in S.DISCIPLINES:
        discipline = "unknown"
    image_paths = record.get(N.KEY_IMAGES) or []
    if not isinstance(image_paths, list) or not all(isinstance(p, str) for p in image_paths):
        raise InputError("wrong_type", "images must be a list of paths")
    images = [{**load_image(base / p, cfg), S.IMG_PATH: p} for p in image_paths]
    raw_turns = record.get(N.KEY_TURNS)
    if not isinstance(raw_turns, list):
        raise InputError("wrong_type" if raw_turns is not None else "empty_trajectory", "turns must be a list")
    if not raw_turns:
        raise InputError("empty_trajectory")
    turns = []
    for t in raw_turns:
        if not isinstance(t, dict):
            raise InputError("wrong_type", "each turn must be an object")
        obs = t.get(N.KEY_OBSERVATION) or {}
        if not isinstance(obs, dict):
            raise InputError("wrong_type", "observation must be an object")
        obs_paths = obs.get(N.KEY_OBS_IMAGES) or []
        if not isinstance(obs_paths, list) or not all(isinstance(p, str) for p in obs_paths):
            raise InputError("wrong_type", "observation images must be a list of paths")
        turns.append(
            {
                S.TURN_REASONING: _text(t.get(N.KEY_REASONING), N.KEY_REASONING) or "",
                S.TURN_CODE: _text(t.get(N.KEY_CODE), N.KEY_CODE),
                S.TURN_OBS_TEXT: _text(obs.get(N.KEY_OBS_TEXT), N.KEY_OBS_TEXT),
                S.TURN_OBS_IMAGES: [load_image(base / p, cfg) for p in obs_paths],
            }
        )
    final_answer = _text(record.get(N.KEY_FINAL_ANSWER), N.KEY_FINAL_ANSWER)
    ground_truth = _text(record.get(N.KEY_ANSWER), N.KEY_ANSWER)
    dataset = _text(record.get(N.KEY_DATASET), N.KEY_DATASET) or file.stem
    row = S.empty_row()
    row.update(
        {
            S.SAMPLE_ID: S.compute_sample_id(
                question, [i[S.IMG_SHA256] for i in images], turns, final_answer
            ),
            S.SOURCE: _source(str(file), index, dataset),
            S.DISCIPLINE: discipline,
            S.QUESTION: question,
            S.GROUND_TRUTH: ground_truth,
            S.IMAGES: images,
            S.TURNS: turns,
            S.FINAL_ANSWER: final_answer,
        }
    )
    return row


def ingest_batch(batch: dict[str, Any], cfg: IngestConfig) -> Iterator[Any]:
    """Ray Data map_batches fn: a batch of ReadTask dicts -> canonical tables."""
    n = len(batch["file"])
    for i in range(n):
        task = ReadTask(**{k: _scalar(batch[k][i]) for k in asdict(ReadTask("", 0, 0, 0))})
        yield S.to_table(read_task(task, cfg))


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
