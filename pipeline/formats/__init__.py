"""Trajectory format adapters: each turns one input record into the canonical sample.

``ADAPTERS`` lists the built-in ones in detection order: the first whose ``detect`` accepts a
record wins, so the specific formats come before the generic chat one (``sharegpt``).

Users' own formats are plug-ins, no fork needed (README "Your own format"):
  * ``--format my_pkg.my_module:ADAPTER`` sends every record through that object (or class,
    instantiated without arguments), imported by name in every worker;
  * an installed package may declare adapters under the entry-point group ``twi_curate.formats``
    (``[project.entry-points."twi_curate.formats"] my_lab = "my_pkg.my_module:ADAPTER"``): they
    take part in detection, before the built-ins (a lab's format is more specific than ours),
    and ``--format <adapter name>`` selects one.
An adapter needs ``name`` (str), ``detect(record) -> bool`` and ``to_row(record, ctx) -> dict``
(see :mod:`pipeline.formats.base`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

from pipeline.formats import (
    deepeyes_rollout,
    native,
    openai_tools,
    pixel_reasoner,
    pyvision,
    sharegpt,
    thyme,
    visualsketchpad,
    zoom_tools,
)
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
    deepeyes_rollout.ADAPTER,
    pixel_reasoner.ADAPTER,
    visualsketchpad.ADAPTER,
    sharegpt.ADAPTER,
)
BY_NAME: dict[str, FormatAdapter] = {a.name: a for a in ADAPTERS}
FORMAT_NAMES = tuple(BY_NAME)


ENTRY_POINT_GROUP = "twi_curate.formats"


class UnknownFormatError(ValueError):
    """``--format`` names no adapter, or a plug-in cannot be used; the message says what to do."""


def _checked(obj: Any, where: str) -> FormatAdapter:
    """A plug-in object (or class, instantiated) that has the adapter protocol."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise UnknownFormatError(f"{where}: cannot instantiate {obj.__name__}() ({exc})") from exc
    missing = [a for a in ("detect", "to_row") if not callable(getattr(obj, a, None))]
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        missing.insert(0, "name")
    if missing:
        raise UnknownFormatError(
            f"{where} is not a format adapter: it lacks {', '.join(missing)} "
            "(an adapter has name: str, detect(record) -> bool, to_row(record, ctx) -> dict; see README 'Your own format')"
        )
    return obj


@functools.cache
def plugin_adapters() -> tuple[FormatAdapter, ...]:
    """Adapters installed under the ``twi_curate.formats`` entry-point group, sorted by name."""
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"format plug-in {ep.name} = {ep.value!r} (entry point group {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise UnknownFormatError(f"{where} failed to import: {type(exc).__name__}: {exc}; fix or uninstall it") from exc
        adapter = _checked(obj, where)
        if adapter.name in BY_NAME:
            raise UnknownFormatError(f"{where} is named {adapter.name!r} like a built-in format; rename it")
        out.append(adapter)
    return tuple(out)


@functools.cache
def _imported(spec: str) -> FormatAdapter:
    module_name, _, attr = spec.partition(":")
    where = f"--format {spec}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UnknownFormatError(
            f"{where}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); install the package or "
            "put its folder on PYTHONPATH"
        ) from exc
    try:
        obj = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise UnknownFormatError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None
    return _checked(obj, where)


def all_adapters() -> tuple[FormatAdapter, ...]:
    """Detection order: installed plug-ins, then the built-ins."""
    return plugin_adapters() + ADAPTERS


def format_names() -> tuple[str, ...]:
    return tuple(a.name for a in all_adapters())


def get_adapter(name: str) -> FormatAdapter:
    """The adapter called ``name`` (built-in or plug-in), or the object ``module:ATTR`` names;
    UnknownFormatError naming the choices otherwise."""
    if ":" in name:
        return _imported(name)
    for adapter in all_adapters():
        if adapter.name == name:
            return adapter
    raise UnknownFormatError(
        f"unknown format {name!r}; choose one of: {', '.join(format_names())}, "
        "or a plug-in as my_pkg.my_module:ADAPTER"
    )


def find_adapter(name: str) -> FormatAdapter | None:
    """Like :func:`get_adapter`, None for an empty or unknown name."""
    if not name:
        return None
    try:
        return get_adapter(name)
    except UnknownFormatError:
        return None


def detect_adapter(record: Any) -> FormatAdapter | None:
    """The first adapter (plug-ins first) that recognises ``record`` (a dict), or None."""
    if not isinstance(record, dict):
        return None
    for adapter in all_adapters():
        try:
            if adapter.detect(record):
                return adapter
        except Exception:  # a detector must never take a record down; it just does not match
            continue
    return None
