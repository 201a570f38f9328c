"""A cell's exception in the worker: the status it earns and the traceback the parent gets.

``memory`` for an allocation failure anywhere in the chain (MemoryError, OpenCV's out-of-memory
errors), ``forbidden`` for a refusal by an isolation layer (permission, read-only filesystem,
unreachable network, a failure inside a network module), else ``error``.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

from pipeline.sandbox.protocol import STATUS_ERROR, STATUS_FORBIDDEN, STATUS_MEMORY

# The child package's own frames are cut from the top of a cell's traceback.
_CHILD_DIR = os.path.dirname(os.path.abspath(__file__))

_FORBIDDEN_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.ECONNREFUSED,
    }
)
_NETWORK_MODULES = (
    "socket", "ssl", "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib", "asyncio",
    "selectors", "requests", "urllib3", "httpx", "httpcore", "aiohttp",
)  # fmt: skip


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    todo = [exc]
    while todo and len(chain) < 32:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        todo.extend([e.__cause__, e.__context__])
        reason = getattr(e, "reason", None)  # urllib.error.URLError wraps the socket error
        if isinstance(reason, BaseException):
            todo.append(reason)
    return chain


def _raised_in_network_module(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in _NETWORK_MODULES:
            return True
        tb = tb.tb_next
    return False


def _is_allocation_failure(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and isinstance(exc, cv2.error):
        text = str(exc)
        return any(
            k in text for k in ("Insufficient memory", "Failed to allocate", "bad_alloc", "OutOfMemory")
        )
    return False


def classify_exception(exc: BaseException) -> str:
    chain = _exception_chain(exc)
    if any(_is_allocation_failure(e) for e in chain):
        return STATUS_MEMORY
    socket = sys.modules.get("socket")
    for e in chain:
        if isinstance(e, PermissionError):
            return STATUS_FORBIDDEN
        if socket is not None and isinstance(e, (socket.gaierror, socket.herror)):
            return STATUS_FORBIDDEN
        if isinstance(e, OSError) and e.errno in _FORBIDDEN_ERRNOS:
            return STATUS_FORBIDDEN
        if _raised_in_network_module(e):
            return STATUS_FORBIDDEN
    return STATUS_ERROR


def format_exception(exc: BaseException, cap: int) -> str:
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _CHILD_DIR:
        tb = tb.tb_next  # hide the worker's own frames
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    data = text.encode("utf-8", "backslashreplace")
    if len(data) > cap:
        text = (
            data[:cap].decode("utf-8", "ignore") + f"\n[traceback truncated: {len(data) - cap} bytes dropped]"
        )
    return text

