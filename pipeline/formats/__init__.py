"""Trajectory format adapters: each turns one input record into the canonical sample.

``ADAPTERS`` lists them in detection order: the first whose ``detect`` accepts a record wins, so
the specific formats come before the generic chat one (``sharegpt``).
"""

from __future__ import annotations

from typing import Any

from pipeline.formats import native, openai_tools, pyvision, sharegpt, thyme, zoom_tools
from pipeline.formats.base import FormatAdapter

ADAPTERS: tuple[FormatAdapter, ...] = (
    native.ADAPTER,
    thyme.SFT,
    pyvision.RL_INPUT,
    openai_tools.ADAPTER,
    pyvision.PYVISION,
    zoom_tools.DEEPEYES,
    zoom_tools.MINI_O3,
    thyme.RL,
    sharegpt.ADAPTER,
)
BY_NAME: dict[str, FormatAdapter] = {a.name: a for a in ADAPTERS}
FORMAT_NAMES = tuple(BY_NAME)


class UnknownFormatError(ValueError):
    """``--format`` names no adapter; the message lists the choices."""


def get_adapter(name: str) -> FormatAdapter:
    """The adapter called ``name``; UnknownFormatError naming the choices otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownFormatError(f"unknown format {name!r}; choose one of: {', '.join(FORMAT_NAMES)}") from None


def detect_adapter(record: Any) -> FormatAdapter | None:
    """The first adapter that recognises ``record`` (a dict), or None."""
    if not isinstance(record, dict):
        return None
    for adapter in ADAPTERS:
        try:
            if adapter.detect(record):
                return adapter
        except Exception:  # a detector must never take a record down; it just does not match
            continue
    return None
