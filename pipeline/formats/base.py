"""What every format adapter shares.

An adapter turns one parsed input record (a dict: a JSON object, or one Parquet / Arrow row) into
one canonical row (``schemas.sample``). It is a small object with

    name: str                                   # stored in source.format
    detect(record) -> bool                      # does this record look like my format?
    to_row(record, ctx) -> dict                 # canonical row; raises InputError if unusable

This module holds the protocol, :class:`RecordContext`, :class:`InputError`, image resolution
(paths relative to the record's file or absolute, raw bytes, ``{"bytes", "path"}`` structs as
Hugging Face ``Image`` features store them, base64 strings, data URLs) and small text helpers
for the tag conventions the public formats share (``<think>``, ``<answer>``, ``<code>``,
``<image>``).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from PIL import Image

from pipeline.config import IngestConfig
from pipeline.stages.discipline import resolve_discipline
from schemas import sample as S

IMAGE_TOKEN = "<image>"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_PIL_EXT = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
# base64 openings of PNG, JPEG, GIF, WebP, BMP, TIFF: a string starting so is image data, not a path
_B64_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk", "SUkq", "TU0A")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


class InputError(ValueError):
    """A record is unusable; ``kind`` becomes ``invalid_input:<kind>`` in the route reasons."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class RecordContext:
    """Where a record came from: its file (relative image paths resolve against ``base_dir``),
    its index in that file, the default dataset name and the ingest limits."""

    file: str
    index: int
    cfg: IngestConfig
    base_dir: Path
    dataset: str


class FormatAdapter(Protocol):
    name: str

    def detect(self, record: dict[str, Any]) -> bool:
        """True when the record carries this format's telltale fields or tags."""
        ...

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        """The canonical row (schemas.sample); raises InputError for unusable records."""
        ...


# --- scalar fields -------------------------------------------------------------------------
def text_field(value: Any, field: str, required: bool = False) -> str | None:
    """A string-like field (numbers are accepted and stringified); InputError otherwise."""
    if value is None:
        if required:
            raise InputError(f"missing_field:{field}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InputError("wrong_type", f"{field} must be a string, got {type(value).__name__}")
    return str(value)


def list_field(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InputError("wrong_type", f"{field} must be a list, got {type(value).__name__}")
    return list(value)


_ANSWER_TAGS = re.compile(r"</?answer>", re.I)
GROUND_TRUTH_KEYS = ("answer", "solution", "ground_truth", "gt_answer")


def ground_truth_of(record: dict[str, Any]) -> str | None:
    """Ground truth from ``answer``, ``solution``, ``ground_truth``, ``gt_answer`` or
    ``reward_model.ground_truth`` (first present), without ``<answer>`` tags. A list of accepted
    answers gives its first element."""
    candidates = [(k, record.get(k)) for k in GROUND_TRUTH_KEYS]
    reward = record.get("reward_model")
    if isinstance(reward, dict):
        candidates.append(("reward_model.ground_truth", reward.get("ground_truth")))
    for key, value in candidates:
        if isinstance(value, list | tuple) and value:
            value = value[0]
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        text = text_field(value, key)
        return _ANSWER_TAGS.sub("", text).strip()
    return None


def dataset_of(record: dict[str, Any], ctx: RecordContext) -> str:
    for key in ("dataset", "data_source"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ctx.dataset


# --- images --------------------------------------------------------------------------------
def load_image(path: Path, cfg: IngestConfig, ref_path: str | None = None) -> dict[str, Any]:
    """Read and check one image file -> IMAGE_TYPE dict; decompression bombs never get decoded."""
    path = Path(path)
    if not path.is_file():
        raise InputError("missing_image", str(path))
    try:
        size = path.stat().st_size
        if size > cfg.max_image_bytes:
            raise InputError("image_too_large", f"{path} is {size} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError("unreadable_image", f"{path}: {exc}") from exc
    return image_from_bytes(data, path.name, cfg, ref_path)


def image_from_bytes(data: bytes, name: str, cfg: IngestConfig, path: str | None = None) -> dict[str, Any]:
    """Check encoded image bytes (header size before decoding, then integrity) -> IMAGE_TYPE dict.

    A ``name`` without an image suffix gets one from the decoded format (the sandbox names the
    file ``input_<k>.<suffix>``)."""
    if len(data) > cfg.max_image_bytes:
        raise InputError("image_too_large", f"{name} is {len(data)} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size  # header only: nothing decoded yet
                fmt = im.format
                if width * height > cfg.max_image_pixels:
                    raise InputError("decompression_bomb", f"{name} is {width}x{height}")
                im.verify()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise InputError("corrupt_image", f"{name}: {exc}") from exc
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        name = f"{name}.{_PIL_EXT.get(fmt or '', 'png')}"
    return S.image_record(name, bytes(data), width, height, path)


def _decode_base64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=False, altchars=None)
    except (binascii.Error, ValueError) as exc:
        raise InputError("corrupt_image", f"{name}: invalid base64 ({exc})") from exc


def looks_like_base64_image(text: str) -> bool:
    head = text.lstrip()[:16]
    if len(text) >= 64 and head.startswith(_B64_MAGIC) and "." not in text[:64]:
        return True
    return len(text) > 1024 and bool(_B64_CHARS.match(text[:4096]))


def resolve_image(value: Any, ctx: RecordContext, default_name: str) -> dict[str, Any]:
    """Any image reference a public format uses -> IMAGE_TYPE dict.

    Accepts a path (relative to the record's file, or absolute), ``file://`` URLs, data URLs,
    base64 strings, raw bytes, ``{"bytes": ..., "path": ...}`` (Hugging Face ``Image``), and
    OpenAI ``{"url": ...}`` / ``{"type": "image_url", "image_url": {"url": ...}}`` parts. The
    reference as written (when it is a path) is kept in ``IMG_PATH``."""
    if isinstance(value, dict):
        if "image_url" in value:
            return resolve_image(value["image_url"], ctx, default_name)
        if "url" in value and "bytes" not in value:
            return resolve_image(value["url"], ctx, default_name)
        data, ref = value.get("bytes"), value.get("path")
        if ref is not None and not isinstance(ref, str):
            raise InputError("wrong_type", "image path must be a string")
        if data is not None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InputError("wrong_type", "image bytes must be binary")
            name = PurePosixPath(ref).name if ref else default_name
            return image_from_bytes(bytes(data), name, ctx.cfg, ref)
        if ref:
            return resolve_image(ref, ctx, default_name)
        raise InputError("wrong_type", "image struct holds neither bytes nor path")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if data[:16].startswith(tuple(m.encode() for m in _B64_MAGIC)) and looks_like_base64_image(data[:4096].decode("ascii", "replace")):
            data = _decode_base64(data.decode("ascii", "replace"), default_name)  # base64 text in a binary column
        return image_from_bytes(data, default_name, ctx.cfg)
    if not isinstance(value, str):
        raise InputError("wrong_type", f"image reference must be a path, bytes or URL, got {type(value).__name__}")
    ref = value.strip()
    if not ref:
        raise InputError("missing_image", "empty image reference")
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise InputError("corrupt_image", "data URL is not base64")
        return image_from_bytes(_decode_base64(payload, default_name), default_name, ctx.cfg)
    if ref.startswith(("http://", "https://")):
        raise InputError("remote_image", f"{ref[:200]} (download it and reference the file)")
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif looks_like_base64_image(ref):
        return image_from_bytes(_decode_base64(ref, default_name), default_name, ctx.cfg)
    return load_image(locate_image(ref, ctx), ctx.cfg, ref_path=ref)


def image_candidates(ref: str, ctx: RecordContext) -> list[Path]:
    """Where an image path written in a record is looked for, in order.

    ``ingest.path_map`` first rewrites the longest matching prefix (absolute paths of the machine
    that made the data). An absolute path is then taken as it is. A relative path is looked up
    beside the record's file, then under each ``--image-root``; a path with folders is also tried
    by its bare file name under each root. Absolute paths are never looked up by bare name: real
    corpora reuse names (``000.png`` in every class folder), so that would pick a wrong image."""
    mapped = ref
    for prefix in sorted(ctx.cfg.path_map, key=len, reverse=True):
        if ref == prefix or ref.startswith(prefix.rstrip("/") + "/"):
            mapped = ctx.cfg.path_map[prefix].rstrip("/") + ref[len(prefix.rstrip("/")):]
            break
    path = Path(mapped)
    if path.is_absolute():
        return [path]
    out = [ctx.base_dir / path, *(root / path for root in ctx.cfg.image_roots)]
    if len(path.parts) > 1:
        out.extend(root / path.name for root in ctx.cfg.image_roots)
    return list(dict.fromkeys(out))


def locate_image(ref: str, ctx: RecordContext) -> Path:
    """The first existing candidate of :func:`image_candidates`; InputError('missing_image')
    naming every path looked for (and how to point the run at the images) otherwise."""
    candidates = image_candidates(ref, ctx)
    for path in candidates:
        if path.is_file():
            return path
    hint = "pass --image-root DIR" if not Path(ref).is_absolute() else "set ingest.path_map"
    raise InputError(
        "missing_image",
        f"{ref}: looked for {', '.join(str(p) for p in candidates)} ({hint} to point the run at the images)",
    )


# --- text conventions ----------------------------------------------------------------------
_THINK = re.compile(r"</?think>", re.I)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_CODE_OPEN, _CODE_CLOSE = "<code>", "</code>"


def strip_think(text: str) -> str:
    return _THINK.sub("", text)


def split_answer(text: str) -> tuple[str, str | None]:
    """(text without its ``<answer>`` blocks, the last answer's content or None)."""
    found = _ANSWER.findall(text)
    if not found:
        if re.search(r"<answer>", text, re.I):
            raise InputError("unterminated_answer", "<answer> without </answer>")
        return text, None
    return _ANSWER.sub("", text), found[-1].strip()


def fenced_code(block: str) -> str:
    """The Python source inside one ``<code>`` block: what sits between the opening fence line
    and the last closing fence, or the whole block when it carries no fence. An opened fence that
    is never closed is an unterminated code block."""
    stripped = block.strip()
    if not stripped.startswith("```"):
        if "```" in stripped:
            raise InputError("unterminated_code", "stray ``` fence in a <code> block")
        return stripped + "\n"
    first_newline = stripped.find("\n")
    body = stripped[first_newline + 1 :] if first_newline >= 0 else ""
    close = body.rfind("```")
    if first_newline < 0 or close < 0:
        raise InputError("unterminated_code", "``` fence opened but never closed")
    code = body[:close].rstrip(" \t")
    return code if code.endswith("\n") else code + "\n"


def split_code_blocks(text: str) -> list[tuple[str, str | None]]:
    """Text with ``<code>```python ...```</code>`` cells -> [(text before, code)], plus a final
    (trailing text, None). Raises InputError('unterminated_code') for an unclosed block."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        start = text.find(_CODE_OPEN, pos)
        if start < 0:
            if _CODE_CLOSE in text[pos:]:
                raise InputError("unterminated_code", "</code> without <code>")
            out.append((text[pos:], None))
            return out
        end = text.find(_CODE_CLOSE, start + len(_CODE_OPEN))
        nxt = text.find(_CODE_OPEN, start + len(_CODE_OPEN))
        if end < 0 or (0 <= nxt < end):
            raise InputError("unterminated_code", "<code> without </code>")
        out.append((text[pos:start], fenced_code(text[start + len(_CODE_OPEN) : end])))
        pos = end + len(_CODE_CLOSE)


def clean_text(text: str | None) -> str:
    """Reasoning text as stored: think tags dropped, blank runs collapsed, stripped."""
    if not text:
        return ""
    text = strip_think(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def drop_image_tokens(text: str) -> str:
    return re.sub(r"[ \t]*<image>[ \t]*\n?", "", text).strip()


# --- canonical rows ------------------------------------------------------------------------
def turn(
    reasoning: str | None,
    code: str | None = None,
    obs_text: str | None = None,
    obs_images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        S.TURN_REASONING: reasoning or "",
        S.TURN_CODE: code,
        S.TURN_OBS_TEXT: obs_text,
        S.TURN_OBS_IMAGES: list(obs_images or []),
    }


def canonical_row(
    record: dict[str, Any],
    ctx: RecordContext,
    fmt: str,
    *,
    question: str,
    images: list[dict[str, Any]],
    turns: list[dict[str, Any]],
    final_answer: str | None,
    ground_truth: str | None = None,
    discipline: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Assemble a valid canonical row. Ground truth defaults to :func:`ground_truth_of`,
    discipline to :func:`pipeline.stages.discipline.resolve_discipline`, dataset to the record's
    ``dataset``/``data_source`` or the file's default."""
    if ground_truth is None:
        ground_truth = ground_truth_of(record)
    row = S.empty_row()
    row.update(
        {
            S.SAMPLE_ID: S.compute_sample_id(question, [i[S.IMG_SHA256] for i in images], turns, final_answer),
            S.SOURCE: {
                S.SRC_DATASET: dataset or dataset_of(record, ctx),
                S.SRC_FILE: ctx.file,
                S.SRC_INDEX: ctx.index,
                S.SRC_FORMAT: fmt,
            },
            S.DISCIPLINE: discipline or resolve_discipline(record, question),
            S.QUESTION: question,
            S.GROUND_TRUTH: ground_truth,
            S.IMAGES: images,
            S.TURNS: turns,
            S.FINAL_ANSWER: final_answer,
        }
    )
    return row
