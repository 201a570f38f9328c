"""The canonical sample: one Arrow schema that every stage reads and writes.

Data flows ingest -> replay -> judges -> routing -> write. Each stage fills its own columns
and leaves the others as it found them; every table crossing a stage boundary is cast to
``SAMPLE_SCHEMA`` so a typo in a column name fails loudly instead of adding a column.

Column names live here as constants; no other module spells them as bare strings.

The score columns depend on the quality dimensions, which their judges declare and register in
schemas.dimensions. So ``DIMENSIONS``, the ``*_COLUMNS`` tuples of the score columns and
``SAMPLE_SCHEMA`` are not fixed at import time: they are module attributes computed from the
registry when read (module ``__getattr__``, cached per set of dimensions). A dimension registered
later (a test's, a plugin's) therefore has its columns everywhere ``S.SAMPLE_SCHEMA`` is read; read
them as ``S.<NAME>``, never ``from schemas.sample import SAMPLE_SCHEMA`` (that copies them once).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import pyarrow as pa

# --- enumerations -------------------------------------------------------------------------
DISCIPLINES = ("mathematics", "physics", "chemistry", "astronomy", "geography", "biology", "unknown")
ROUTES = ("twi", "text", "rejected")
ROUTE_TWI, ROUTE_TEXT, ROUTE_REJECTED = ROUTES
# Replay status of one cell. The first seven come from the sandbox (pipeline.sandbox.base);
# "replay_env" is set by the replay stage (pipeline.stages.replay) on a sandbox "error" that the replay
# environment caused, not the trajectory: a module that is not installed, a tool function the
# trajectory's own environment provided, a file the record references that is not available.
CELL_STATUSES = ("ok", "error", "timeout", "memory", "killed", "forbidden", "skipped", "replay_env")
REPLAY_ENV_STATUS = "replay_env"
STATUS_OK, STATUS_FORBIDDEN = "ok", "forbidden"
# Replay status of a whole sample (pipeline.stages.replay): "ok", the worst cell status, or one of these
REPLAY_NOT_RUN, REPLAY_NO_CODE = "not_run", "no_code"
# The visual gain dimension (judges.visual_gain): its low score sends a sample to the text shard
# (its Dimension's ``below``), and a sample without input images goes there whatever it scores
VISUAL_GAIN = "visual_gain"
# Kinds of replay-environment gap; a gap is written "<kind>:<name>", e.g. "module:networkx",
# "tool:zoom_in", "file:/eval/17127.jpg", and becomes the route reason "replay_env:<kind>:<name>".
REPLAY_ENV_KINDS = ("module", "tool", "file")

# --- column names -------------------------------------------------------------------------
SAMPLE_ID = "sample_id"
SOURCE = "source"
DISCIPLINE = "discipline"
QUESTION = "question"
GROUND_TRUTH = "ground_truth"
IMAGES = "images"
TURNS = "turns"
FINAL_ANSWER = "final_answer"
INPUT_ERROR = "input_error"
INPUT_DETAIL = "input_detail"  # the specifics of input_error (e.g. the image paths looked for)
RAW = "raw"
# dedup / decontamination verdicts (pipeline.stages.dedup), filled at ingest, turned into reasons by routing
DUPLICATE_OF = "duplicate_of"
CONTAMINATED_BY = "contaminated_by"
# (image, question) group of a record (pipeline.stages.dedup groups.parquet, read by pipeline.stages.best_of_n;
# not a shard column: the shards link a best-of-N loser to the kept record by duplicate_of)
DEDUP_GROUP = "dedup_group"
REPLAY = "replay"
REPLAY_STATUS = "replay_status"
REPLAY_ENV = "replay_env"  # list of "<kind>:<name>" gaps of the replay environment (see REPLAY_ENV_KINDS)
ROUTE = "route"
ROUTE_REASONS = "route_reasons"
TEXT_RESPONSE = "text_response"
TEXT_FLAGS = "text_flags"
LINEAGE = "lineage"


def replay_env_reason(gap: str) -> str:
    """Route reason of a replay-environment gap "<kind>:<name>"."""
    return f"{REPLAY_ENV_STATUS}:{gap}"


def score_column(dimension: str) -> str:
    """Column holding the 0..1 score of one dimension (null when the judge could not score)."""
    return f"score_{dimension}"


def explanation_column(dimension: str) -> str:
    """Column holding the judge's one-line explanation of its score."""
    return f"why_{dimension}"


def metric_score_column(dimension: str) -> str:
    """The metric judge's own score (kept when an LLM judge also scores the dimension)."""
    return f"metric_score_{dimension}"


def llm_score_column(dimension: str) -> str:
    """The LLM/VLM judge's score (null when no LLM judge ran or it failed)."""
    return f"llm_score_{dimension}"


def llm_status_column(dimension: str) -> str:
    """ok | cached | judge_error:<kind>; null when no LLM judge ran for this dimension."""
    return f"llm_status_{dimension}"


# --- nested field names (struct members) -------------------------------------------------------
# image
IMG_BYTES, IMG_WIDTH, IMG_HEIGHT, IMG_SHA256, IMG_NAME = "bytes", "width", "height", "sha256", "name"
# the path the trajectory's own code uses for this image (e.g. Thyme's absolute input path); the
# replay sandbox makes that path resolve to the image
IMG_PATH = "path"
# source
SRC_DATASET, SRC_FILE, SRC_INDEX, SRC_FORMAT = "dataset", "file", "index", "format"
# turn
TURN_REASONING, TURN_CODE, TURN_OBS_TEXT, TURN_OBS_IMAGES = (
    "reasoning",
    "code",
    "observation_text",
    "observation_images",
)
# Transient row keys: set and read by stages that run in the same worker (pipeline.stage.Fused),
# never columns (to_table leaves them behind).
TRANSIENT_PREFIX = "_"
# per input image (as in IMAGES): its pixels in 8-bit grey, a (height, width) uint8 array, as the
# replay sandbox loaded it before any cell ran, or None; the judges use it instead of decoding again
INPUT_GREYS = "_input_greys"
# replayed cell
CELL_INDEX, CELL_TURN, CELL_STATUS, CELL_STDOUT, CELL_ERROR = "cell", "turn", "status", "stdout", "error"
CELL_DURATION_MS, CELL_IMAGES, CELL_FIDELITY = "duration_ms", "images", "fidelity"
CELL_ENV_GAP = "env_gap"  # "<kind>:<name>" when the cell's status is "replay_env", else null
# lineage
LIN_PIPELINE_VERSION, LIN_CONFIG_HASH, LIN_RUN_ID, LIN_DERIVED_FROM = (
    "pipeline_version",
    "config_hash",
    "run_id",
    "derived_from",
)

IMAGE_TYPE = pa.struct(
    [
        pa.field(IMG_NAME, pa.string()),
        pa.field(IMG_BYTES, pa.binary()),
        pa.field(IMG_WIDTH, pa.int32()),
        pa.field(IMG_HEIGHT, pa.int32()),
        pa.field(IMG_SHA256, pa.string()),
        pa.field(IMG_PATH, pa.string()),
    ]
)
SOURCE_TYPE = pa.struct(
    [
        pa.field(SRC_DATASET, pa.string()),
        pa.field(SRC_FILE, pa.string()),
        pa.field(SRC_INDEX, pa.int64()),
        pa.field(SRC_FORMAT, pa.string()),
    ]
)
TURN_TYPE = pa.struct(
    [
        pa.field(TURN_REASONING, pa.string()),
        pa.field(TURN_CODE, pa.string()),
        pa.field(TURN_OBS_TEXT, pa.string()),
        pa.field(TURN_OBS_IMAGES, pa.list_(IMAGE_TYPE)),
    ]
)
CELL_TYPE = pa.struct(
    [
        pa.field(CELL_INDEX, pa.int32()),
        pa.field(CELL_TURN, pa.int32()),
        pa.field(CELL_STATUS, pa.string()),
        pa.field(CELL_STDOUT, pa.string()),
        pa.field(CELL_ERROR, pa.string()),
        pa.field(CELL_DURATION_MS, pa.float64()),
        pa.field(CELL_IMAGES, pa.list_(IMAGE_TYPE)),
        pa.field(CELL_FIDELITY, pa.float64()),
        pa.field(CELL_ENV_GAP, pa.string()),
    ]
)
LINEAGE_TYPE = pa.struct(
    [
        pa.field(LIN_PIPELINE_VERSION, pa.string()),
        pa.field(LIN_CONFIG_HASH, pa.string()),
        pa.field(LIN_RUN_ID, pa.string()),
        pa.field(LIN_DERIVED_FROM, pa.string()),
    ]
)

INGEST_FIELDS = [
    pa.field(SAMPLE_ID, pa.string(), nullable=False),
    pa.field(SOURCE, SOURCE_TYPE),
    pa.field(DISCIPLINE, pa.string()),
    pa.field(QUESTION, pa.string()),
    pa.field(GROUND_TRUTH, pa.string()),
    pa.field(IMAGES, pa.list_(IMAGE_TYPE)),
    pa.field(TURNS, pa.list_(TURN_TYPE)),
    pa.field(FINAL_ANSWER, pa.string()),
    pa.field(INPUT_ERROR, pa.string()),
    pa.field(INPUT_DETAIL, pa.string()),
    pa.field(RAW, pa.string()),
]
DEDUP_FIELDS = [
    pa.field(DUPLICATE_OF, pa.string()),  # sample_id of the kept record this one duplicates
    pa.field(CONTAMINATED_BY, pa.list_(pa.string())),  # names of the benchmarks it overlaps
]
REPLAY_FIELDS = [
    pa.field(REPLAY, pa.list_(CELL_TYPE)),
    pa.field(REPLAY_STATUS, pa.string()),
    pa.field(REPLAY_ENV, pa.list_(pa.string())),
]
ROUTING_FIELDS = [
    pa.field(ROUTE, pa.string()),
    pa.field(ROUTE_REASONS, pa.list_(pa.string())),
    pa.field(TEXT_RESPONSE, pa.string()),
    pa.field(TEXT_FLAGS, pa.list_(pa.string())),
    pa.field(LINEAGE, LINEAGE_TYPE),
]
# Partition columns of the written shards (hive layout route=<r>/discipline=<d>/).
PARTITION_COLUMNS = (ROUTE, DISCIPLINE)

_DERIVED = ("DIMENSIONS", "SCORE_COLUMNS", "EXPLANATION_COLUMNS", "METRIC_SCORE_COLUMNS", "LLM_SCORE_COLUMNS",
            "LLM_STATUS_COLUMNS", "SAMPLE_SCHEMA")


@functools.lru_cache(maxsize=8)
def _by_dimensions(dimensions: tuple[str, ...]) -> dict[str, Any]:
    """The attributes that follow from the dimensions (module doc): their names, score columns
    (score, why, metric score, LLM score, LLM status: all per dimension, in this order) and the schema."""
    scores = tuple(score_column(d) for d in dimensions)
    whys = tuple(explanation_column(d) for d in dimensions)
    metric_scores = tuple(metric_score_column(d) for d in dimensions)
    llm_scores = tuple(llm_score_column(d) for d in dimensions)
    llm_statuses = tuple(llm_status_column(d) for d in dimensions)
    score_fields = (
        [pa.field(c, pa.float64()) for c in scores]
        + [pa.field(c, pa.string()) for c in whys]
        + [pa.field(c, pa.float64()) for c in metric_scores + llm_scores]
        + [pa.field(c, pa.string()) for c in llm_statuses]
    )
    schema = pa.schema(INGEST_FIELDS + DEDUP_FIELDS + REPLAY_FIELDS + score_fields + ROUTING_FIELDS)
    values = (dimensions, scores, whys, metric_scores, llm_scores, llm_statuses, schema)
    return dict(zip(_DERIVED, values, strict=True))


def _derived(name: str) -> Any:
    from schemas import dimensions  # imported here: schemas.dimensions imports this module

    return _by_dimensions(dimensions.names())[name]


def __getattr__(name: str) -> Any:
    """``DIMENSIONS``, the score ``*_COLUMNS`` and ``SAMPLE_SCHEMA`` of the registered dimensions."""
    if name not in _DERIVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _derived(name)


def empty_row() -> dict[str, Any]:
    """A row with every column present and null, to be filled by the stages."""
    return {f.name: None for f in _derived("SAMPLE_SCHEMA")}


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of the columns) -> a table of exactly SAMPLE_SCHEMA (keys that
    start with TRANSIENT_PREFIX stay behind: they never leave the process)."""
    schema = _derived("SAMPLE_SCHEMA")
    unknown = {k for r in rows for k in r if not k.startswith(TRANSIENT_PREFIX)} - set(schema.names)
    if unknown:
        raise KeyError(f"columns not in schemas.SAMPLE_SCHEMA: {sorted(unknown)}")
    return pa.Table.from_pylist(rows, schema=schema)


def input_grey(row: dict[str, Any], k: int) -> Any:
    """Input ``k``'s grey pixels as the replay handed them over (INPUT_GREYS), or None when there
    are none or they do not have that image's (height, width): then the image is decoded."""
    greys, images = row.get(INPUT_GREYS) or [], row.get(IMAGES) or []
    grey = greys[k] if k < len(greys) and k < len(images) else None
    if grey is None or grey.shape != (images[k].get(IMG_HEIGHT), images[k].get(IMG_WIDTH)):
        return None
    return grey


def image_record(name: str, data: bytes, width: int, height: int, path: str | None = None) -> dict[str, Any]:
    """The IMAGE_TYPE struct for encoded image bytes (``path``: as the trajectory refers to it)."""
    return {
        IMG_NAME: name,
        IMG_BYTES: data,
        IMG_WIDTH: int(width),
        IMG_HEIGHT: int(height),
        IMG_SHA256: hashlib.sha256(data).hexdigest(),
        IMG_PATH: path,
    }


def compute_sample_id(
    question: str | None,
    image_hashes: list[str],
    turns: list[dict[str, Any]],
    final_answer: str | None,
) -> str:
    """Stable content hash of a trajectory: same content -> same id, whatever file it came from.

    ``turns`` are TURN_TYPE dicts; observation images count by their sha256, not their name.
    """
    canon = {
        "q": question or "",
        "img": list(image_hashes),
        "turns": [
            [
                t.get(TURN_REASONING) or "",
                t.get(TURN_CODE) or "",
                t.get(TURN_OBS_TEXT) or "",
                [i[IMG_SHA256] for i in (t.get(TURN_OBS_IMAGES) or [])],
            ]
            for t in turns
        ],
        "a": final_answer or "",
    }
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def invalid_sample_id(source_file: str, index: int, raw: str) -> str:
    """Id of a record that could not be parsed: derived from where it came from and its bytes."""
    blob = f"{source_file}\x00{index}\x00{raw}".encode("utf-8", "replace")
    return "invalid-" + hashlib.sha256(blob).hexdigest()[:16]
