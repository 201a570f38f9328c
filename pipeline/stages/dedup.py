"""Dedup and decontamination: which records duplicate another, which share an (image, question)
with others (best-of-N groups, pipeline.stages.best_of_n), which overlap a benchmark.

Keys. One key row per valid record that has a trajectory: ``sample_id`` (content hash),
``qkey`` (hash of the normalised question: lower-cased, tags such as ``<image>`` dropped, runs
of non-alphanumerics read as one space), and of its first input image (null without images):
``isha`` (sha256 of the bytes), ``phash`` (64-bit DCT perceptual hash), ``aspect`` (width /
height) and ``detail`` (the image in grey, at most ``DETAIL_SIDE`` = 512 px on its long side,
never enlarged, binary PGM); and where it sits (``file``, ``idx``). The key rows go to Parquet;
DuckDB groups them out of core (a database file in the run's work dir, spilling beyond its
memory limit), so neither the driver nor any worker holds the corpus; the heavy ``detail``
column is only read for pHash candidates.

Two passes, no image decoded twice for dedup (pipeline.dedup_pass wires them):
  * pre-pass, light (:class:`KeysStage`, Ray Data): parses every record as ingest does (the
    image bytes are read and sha256-hashed, as ``sample_id`` needs) but decodes no image; its
    keys have null ``phash`` / ``aspect`` / ``detail``. Only the exact duplicates are decided
    here, so they are known before replay: they are neither replayed nor judged (replay status
    ``not_run``, null scores "not judged: exact duplicate of <id>"), and their rows are still
    written, rejected as ``duplicate_of:<kept id>``.
  * main pass (:func:`write_block_keys`, in the judge stage): beside each block it judges, the
    stage writes the full keys of the block's records that are not exact duplicates to one
    Parquet file, named by the records so a retried block overwrites. The first image is decoded
    once for the whole pass: the keys are computed from the grey pixels the replay sandbox
    handed over (``S.INPUT_GREYS``) or, without them, from the visual-gain judge's decode
    (ingest used to decode it a second time for the keys alone: ~36 s of CPU on 480 records;
    the judge's cache of recent inputs alone re-decoded every image a block held beyond its
    size: 3x the judges' CPU with 8-record read tasks). After each window
    :func:`compact_keys` merges the files. After routing, :func:`post_verdicts` finds the
    (image, question) groups and the benchmark overlap from these keys, and pipeline.stages.best_of_n
    applies them to the staged shards. A contaminated record is therefore replayed and judged
    like any other, then rejected with ``contaminated:<name>`` (routed again) before best-of-N
    ranks the groups; its exact duplicates (same sample_id) get the same reason.

Cost (the key computation). ``sample_id`` needs the sha256 of the image bytes, never a decode.
pHash + detail need the image in 8-bit grey (the decode the visual-gain judge makes anyway;
JPEG is not decoded at a reduced scale, so corpus and benchmark keys come from the same pixels),
reduced by an integer factor (``Image.reduce``, box) to >= 2x the detail
size, then Lanczos-resampled; the pHash's DCT works on the 32x32 thumbnail of that. The detail
image is stored as PGM (no compression step; Parquet compresses the column). Measured on the
bundled corpus's 42 first images of 2200-3400 px (CPU time): the decode alone ~80 ms, the whole
key ~110 ms; the pre-pass per record ~2 ms (parse and sha256 only).

Same image, at the detail that matters. Two first images are the same image when their bytes are
identical, or when (a) their pHashes lie within ``image_hamming`` bits (candidates come from
banding: the hash is cut into ``image_hamming + 1`` bands, and two hashes within that distance
share a band exactly, by pigeonhole), (b) their aspect ratios differ by at most 3 %, and (c) their
detail images match tile by tile: the larger is resampled (area) to the smaller's size, so a
1/3 downscale is compared at its own resolution; both are blurred (Gaussian, sigma 1 px) to
absorb resampling and JPEG ringing; the score is the largest mean absolute grey difference over
any 8x8 px window (sliding), which must be at most ``image_max_tile_diff`` (default 5). A
thumbnail comparison cannot do this: a tiny label — what TwI zooms for — vanishes at 32x32.
Measured on drawn pages and matplotlib plots (tests/test_dedup.py prints the table): JPEG
re-encodes (q75-85), 1/3 downscales and both combined score <= 3.6; one changed glyph of a 7 pt
label on an 800x600 plot scores >= 8.4; a changed 14 px label on a 640x480 page >= 17.

Verdicts (deterministic whatever the parallelism: only the order (file, idx) and content decide):
  * exact duplicate: same ``sample_id`` as a record earlier in (file, idx) order
    -> ``duplicate_of:<its sample_id>`` (identical content scores identically: there is nothing
    to choose, the earliest is kept and exact duplicates never enter a best-of-N group);
  * (image, question) group: records (exact duplicates excluded) with the same non-empty
    normalised question whose first images are the same image as above, or which both have no
    image. Several questions about one image are different samples; one question about two
    images that differ only by a small label too. Records with identical (question, image
    bytes) form one bucket; buckets are then merged greedily in (file, idx) order of their first
    record: each joins the first earlier leader it is near, else leads (so a chain a~b~c with
    a !~ c gives {a, b} and {c}), and identical copies cost one comparison. Groups of two or more
    members are written to ``groups.parquet`` (file, idx, sample_id, dedup_group = sample_id of
    the group's first record); they are NOT rejected here: every member is replayed, judged and
    routed, and pipeline.stages.best_of_n keeps the best N by score after routing, rejecting the others
    as ``duplicate_of:<kept id>``. A JPEG re-encode or downscale of a record asked the same
    question therefore lands in its group and competes on score (ties prefer the larger image);
  * contamination: the normalised question equals a benchmark question, or the first image is
    the same image as a benchmark image (pHash within ``benchmark_image_hamming`` bits, same
    aspect and detail test) -> ``contaminated:<benchmark name>`` (one reason per benchmark).

Only the flagged records come back to the driver: the exact duplicates ride along with their
read tasks into the main pass, where ingest fills ``duplicate_of`` and routing turns it into a
reason; the contaminated sample_ids (a small set) go to pipeline.stages.best_of_n.apply_contamination.
Group membership stays on disk (``groups.parquet``) until the best-of-N pass reads it.

Benchmark file (``--benchmark FILE``): JSONL, one ``{"name": ..., "question": ...?,
"image": ...?}`` per line; ``image`` is a path (relative to the file), base64 or a data URL.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import os
import re
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy.fft import dctn

from pipeline.config import DedupConfig, IngestConfig
from pipeline.formats.base import InputError, RecordContext, resolve_image
from pipeline.formats.sources import ReadTask
from pipeline.stage import Stage
from pipeline.stages.ingest import read_task
from pipeline.tools.shards import sql_str
from schemas import sample as S

KEY_SID, KEY_FILE, KEY_IDX, KEY_QKEY = "sample_id", "file", "idx", "qkey"
KEY_ISHA, KEY_PHASH, KEY_ASPECT, KEY_DETAIL = "isha", "phash", "aspect", "detail"
KEY_VALID = "valid"  # false: an invalid record or a prompt without trajectory, listed only for the run ledger
KEY_SCHEMA = pa.schema(
    [
        pa.field(KEY_SID, pa.string()),
        pa.field(KEY_FILE, pa.string()),
        pa.field(KEY_IDX, pa.int64()),
        pa.field(KEY_QKEY, pa.string()),
        pa.field(KEY_ISHA, pa.string()),
        pa.field(KEY_PHASH, pa.int64()),
        pa.field(KEY_ASPECT, pa.float64()),
        pa.field(KEY_DETAIL, pa.binary()),
        pa.field(KEY_VALID, pa.bool_()),
    ]
)
# groups.parquet: one row per member of an (image, question) group of two or more records
GROUP_SCHEMA = pa.schema(
    [
        pa.field(KEY_FILE, pa.string()),
        pa.field(KEY_IDX, pa.int64()),
        pa.field(KEY_SID, pa.string()),
        pa.field(S.DEDUP_GROUP, pa.string()),
    ]
)
GROUPS_FILE = "groups.parquet"
KEYS_DIR = "keys"  # main-pass key files (work dir)
PENDING_DIR = "pending"  # per-task key files of the window being ingested (under KEYS_DIR)
THUMB_SIDE = 32  # the pHash is computed on this thumbnail
DETAIL_SIDE = 512  # detail images: at most this many px on the long side
DETAIL_REDUCING_GAP = 2.0  # reduce() to >= 2x DETAIL_SIDE before Lanczos (1.5: up to 1.6 grey levels off)
DETAIL_BLUR_SIGMA = 1.0
DETAIL_WINDOW = 8  # px, sliding window of the local difference
MAX_ASPECT_RATIO_DIFF = 0.03
_TAG = re.compile(r"<[^<>\n]{1,40}>")


class BenchmarkError(ValueError):
    """The benchmark file cannot be used; the message says which line and how to fix it."""


# --- keys ----------------------------------------------------------------------------------
class ImageKeys(NamedTuple):
    phash: int  # signed int64
    aspect: float  # width / height
    detail: bytes  # binary PGM, grey, long side <= DETAIL_SIDE


def image_keys(data: bytes) -> ImageKeys:
    """Keys of encoded image bytes: one decode to 8-bit grey, then :func:`grey_keys`."""
    with Image.open(io.BytesIO(data)) as im:
        return grey_keys(np.asarray(im.convert("L")))


def grey_keys(grey: np.ndarray) -> ImageKeys:
    """Keys of an image already decoded to 8-bit grey (H x W uint8, as the visual-gain judge
    holds it): only small images from here (module doc, "Cost"). The pHash is the signs of the
    8x8 lowest frequencies of the 32x32 grey thumbnail's DCT relative to their median."""
    height, width = grey.shape
    small_grey = Image.fromarray(grey)
    # Image.reduce() by an integer factor (box average) down to >= 2x the target, then Lanczos
    small_grey.thumbnail((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.LANCZOS, reducing_gap=DETAIL_REDUCING_GAP)
    small = small_grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    low = dctn(np.asarray(small, dtype=np.float64), norm="ortho")[:8, :8].ravel()
    value = int("".join("1" if b else "0" for b in low > np.median(low)), 2)
    buf = io.BytesIO()
    small_grey.save(buf, format="PPM")  # binary PGM: a header and the raw bytes (Parquet compresses it)
    return ImageKeys(value - (1 << 64) if value >= 1 << 63 else value, width / max(height, 1), buf.getvalue())


def _grey(detail: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(detail)) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)


def detail_diff(a: bytes, b: bytes) -> float:
    """Largest mean absolute grey difference (0..255) over any DETAIL_WINDOW-px window of two
    detail images, compared at the smaller one's resolution after a light blur (module doc)."""
    x, y = _grey(a), _grey(b)
    if x.size > y.size:
        x, y = y, x
    if x.shape != y.shape:
        y = cv2.resize(y, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_AREA)
    x = cv2.GaussianBlur(x, (0, 0), DETAIL_BLUR_SIGMA)
    y = cv2.GaussianBlur(y, (0, 0), DETAIL_BLUR_SIGMA)
    local = cv2.blur(np.abs(x - y), (DETAIL_WINDOW, DETAIL_WINDOW), borderType=cv2.BORDER_REFLECT)
    return float(local.max())


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & ((1 << 64) - 1)).count("1")


def same_image(a: ImageKeys, b: ImageKeys, bits: int, max_diff: float | None) -> bool:
    """The 'same image' test of the module doc (identical bytes are checked before, by sha)."""
    if hamming(a.phash, b.phash) > bits:
        return False
    if abs(math.log(max(a.aspect, 1e-6) / max(b.aspect, 1e-6))) > math.log1p(MAX_ASPECT_RATIO_DIFF):
        return False
    return max_diff is None or detail_diff(a.detail, b.detail) <= max_diff


def normalize_question(text: str | None) -> str:
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", _TAG.sub(" ", text)).lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def question_key(text: str | None) -> str | None:
    norm = normalize_question(text)
    return hashlib.sha1(norm.encode("utf-8")).hexdigest()[:20] if norm else None


def key_row(
    row: dict[str, Any], images: bool = True, grey: Callable[[dict[str, Any]], np.ndarray] | None = None
) -> dict[str, Any] | None:
    """The key of one canonical row. None for invalid rows and for prompts without a trajectory:
    routing rejects those anyway, and a prompt must not make its own rollouts duplicates.
    ``images=False`` is the light key of the pre-pass: no image is decoded (``isha`` is the
    sha256 ingest computed anyway), ``phash`` / ``aspect`` / ``detail`` stay null. The first
    image's grey pixels come from the row itself when the replay handed them over
    (``S.input_grey``), else from ``grey`` (the judge stage passes its
    visual-gain judge's decode), else from decoding the bytes: the image is not decoded again
    for its keys, however many images the block holds."""
    if row.get(S.INPUT_ERROR) or not row.get(S.TURNS):
        return None
    first = (row.get(S.IMAGES) or [None])[0]
    isha, keys = None, None
    if first is not None:
        isha = first[S.IMG_SHA256] or hashlib.sha256(first[S.IMG_BYTES]).hexdigest()
        if images:
            handed = S.input_grey(row, 0)
            try:
                if handed is not None:
                    keys = grey_keys(handed)
                else:
                    keys = grey_keys(grey(first)) if grey else image_keys(first[S.IMG_BYTES])
            except Exception:  # ingest verified the bytes; a hash failure leaves identical bytes only
                keys = None
    return {
        KEY_SID: row[S.SAMPLE_ID],
        KEY_FILE: row[S.SOURCE][S.SRC_FILE],
        KEY_IDX: row[S.SOURCE][S.SRC_INDEX],
        KEY_QKEY: question_key(row.get(S.QUESTION)),
        KEY_ISHA: isha,
        KEY_PHASH: keys.phash if keys else None,
        KEY_ASPECT: keys.aspect if keys else None,
        KEY_DETAIL: keys.detail if keys else None,
        KEY_VALID: True,
    }


@dataclass(kw_only=True)
class KeysStage(Stage):
    """Ray stage (tasks) of the pre-pass: read tasks (rows of pipeline.stages.ingest.task_items) -> light
    key rows (KEY_SCHEMA, image columns null: the records are parsed, no image is decoded).
    Records that have no key (invalid, no trajectory) get a row with ``valid`` false: sample_id,
    file and index only, for the run ledger (pipeline.ledger); dedup ignores them."""

    name = "dedup_keys"
    recorded = False  # a pass before the curation stages, timed as a whole (manifest timings.dedup_s)
    cfg: IngestConfig

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = []
        for task in rows:
            for row in read_task(task, self.cfg):
                k = key_row(row, images=False)
                keys.append(k if k is not None else {
                    KEY_SID: row[S.SAMPLE_ID], KEY_FILE: row[S.SOURCE][S.SRC_FILE],
                    KEY_IDX: row[S.SOURCE][S.SRC_INDEX], KEY_VALID: False})
        return keys

    def to_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=KEY_SCHEMA)


def write_block_keys(
    rows: list[dict[str, Any]], keys_dir: str | Path, grey: Callable[[dict[str, Any]], np.ndarray] | None = None
) -> int:
    """Main pass, in the judge stage: the full key rows of a block's records that are not exact
    duplicates (first image decoded once, by the judge: ``grey``) to one Parquet file under
    ``keys_dir/pending``, written to a temporary name and renamed. The file is named by the
    records it holds, so a retried block overwrites its own keys instead of adding a copy."""
    keys = [k for r in rows if not r.get(S.DUPLICATE_OF) and (k := key_row(r, grey=grey)) is not None]
    if not keys:
        return 0
    name = hashlib.sha1("\x00".join(f"{k[KEY_FILE]}\x00{k[KEY_IDX]}" for k in keys).encode()).hexdigest()[:20]
    target = Path(keys_dir) / PENDING_DIR / f"{name}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}-{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(pa.Table.from_pylist(keys, schema=KEY_SCHEMA), tmp)
    os.replace(tmp, target)
    return len(keys)


def compact_keys(keys_dir: Path, name: str) -> None:
    """Merge the per-task key files of a finished window into ``keys_dir/<name>.parquet``, one row
    group at a time (the detail images make key rows ~40 KB: a whole window must never sit in
    memory; a DuckDB COPY under a 256 MB limit ran out of memory at 480 records), so the
    post-pass reads a few files instead of one per read task."""
    pending = Path(keys_dir) / PENDING_DIR
    files = sorted(pending.glob("*.parquet"))
    if not files:
        return
    target = Path(keys_dir) / f"{name}.parquet"
    schema = pq.read_schema(files[0])
    with pq.ParquetWriter(target, schema) as writer:
        for f in files:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(g).cast(schema))
    for f in files:
        f.unlink()


def key_files(keys_dir: Path) -> list[str]:
    """The compacted key files of a run (not the pending per-task ones)."""
    return sorted(str(p) for p in Path(keys_dir).glob("*.parquet"))


# --- benchmark -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkItem:
    name: str
    qkey: str | None
    image: ImageKeys | None = None


def load_benchmark(path: Path, cfg: IngestConfig) -> list[BenchmarkItem]:
    """Read a benchmark JSONL file (see module docstring); BenchmarkError on unusable lines."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file {path} does not exist; pass --benchmark with a JSONL file")
    items = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BenchmarkError(f"{where} is not a JSON object ({exc}); fix or remove the line") from exc
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise BenchmarkError(f'{where}: each line needs a non-empty "name" string')
            question = entry.get("question")
            if question is not None and not isinstance(question, str):
                raise BenchmarkError(f'{where}: "question" must be a string')
            keys = None
            if entry.get("image") is not None:
                ctx = RecordContext(str(path), lineno, cfg, path.parent, "benchmark")
                try:
                    keys = image_keys(resolve_image(entry["image"], ctx, f"bench_{lineno}")[S.IMG_BYTES])
                except InputError as exc:
                    raise BenchmarkError(f"{where}: image unusable ({exc}); fix the path or data") from exc
            qkey = question_key(question)
            if qkey is None and keys is None:
                raise BenchmarkError(f'{where}: give a "question" or an "image" to match against')
            items.append(BenchmarkItem(entry["name"], qkey, keys))
    return items


# --- verdicts ------------------------------------------------------------------------------
def _bands(bits: int) -> list[tuple[int, int, int]]:
    """(band, shift, mask) cutting 64 bits into ``bits + 1`` contiguous bands."""
    n = bits + 1
    widths = [64 // n + (1 if k < 64 % n else 0) for k in range(n)]
    out, shift = [], 0
    for k, w in enumerate(widths):
        out.append((k, shift, (1 << w) - 1))
        shift += w
    return out


def _band_values_sql(bits: int) -> str:
    return ", ".join(f"({b}, {s}, {m})" for b, s, m in _bands(bits))


def find_verdicts(
    key_files: list[str],
    cfg: DedupConfig,
    benchmark: list[BenchmarkItem] | None = None,
    work_dir: Path | None = None,
    memory_limit: str = "256MB",
    groups_path: Path | None = None,
) -> dict[tuple[str, int], dict[str, Any]]:
    """(file, idx) -> {duplicate_of, contaminated_by} for every flagged record (see module doc).
    With ``groups_path`` the (image, question) groups of two or more records are written there
    (GROUP_SCHEMA). With ``work_dir`` DuckDB keeps its tables in a file there and spills beyond
    ``memory_limit``, so the driver's memory stays bounded whatever the number of keys."""
    return _verdicts(key_files, cfg, benchmark, work_dir, memory_limit, groups_path)[0]


def post_verdicts(
    key_files: list[str],
    cfg: DedupConfig,
    benchmark: list[BenchmarkItem] | None = None,
    work_dir: Path | None = None,
    memory_limit: str = "256MB",
    groups_path: Path | None = None,
) -> dict[str, list[str]]:
    """The post-pass over the main pass's key files (exact duplicates are not in them): the
    (image, question) groups -> ``groups_path``, and the contaminated records as
    ``{sample_id: [benchmark names]}`` (a small set). An exact duplicate shares the sample_id of
    the record it duplicates, hence its contamination too."""
    return _verdicts(key_files, cfg.model_copy(update={"exact": False}), benchmark, work_dir, memory_limit, groups_path)[1]


def _verdicts(
    key_files: list[str],
    cfg: DedupConfig,
    benchmark: list[BenchmarkItem] | None,
    work_dir: Path | None,
    memory_limit: str,
    groups_path: Path | None,
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, list[str]]]:
    verdicts: dict[tuple[str, int], dict[str, Any]] = defaultdict(dict)
    by_sample: dict[str, list[str]] = {}
    if not key_files:
        if groups_path is not None:
            pq.write_table(GROUP_SCHEMA.empty_table(), groups_path)
        return {}, {}
    if work_dir:
        (Path(work_dir) / "dedup.duckdb").unlink(missing_ok=True)
    con = duckdb.connect(str(Path(work_dir) / "dedup.duckdb") if work_dir else ":memory:")
    if work_dir:
        con.execute(f"SET temp_directory = {sql_str(Path(work_dir) / 'duckdb-tmp')}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET threads = 2")
    con.execute("SET preserve_insertion_order = false")
    files_sql = "[" + ", ".join(sql_str(f) for f in key_files) + "]"
    con.execute(f"""
        CREATE TABLE ranked AS
        SELECT {KEY_SID}, {KEY_FILE}, {KEY_IDX}, {KEY_QKEY}, {KEY_ISHA}, {KEY_PHASH}, {KEY_ASPECT},
               row_number() OVER (PARTITION BY {KEY_SID} ORDER BY {KEY_FILE}, {KEY_IDX}) AS rn
        FROM read_parquet({files_sql}) WHERE {KEY_VALID} IS NOT FALSE""")
    con.execute(f"CREATE VIEW details AS SELECT {KEY_FILE}, {KEY_IDX}, {KEY_DETAIL} FROM read_parquet({files_sql}) "
                f"WHERE {KEY_VALID} IS NOT FALSE")
    if cfg.exact:
        for file, idx, sid in con.execute(f"SELECT {KEY_FILE}, {KEY_IDX}, {KEY_SID} FROM ranked WHERE rn > 1").fetchall():
            verdicts[(file, idx)][S.DUPLICATE_OF] = sid
    if groups_path is not None:
        _groups(con, cfg, groups_path)
    if benchmark:
        by_sample = _contamination(con, cfg, benchmark, verdicts)
    con.close()
    if work_dir:
        (Path(work_dir) / "dedup.duckdb").unlink(missing_ok=True)
    return dict(verdicts), by_sample


def _fetch_keys(con: duckdb.DuckDBPyConnection, table: str) -> dict[int, ImageKeys]:
    """ord -> ImageKeys for the rows of ``table`` (ord, file, idx, phash, aspect)."""
    out = {}
    for o, ph, asp, det in con.execute(f"""
            SELECT t.ord, t.{KEY_PHASH}, t.{KEY_ASPECT}, d.{KEY_DETAIL}
            FROM {table} t JOIN details d ON d.{KEY_FILE} = t.{KEY_FILE} AND d.{KEY_IDX} = t.{KEY_IDX}""").fetchall():
        out[o] = ImageKeys(ph, asp, det)
    return out


def _groups(con: duckdb.DuckDBPyConnection, cfg: DedupConfig, groups_path: Path) -> None:
    """(image, question) groups (module doc) -> ``groups_path``."""
    members = "rn = 1" if cfg.exact else "TRUE"
    # buckets of identical (question, image bytes); the representative is the first record
    con.execute(f"""
        CREATE TABLE members AS
        SELECT {KEY_SID}, {KEY_FILE}, {KEY_IDX}, {KEY_QKEY}, coalesce({KEY_ISHA}, '') AS isha_k, {KEY_PHASH}, {KEY_ASPECT},
               row_number() OVER (PARTITION BY {KEY_QKEY}, coalesce({KEY_ISHA}, '') ORDER BY {KEY_FILE}, {KEY_IDX}) AS brn
        FROM ranked WHERE {members} AND {KEY_QKEY} IS NOT NULL""")
    con.execute(f"""
        CREATE TABLE reps AS
        SELECT *, row_number() OVER (ORDER BY {KEY_FILE}, {KEY_IDX}) AS ord FROM members WHERE brn = 1""")
    con.execute("CREATE TABLE follow(ord BIGINT, leader BIGINT)")
    if cfg.image_hamming is not None:
        bits = int(cfg.image_hamming)
        con.execute(f"""
            CREATE TABLE rep_bands AS
            SELECT ord, {KEY_QKEY}, {KEY_PHASH}, b, ({KEY_PHASH} >> s) & m AS v
            FROM reps, (VALUES {_band_values_sql(bits)}) AS bands(b, s, m) WHERE {KEY_PHASH} IS NOT NULL""")
        candidates = con.execute(f"""
            SELECT DISTINCT x.ord, y.ord FROM rep_bands x JOIN rep_bands y
              ON x.b = y.b AND x.v = y.v AND x.{KEY_QKEY} = y.{KEY_QKEY} AND x.ord < y.ord
            WHERE bit_count(xor(x.{KEY_PHASH}, y.{KEY_PHASH})) <= {bits}""").fetchall()
        earlier: dict[int, list[int]] = defaultdict(list)
        for a, b in candidates:
            earlier[b].append(a)
        involved = sorted({o for p in candidates for o in p})
        keys: dict[int, ImageKeys] = {}
        if involved:
            con.execute("CREATE TEMP TABLE involved(ord BIGINT)")
            con.executemany("INSERT INTO involved VALUES (?)", [(o,) for o in involved])
            con.execute(f"""CREATE TEMP TABLE involved_keys AS
                SELECT r.ord, r.{KEY_FILE}, r.{KEY_IDX}, r.{KEY_PHASH}, r.{KEY_ASPECT} FROM reps r JOIN involved USING (ord)""")
            keys = _fetch_keys(con, "involved_keys")
        leader: dict[int, int] = {}  # follower ord -> leader ord
        for o in involved:  # ascending (file, idx) order: greedy, each joins the first near leader
            for a in sorted(earlier.get(o, [])):
                if a not in leader and same_image(keys[a], keys[o], bits, cfg.image_max_tile_diff):
                    leader[o] = a
                    break
        if leader:
            con.executemany("INSERT INTO follow VALUES (?, ?)", list(leader.items()))
    con.execute(f"""
        COPY (
          WITH m AS (
            SELECT x.{KEY_FILE}, x.{KEY_IDX}, x.{KEY_SID}, coalesce(f.leader, r.ord) AS g
            FROM members x JOIN reps r ON x.{KEY_QKEY} = r.{KEY_QKEY} AND x.isha_k = r.isha_k
            LEFT JOIN follow f ON f.ord = r.ord),
          sized AS (SELECT *, count(*) OVER (PARTITION BY g) AS n FROM m)
          SELECT s.{KEY_FILE}, s.{KEY_IDX}, s.{KEY_SID}, r.{KEY_SID} AS {S.DEDUP_GROUP}
          FROM sized s JOIN reps r ON r.ord = s.g WHERE s.n > 1
          ORDER BY s.{KEY_FILE}, s.{KEY_IDX}
        ) TO {sql_str(groups_path)} (FORMAT parquet)""")


def read_groups(groups_path: Path) -> dict[tuple[str, int], str]:
    """(file, idx) -> dedup_group of a groups file (small inputs: tests and inspection)."""
    rows = duckdb.connect().execute(
        f"SELECT {KEY_FILE}, {KEY_IDX}, {S.DEDUP_GROUP} FROM read_parquet({sql_str(groups_path)})"
    ).fetchall()
    return {(f, i): g for f, i, g in rows}


def _contamination(
    con: duckdb.DuckDBPyConnection, cfg: DedupConfig, benchmark: list[BenchmarkItem], verdicts: dict
) -> dict[str, list[str]]:
    """Fill ``verdicts`` with contaminated_by; returns the same as {sample_id: names}."""
    con.execute("CREATE TEMP TABLE bench(k INTEGER, name VARCHAR, qkey VARCHAR, phash BIGINT)")
    con.executemany(
        "INSERT INTO bench VALUES (?, ?, ?, ?)",
        [(k, b.name, b.qkey, b.image.phash if b.image else None) for k, b in enumerate(benchmark)],
    )
    hits: dict[tuple[str, int], set[str]] = defaultdict(set)
    if cfg.benchmark_questions:
        for f, i, name in con.execute(f"""
                SELECT k.{KEY_FILE}, k.{KEY_IDX}, b.name FROM ranked k JOIN bench b ON k.{KEY_QKEY} = b.qkey""").fetchall():
            hits[(f, i)].add(name)
    if cfg.benchmark_image_hamming is not None:
        bits = int(cfg.benchmark_image_hamming)
        bands = _band_values_sql(bits)
        con.execute(f"""
            CREATE TEMP TABLE bench_hits AS
            WITH kb AS (SELECT {KEY_FILE}, {KEY_IDX}, {KEY_PHASH}, {KEY_ASPECT}, b, ({KEY_PHASH} >> s) & m AS v
                        FROM ranked, (VALUES {bands}) AS bands(b, s, m) WHERE {KEY_PHASH} IS NOT NULL),
                 bb AS (SELECT k, phash, b, (phash >> s) & m AS v
                        FROM bench, (VALUES {bands}) AS bands(b, s, m) WHERE phash IS NOT NULL)
            SELECT DISTINCT kb.{KEY_FILE}, kb.{KEY_IDX}, kb.{KEY_PHASH}, kb.{KEY_ASPECT}, bb.k
            FROM kb JOIN bb ON kb.b = bb.b AND kb.v = bb.v
            WHERE bit_count(xor(kb.{KEY_PHASH}, bb.phash)) <= {bits}""")
        for f, i, ph, asp, det, k in con.execute(f"""
                SELECT h.{KEY_FILE}, h.{KEY_IDX}, h.{KEY_PHASH}, h.{KEY_ASPECT}, d.{KEY_DETAIL}, h.k
                FROM bench_hits h JOIN details d ON d.{KEY_FILE} = h.{KEY_FILE} AND d.{KEY_IDX} = h.{KEY_IDX}""").fetchall():
            item = benchmark[k]
            if same_image(ImageKeys(ph, asp, det), item.image, bits, cfg.image_max_tile_diff):
                hits[(f, i)].add(item.name)
    by_sample: dict[str, set[str]] = defaultdict(set)
    if hits:
        con.execute("CREATE TEMP TABLE hit_keys(file VARCHAR, idx BIGINT)")
        con.executemany("INSERT INTO hit_keys VALUES (?, ?)", list(hits))
        for f, i, sid in con.execute(f"""
                SELECT k.{KEY_FILE}, k.{KEY_IDX}, k.{KEY_SID} FROM ranked k
                JOIN hit_keys h ON h.file = k.{KEY_FILE} AND h.idx = k.{KEY_IDX}""").fetchall():
            by_sample[sid] |= hits[(f, i)]
    for where, names in hits.items():
        verdicts[where][S.CONTAMINATED_BY] = sorted(names)
    return {sid: sorted(names) for sid, names in by_sample.items()}


def attach_verdicts(tasks: list[ReadTask], verdicts: dict[tuple[str, int], dict[str, Any]]) -> list[ReadTask]:
    """Give each read task the verdicts of its records (``ReadTask.flags``, JSON)."""
    if not verdicts:
        return tasks
    by_file: dict[str, list[int]] = defaultdict(list)
    for f, i in verdicts:
        by_file[f].append(i)
    for indices in by_file.values():
        indices.sort()
    out = []
    for t in tasks:
        indices = by_file.get(t.file, [])
        lo = bisect.bisect_left(indices, t.first_index)
        hi = bisect.bisect_left(indices, t.first_index + t.count)
        mine = {str(i): verdicts[(t.file, i)] for i in indices[lo:hi]}
        out.append(replace(t, flags=json.dumps(mine, sort_keys=True)) if mine else t)
    return out
