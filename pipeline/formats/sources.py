"""Input sources: find the input files, cut them into small read tasks, read one task's records.

Supported sources (a directory may hold any mix of them; found recursively, sorted by path):
  * JSONL (``.jsonl``, ``.ndjson``): one record per non-blank line. A ``.json`` file holding
    several top-level objects one after the other is read the same way.
  * JSON (``.json``): one top-level array of records, or a single record object.
  * Parquet (``.parquet``): one record per row.
  * Hugging Face datasets written with ``save_to_disk``: a folder holding ``dataset_info.json``
    and ``state.json``; its Arrow files (``state.json``'s ``_data_files``) hold one record per
    row. A ``DatasetDict`` folder (``dataset_dict.json``) holds one such folder per split.

  * VisualSketchpad output folders: a folder holding ``output.json`` beside one of
    ``request.json``, ``ex.json``, ``example.json`` or ``usage_summary.json`` is ONE record (given
    directly, as its ``output.json``, or found while walking a parent); the record is
    ``{SKETCHPAD_KEY: {"task": <parent folder name>, "output": ..., "request": ..., "ex": ...,
    "example": ...}}`` (see pipeline.formats.visualsketchpad).

Binary files are never deserialised. A file given as input whose first bytes are a binary
signature (pickle, zip: also PyTorch ``.pt`` / numpy ``.npz``, gzip, bz2, xz, zstd, zlib as
joblib compresses, numpy ``.npy``, HDF5, images, PDF, SQLite, ELF, Parquet/Arrow under another
suffix...), or, for a file without a known input suffix, whose head is not UTF-8 text, is ONE
record that becomes ``invalid_input:binary_file:<what>`` (:func:`sniff_binary`); only its magic
bytes are read.

The driver only plans: it streams through each JSONL/JSON file once to find record boundaries
(byte offsets) and reads only the metadata of Parquet/Arrow files, then emits tasks of at most
``records_per_task`` records ((file, byte range) or (file, row range)). Workers read their slice;
nothing holds a whole corpus. A file that cannot be opened at all counts as one record, which
becomes one ``invalid_input:unreadable_file`` row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
HF_MARKERS = ("dataset_info.json", "state.json")
# files that sit next to inputs but are never records
NOT_INPUTS = ("labels.jsonl", "dataset_info.json", "state.json", "dataset_dict.json")

KIND_JSONL, KIND_PARQUET, KIND_ARROW, KIND_UNREADABLE = "jsonl", "parquet", "arrow", "unreadable"
KIND_JSON, KIND_JSON_VALUES = "json", "json_values"  # a top-level array / values one after another
KIND_SKETCHPAD, KIND_BINARY = "sketchpad_folder", "binary"
SKETCHPAD_KEY = "visualsketchpad_folder"
SKETCHPAD_OUTPUT = "output.json"
SKETCHPAD_SIDECARS = ("request.json", "ex.json", "example.json", "usage_summary.json")
_CHUNK = 1 << 20


class BinaryInput(Exception):
    """The payload of a binary input file: ``what`` it is (from its magic bytes)."""

    def __init__(self, what: str, file: str):
        super().__init__(
            f"{file} is a binary file ({what}), not JSON/JSONL/Parquet records; it was not opened "
            "(pickles and other serialisations can run code when loaded): convert it to JSONL or Parquet"
        )
        self.what = what


# (offset, signature, what) - the first match names the file; checked on the first 512 bytes
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bz2"),
    (0, b"\xfd7zXZ\x00", "xz"), (0, b"\x28\xb5\x2f\xfd", "zstd"), (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"), (0, b"Rar!\x1a\x07", "rar"), (257, b"ustar", "tar"),
    (0, b"\x93NUMPY", "npy"), (0, b"\x89HDF\r\n\x1a\n", "hdf5"), (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"), (0, b"GIF87a", "gif"), (0, b"GIF89a", "gif"), (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"), (0, b"%PDF", "pdf"), (0, b"SQLite format 3\x00", "sqlite"), (0, b"\x7fELF", "elf"),
    (0, b"PAR1", "parquet"), (0, b"ARROW1", "arrow"), (0, b"\x00asm", "wasm"),
)
_PICKLE_TEXT = re.compile(rb"^(c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n|\((dp|lp|tp)\d*\n)")


def sniff_binary(path: Path, text_suffix: bool = True) -> str | None:
    """What a binary input file is (``pickle``, ``zip``, ``gzip``, ``png``, ...) from its magic
    bytes, or None for a text file. Only the first and last bytes are read; nothing is decoded.
    Pickles: protocol 2+ (``\\x80`` + protocol byte) or protocol 0/1 opcodes at the start, and the
    STOP opcode ``.`` as the last byte. ``text_suffix=False`` (a file without a known input
    suffix) also calls a head that is not UTF-8 text, or holds NUL bytes, ``data``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(512)
            fh.seek(max(0, size - 1))
            last = fh.read(1)
    except OSError:
        return None
    for offset, sig, what in _MAGIC:
        if head[offset : offset + len(sig)] == sig:
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if last == b"." and ((head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
                         or _PICKLE_TEXT.match(head) or head[:2] in (b"}q", b"]q", b"(d", b"(l")):
        return "pickle"
    if head[:2] in (b"x\x01", b"x\x5e", b"x\x9c", b"x\xda") and size > 2 and not text_suffix:
        return "zlib"
    if not text_suffix and head:
        if b"\x00" in head:
            return "data"
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the 512-byte boundary
                return "data"
    return None


@dataclass(frozen=True)
class ReadTask:
    """``count`` records of one file starting at record ``first_index``. For JSONL/JSON
    ``offset``..``end`` is the byte range holding them; for Parquet/Arrow ``offset`` is the first
    row. ``format`` is the adapter detected for the file ('' = none), ``forced`` means every
    record goes through it. ``flags`` carries dedup/contamination verdicts (JSON, see
    pipeline.stages.dedup); ``note`` why an unreadable file could not be opened."""

    file: str
    offset: int
    first_index: int
    count: int
    kind: str = KIND_JSONL
    end: int = -1
    format: str = ""
    forced: bool = False
    flags: str = ""
    note: str = ""


# --- discovery -----------------------------------------------------------------------------
def is_hf_dataset_dir(path: Path) -> bool:
    return all((path / m).is_file() for m in HF_MARKERS)


def hf_data_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in the order state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [f["filename"] for f in state.get("_data_files", [])]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    files = [folder / n for n in names if (folder / n).is_file()]
    return files or sorted(folder.glob("*.arrow"))


def source_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return KIND_JSONL
    if suffix in JSON_SUFFIXES:
        return KIND_JSON
    if suffix in PARQUET_SUFFIXES:
        return KIND_PARQUET
    if suffix in ARROW_SUFFIXES:
        return KIND_ARROW
    return None


def is_sketchpad_dir(path: Path) -> bool:
    """A VisualSketchpad output folder: ``output.json`` beside one of its sidecar files."""
    return (path / SKETCHPAD_OUTPUT).is_file() and any((path / s).is_file() for s in SKETCHPAD_SIDECARS)


def _walk(folder: Path) -> list[Path]:
    if is_hf_dataset_dir(folder):
        return hf_data_files(folder)
    if is_sketchpad_dir(folder):
        return [folder / SKETCHPAD_OUTPUT]
    found: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):  # hidden files and folders (markers, caches) are never input
            continue
        if child.is_dir():
            found.extend(_walk(child))
        elif child.is_file() and child.name not in NOT_INPUTS and source_kind(child) not in (None, KIND_ARROW):
            found.append(child)
    return found


def discover_inputs(inputs: list[Path]) -> list[Path]:
    """Expand directories (and HF ``save_to_disk`` folders) to their input files; check that
    every path exists."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = _walk(p)
            if not found:
                raise FileNotFoundError(
                    f"{p} holds no input files (.jsonl, .json, .parquet or a Hugging Face save_to_disk "
                    "folder); point INPUT at a corpus"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist; pass a file or a folder of input files")
    return files


# --- JSON scanning -------------------------------------------------------------------------
_SPECIAL = re.compile(rb'["\\\[\]{},]')
_NONSPACE = re.compile(rb"\S")
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN, _CLOSE_ARRAY, _CLOSE = (ord("{"), ord("[")), ord("]"), (ord("}"), ord("]"))


def scan_json_values(fh: Any, start: int, depth0: int, stop: int = -1) -> Iterator[tuple[int, int]]:
    """Byte ranges of the values at nesting depth ``depth0``, streaming from ``start`` to
    ``stop`` (-1: end of file) in 1 MB chunks.

    depth0 = 1: the elements of an array whose ``[`` precedes ``start``; a range runs from just
    after the previous ``,`` to the next ``,`` (or the closing ``]``). depth0 = 0: top-level
    values one after another; a range ends right after each value's closing bracket (or at a
    top-level ``,``). Ranges may carry surrounding whitespace (JSON parsers ignore it) and
    whitespace-only ranges are skipped. A value cut off by the end of the file is still yielded
    (it will fail to parse), and stray text is part of the next range, so no byte that could be
    a record is silently dropped."""
    fh.seek(start)
    pos = start
    depth, in_string, skip_at = depth0, False, -1
    seg_start, nonempty = start, False
    while True:
        size = _CHUNK if stop < 0 else min(_CHUNK, stop - pos)
        chunk = fh.read(size) if size > 0 else b""
        if not chunk:
            break
        prev = 0
        for m in _SPECIAL.finditer(chunk):
            i = m.start()
            at = pos + i
            ch = chunk[i]
            if at == skip_at:
                prev = i + 1
                continue
            if in_string:
                if ch == _BACKSLASH:
                    skip_at = at + 1
                elif ch == _QUOTE:
                    in_string = False
                prev = i + 1
                continue
            if depth == depth0 and not nonempty and _NONSPACE.search(chunk, prev, i):
                nonempty = True
            prev = i + 1
            if ch == _QUOTE:
                in_string = True
                nonempty = True
            elif ch in _OPEN:
                depth += 1
                nonempty = True
            elif ch in _CLOSE:
                if depth > depth0:
                    depth -= 1
                    if depth0 == 0 and depth == 0:
                        yield seg_start, at + 1
                        seg_start, nonempty = at + 1, False
                elif depth0 == 1 and ch == _CLOSE_ARRAY:  # the end of the array
                    if nonempty:
                        yield seg_start, at
                    return
                else:  # a stray closing bracket: part of a (broken) record
                    nonempty = True
            elif ch == _COMMA and depth == depth0:
                if nonempty:
                    yield seg_start, at
                seg_start, nonempty = at + 1, False
        if depth == depth0 and not in_string and not nonempty and _NONSPACE.search(chunk, prev):
            nonempty = True
        pos += len(chunk)
    if nonempty:
        yield seg_start, pos


def json_layout(path: Path) -> tuple[str, int]:
    """How a .json file holds its records: ('array', offset just after its '[') or ('values', 0):
    top-level values one after another (usually a single object)."""
    with open(path, "rb") as fh:
        offset = 0
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                return "values", 0
            m = _NONSPACE.search(chunk)
            if m:
                return ("array", offset + m.start() + 1) if chunk[m.start()] == ord("[") else ("values", 0)
            offset += len(chunk)


def _json_ranges(path: Path, kind: str, start: int, limit: int | None) -> Iterator[tuple[int, int]]:
    with open(path, "rb") as fh:
        for n, rng in enumerate(scan_json_values(fh, start, 1 if kind == KIND_JSON else 0)):
            if limit is not None and n >= limit:
                return
            yield rng


# --- planning ------------------------------------------------------------------------------
def _tasks_from_ranges(
    file: str, kind: str, ranges: Iterator[tuple[int, int]], per_task: int
) -> Iterator[ReadTask]:
    batch_start, batch_index, count, last_end = -1, 0, 0, -1
    for index, (start, end) in enumerate(ranges):
        if count == 0:
            batch_start, batch_index = start, index
        count += 1
        last_end = end
        if count == per_task:
            yield ReadTask(file, batch_start, batch_index, count, kind, last_end)
            count = 0
    if count:
        yield ReadTask(file, batch_start, batch_index, count, kind, last_end)


def _jsonl_ranges(path: Path, limit: int | None) -> Iterator[tuple[int, int]]:
    offset, n = 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            if limit is not None and n >= limit:
                return
            if line.strip():
                yield offset, offset + len(line)
                n += 1
            offset += len(line)


def row_count(path: Path, kind: str) -> int:
    if kind == KIND_PARQUET:
        return pq.ParquetFile(path).metadata.num_rows
    return open_arrow(path).num_rows


def _row_group_bounds(path: Path) -> list[tuple[int, int]]:
    meta = pq.ParquetFile(path).metadata
    out, start = [], 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        out.append((start, start + n))
        start += n
    return out


def plan_file(path: Path, per_task: int, limit: int | None) -> Iterator[ReadTask]:
    """Read tasks for one file (at most ``limit`` records), produced lazily while scanning it.
    A file that cannot be opened or scanned yields one ``unreadable`` task for what is left."""
    kind = source_kind(path) or KIND_JSONL
    file = str(path)
    produced = 0
    if path.name == SKETCHPAD_OUTPUT and is_sketchpad_dir(path.parent):
        if limit is None or limit > 0:
            yield ReadTask(file, 0, 0, 1, KIND_SKETCHPAD)
        return
    if kind != KIND_ARROW:
        what = sniff_binary(path, text_suffix=source_kind(path) is not None)
        if what is not None and not (what == "parquet" and kind == KIND_PARQUET):
            if limit is None or limit > 0:
                yield ReadTask(file, 0, 0, 1, KIND_BINARY, note=what)
            return
    try:
        if kind == KIND_JSON:
            layout, start = json_layout(path)
            if layout == "values" and _looks_like_jsonl(path):
                kind, ranges = KIND_JSONL, _jsonl_ranges(path, limit)
            else:
                kind = KIND_JSON if layout == "array" else KIND_JSON_VALUES
                ranges = _json_ranges(path, kind, start, limit)
        elif kind == KIND_JSONL:
            ranges = _jsonl_ranges(path, limit)
        else:
            ranges = None
        if ranges is not None:
            for task in _tasks_from_ranges(file, kind, ranges, per_task):
                produced += task.count
                yield task
            return
        bounds = _row_group_bounds(path) if kind == KIND_PARQUET else [(0, row_count(path, kind))]
        for lo, hi in bounds:  # a task never straddles a row group (one row group read per task)
            for s in range(lo, hi, per_task):
                n = min(per_task, hi - s)
                if limit is not None:
                    n = min(n, limit - produced)
                if n <= 0:
                    return
                produced += n
                yield ReadTask(file, s, s, n, kind)
    except (OSError, pa.ArrowException, ValueError) as exc:
        if limit is None or produced < limit:
            yield ReadTask(file, 0, produced, 1, KIND_UNREADABLE, note=f"{type(exc).__name__}: {exc}"[:500])


def _looks_like_jsonl(path: Path) -> bool:
    """A .json file whose first line is a complete JSON object (JSONL saved as .json)."""
    with open(path, "rb") as fh:
        first = fh.readline(_CHUNK).strip()
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, UnicodeDecodeError):
        return False


# --- reading -------------------------------------------------------------------------------
_ARROW_CACHE: dict[str, tuple[float, pa.Table]] = {}
_PARQUET_CACHE: dict[str, tuple[float, int, pa.Table]] = {}


def open_arrow(path: Path | str) -> pa.Table:
    """An Arrow IPC file or stream (HF ``save_to_disk`` writes streams), memory-mapped: slicing
    it reads only the rows asked for. One table per worker process is cached."""
    path = str(path)
    mtime = Path(path).stat().st_mtime
    hit = _ARROW_CACHE.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    source = pa.memory_map(path)
    try:
        table = pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(path)
        table = pa.ipc.open_stream(source).read_all()
    _ARROW_CACHE.clear()
    _ARROW_CACHE[path] = (mtime, table)
    return table


def _parquet_rows(path: str, first: int, count: int) -> pa.Table:
    """Rows ``first``..``first+count`` of a Parquet file, reading only their row group; the
    last row group read is cached per worker process (consecutive tasks share it)."""
    mtime = Path(path).stat().st_mtime
    hit = _PARQUET_CACHE.get(path)
    bounds = _row_group_bounds(Path(path))
    group = next(g for g, (lo, hi) in enumerate(bounds) if lo <= first < hi)
    if not (hit and hit[0] == mtime and hit[1] == group):
        table = pq.ParquetFile(path).read_row_group(group)
        _PARQUET_CACHE.clear()
        _PARQUET_CACHE[path] = (mtime, group, table)
    else:
        table = hit[2]
    if first + count >= bounds[group][1]:  # the row group's last task: let it go
        _PARQUET_CACHE.clear()
    return table.slice(first - bounds[group][0], count)


def task_payloads(task: ReadTask) -> Iterator[tuple[int, bytes | dict[str, Any] | Exception]]:
    """(record index, payload) for each record of a task: raw JSON bytes for JSONL/JSON, a dict
    for a Parquet/Arrow row, or the exception that made the record unreadable. Always yields
    exactly ``task.count`` items."""
    index = task.first_index
    produced = 0
    try:
        if task.kind == KIND_UNREADABLE:
            raise OSError(task.note or "the file cannot be read")
        if task.kind == KIND_BINARY:
            yield index, BinaryInput(task.note or "data", task.file)
            return
        if task.kind == KIND_SKETCHPAD:
            yield index, sketchpad_record(Path(task.file))
            return
        if task.kind == KIND_JSONL:
            with open(task.file, "rb") as fh:
                fh.seek(task.offset)
                while produced < task.count:
                    line = fh.readline()
                    if not line:
                        break
                    if line.strip():
                        yield index, line.rstrip(b"\r\n")
                        index += 1
                        produced += 1
        elif task.kind in (KIND_JSON, KIND_JSON_VALUES):
            with open(task.file, "rb") as fh:
                depth0 = 1 if task.kind == KIND_JSON else 0
                ranges = list(scan_json_values(fh, task.offset, depth0, task.end))[: task.count]
                for start, end in ranges:
                    fh.seek(start)
                    yield index, fh.read(end - start)
                    index += 1
                    produced += 1
        else:
            table = (
                _parquet_rows(task.file, task.offset, task.count)
                if task.kind == KIND_PARQUET
                else open_arrow(task.file).slice(task.offset, task.count)
            )
            for k in range(table.num_rows):
                if produced >= task.count:
                    break
                try:
                    row: bytes | dict[str, Any] | Exception = table.slice(k, 1).to_pylist()[0]
                except Exception as exc:  # e.g. invalid UTF-8 inside a string column
                    row = exc
                yield index, row
                index += 1
                produced += 1
    except Exception as exc:  # the file vanished or broke since planning: report every record
        while produced < task.count:
            yield index, exc
            index += 1
            produced += 1
        return
    while produced < task.count:  # the file shrank since planning
        yield index, EOFError("the file ended before this record (it changed since planning)")
        index += 1
        produced += 1


def sketchpad_record(output: Path) -> bytes | dict[str, Any]:
    """The record of a VisualSketchpad folder (see the module docstring); the raw bytes of
    ``output.json`` when it is not valid JSON (so it fails as malformed_json)."""
    raw = output.read_bytes()
    try:
        messages = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    folder = output.parent
    record: dict[str, Any] = {"task": folder.parent.name, "output": messages}
    for side in ("request.json", "ex.json", "example.json"):
        try:
            record[side.removesuffix(".json")] = json.loads((folder / side).read_bytes())
        except (OSError, ValueError, RecursionError):
            record[side.removesuffix(".json")] = None
    return {SKETCHPAD_KEY: record}


def sample_payloads(path: Path, n: int) -> list[bytes | dict[str, Any] | Exception]:
    """The first ``n`` records of a file (for format detection)."""
    out: list[bytes | dict[str, Any] | Exception] = []
    for task in plan_file(path, n, n):
        out.extend(p for _, p in task_payloads(task))
    _ARROW_CACHE.clear()  # the driver keeps no table after detection
    _PARQUET_CACHE.clear()
    return out[:n]
