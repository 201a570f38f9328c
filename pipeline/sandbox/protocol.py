"""The wire protocol between the sandbox's parent and its child: the one definition both import.

Standard library only and free of side effects: the child (:mod:`pipeline.sandbox.child`, started
as ``runner.py``) imports it before it isolates itself, the parent side
(:mod:`pipeline.sandbox.parent`, :mod:`pipeline.sandbox.zygote`) imports it as an ordinary module.

Messages, both directions: a 4-byte big-endian length (:data:`HEADER`), then a UTF-8 JSON object.

  parent -> worker  {"op": "run", "index": i, "code": "..."} | {"op": "exit"}
                    (zygote level: first {"op": "config", ...}, read by the trajectory's init)
  worker -> parent  {"type": "ready", "layers": {...}, "notes": [...], "startup_ms": ...}
                    when asked (config ``input_greys``), right after "ready" and before any cell
                    runs, per input k: {"type": "input_grey", "index": k, "width": w, "height": h}
                    and then w*h raw bytes (the input decoded and converted to 8-bit grey; 0x0
                    when it did not load), so the judges need not decode it again
                    {"type": "cell", "index": i, "status": "ok|error|memory|forbidden",
                     "stdout": "...", "error": "...", "images": [{"name": "...", "png": "<base64>"}]}
  zygote -> parent  {"type": "ready", "pid": ..., "notes": [...], "startup_ms": ...} on its
                    control socket, then per spawn request the init's pid (:data:`PID_REPLY`)
  parent -> zygote  one opcode byte (:data:`SPAWN_WITH_PID_NAMESPACE` or
                    :data:`SPAWN_WITHOUT_PID_NAMESPACE`) with :data:`SPAWN_FDS` fds attached
  init -> parent    the worker's exit code (:data:`EXIT_STATUS`) on the status pipe (zygote level)

The parent never unpickles anything from the child and validates every message; the only image
format it accepts is PNG, whose IHDR size (:func:`png_dimensions`) it checks without decoding.
"""

from __future__ import annotations

import json
import os
import re
import struct

# --------------------------------------------------------------------------------------------
# framing
# --------------------------------------------------------------------------------------------
HEADER = struct.Struct(">I")  # length of the JSON body that follows
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # the largest parent -> child message the child accepts
MAX_READY_BYTES = 1 << 20  # the largest ready message (worker or zygote) the parent accepts
# The zygote level writes a trajectory's config into the empty request pipe before anyone reads
# it: it must fit the pipe buffer (64 KiB on Linux) so that the write never blocks.
MAX_CONFIG_BYTES = 60_000


class ProtocolError(ValueError):
    """A message that breaks the protocol (oversized, not JSON, not an object, invalid fields)."""


def encode_message(obj: dict) -> bytes:
    """One framed message: header + ASCII JSON."""
    data = json.dumps(obj, ensure_ascii=True).encode("ascii")
    return HEADER.pack(len(data)) + data


def message_length(header: bytes, max_bytes: int) -> int:
    """The body length announced by ``header``; :class:`ProtocolError` above ``max_bytes``."""
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise ProtocolError(f"message of {length} bytes exceeds the {max_bytes}-byte limit")
    return length


def decode_message(body: bytes) -> dict:
    """The JSON object of a message body; :class:`ProtocolError` for anything else."""
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"undecodable message: {type(exc).__name__}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    return msg


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from a blocking fd, or None at EOF."""
    chunks = []
    while n:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except InterruptedError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_message(fd: int, max_bytes: int = MAX_REQUEST_BYTES) -> dict | None:
    """One message from a blocking fd (the child's side); None at EOF, :class:`ProtocolError`
    for a broken one."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    body = read_exact(fd, message_length(header, max_bytes))
    return None if body is None else decode_message(body)


def send_message(fd: int, obj: dict, raw: bytes = b"") -> None:
    """One message to a blocking fd (the child's side), followed by ``raw`` bytes when given."""
    view = memoryview(encode_message(obj) + raw)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


# --------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------
OP_RUN = "run"
OP_EXIT = "exit"
OP_CONFIG = "config"
MSG_READY = "ready"
MSG_CELL = "cell"
MSG_INPUT_GREY = "input_grey"

# Statuses the child itself may report for a cell (the parent decides timeout, killed, skipped).
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_MEMORY = "memory"
STATUS_FORBIDDEN = "forbidden"
CHILD_STATUSES = (STATUS_OK, STATUS_ERROR, STATUS_MEMORY, STATUS_FORBIDDEN)

# Separates captured stdout from captured stderr in a cell's stdout.
STDERR_MARKER = "\n[stderr]\n"
# Prefix of the line appended when output was cut at SandboxLimits.max_output_bytes.
TRUNCATION_MARKER = "\n[output truncated:"


def truncation_note(dropped: int) -> str:
    return f"{TRUNCATION_MARKER} {dropped} bytes dropped]"


def cell_message(index: int, status: str, stdout: str, error: str, images: list[dict]) -> dict:
    return {"type": MSG_CELL, "index": index, "status": status, "stdout": stdout, "error": error, "images": images}


IMAGE_NAME = re.compile(r"^cell\d+_\d+_[A-Za-z0-9._-]{1,80}\.png$")


def image_name(index: int, k: int, stem: str) -> str:
    """The name of a cell's ``k``-th image (``stem``: up to 80 of ``[A-Za-z0-9._-]``)."""
    return f"cell{index}_{k}_{stem}.png"


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk that must follow the PNG signature; None if malformed."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[8:16] != b"\x00\x00\x00\rIHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width > 0 and height > 0 else None


# --------------------------------------------------------------------------------------------
# processes: exit codes, the zygote's control socket, hand-offs
# --------------------------------------------------------------------------------------------
EXIT_ORPHANED = 70  # the parent died before the child could arm the parent-death signal
EXIT_SETUP_FAILED = 71  # an isolation step failed before any model code ran
EXIT_PROTOCOL = 72  # the request pipe broke or carried garbage
EXIT_REASONS = {
    EXIT_ORPHANED: "the parent died before the sandbox started",
    EXIT_SETUP_FAILED: "sandbox set-up failed",
    EXIT_PROTOCOL: "the request pipe broke",
}
EXIT_STATUS = struct.Struct(">i")  # init -> parent (zygote level): the worker's exit code

SPAWN_WITH_PID_NAMESPACE = b"P"
SPAWN_WITHOUT_PID_NAMESPACE = b"N"
SPAWN_FDS = 4  # attached to a spawn request: request pipe, response pipe, status pipe, log file
PID_REPLY = struct.Struct(">i")  # zygote -> parent: the forked init's pid, -1 if the fork failed
# Zygote -> pre-forked standby init (with the SPAWN_FDS fds), and standby init -> pre-forked
# worker (with its request, response and log fds, then the trajectory's config as a message).
HANDOFF = b"go"
HANDOFF_WORKER_FDS = 3
