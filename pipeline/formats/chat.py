"""Chat-message records (LLaMA-Factory sharegpt, OpenAI, PyVision, DeepEyes, Mini-o3, Thyme RL)
normalised to one shape before each adapter reads its own conventions.

A message becomes :class:`Msg` (role in system/user/assistant/tool; text in which every image sits
as an ``<image>`` placeholder; the image references those placeholders stand for). Images come
either inline (OpenAI ``image_url`` parts, ``{"type": "image"}`` parts) or from the record's
``images`` list, matched in order to the ``<image>`` placeholders of all messages (LLaMA-Factory's
rule: their counts must be equal). Parts without ``type`` (Qwen-VL / Pixel-Reasoner ``{"text"}``,
``{"image": path}``) are typed by the key they hold.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.formats.base import IMAGE_TOKEN, InputError, RecordContext, resolve_image

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
    "function_call": "assistant",
}
MESSAGE_KEYS = ("messages", "conversations")


@dataclass
class Msg:
    role: str
    text: str
    image_refs: list[Any] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None


def raw_messages(record: dict[str, Any]) -> list[Any] | None:
    for key in MESSAGE_KEYS:
        value = record.get(key)
        if isinstance(value, list):
            return value
    return None


def has_chat(record: dict[str, Any]) -> bool:
    msgs = raw_messages(record)
    return bool(msgs) and all(isinstance(m, dict) for m in msgs[:4])


def all_text(record: dict[str, Any]) -> str:
    """Every text part of every message, joined (for detection)."""
    out = []
    for m in raw_messages(record) or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content", m.get("value"))
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(out)


def _untyped_kind(part: dict[str, Any]) -> str:
    """The kind of a part without ``type``: Qwen-VL / Pixel-Reasoner ``{"text": ...}`` or
    ``{"image": ...}`` (also ``image_url``), by the key it holds."""
    for key in ("image", "image_url"):
        if key in part and "text" not in part:
            return key
    return "text"


def _content(content: Any) -> tuple[str, list[Any]]:
    """Message content (string, list of parts, or None) -> (text with <image> placeholders, inline refs)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InputError("wrong_type", f"message content must be a string or a list of parts, got {type(content).__name__}")
    texts: list[str] = []
    refs: list[Any] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise InputError("wrong_type", "message part must be an object")
        kind = part.get("type") or _untyped_kind(part)
        if kind in ("text", "input_text"):
            value = part.get("text")
            if not isinstance(value, str):
                raise InputError("wrong_type", "text part must hold a string")
            texts.append(value)
        elif kind in ("image_url", "input_image", "image"):
            ref = part.get("image_url", part.get("image", part.get("url")))
            if ref is None:
                raise InputError("missing_image", "image part without a reference")
            texts.append(IMAGE_TOKEN)
            refs.append(ref)
        else:
            raise InputError("wrong_type", f"unsupported message part type {kind!r}")
    return "".join(texts), refs


def normalize_messages(record: dict[str, Any], match_images: bool = True) -> list[Msg]:
    """The record's ``messages``/``conversations`` as :class:`Msg` with their image references
    resolved to placeholders (see module docstring); ``match_images=False`` leaves the record's
    ``images`` list to the caller. Raises InputError on malformed input."""
    msgs = raw_messages(record)
    if msgs is None:
        raise InputError("missing_field:messages")
    out: list[Msg] = []
    for m in msgs:
        if not isinstance(m, dict):
            raise InputError("wrong_type", "each message must be an object")
        role = m.get("role", m.get("from"))
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            raise InputError("wrong_type", f"unknown message role {role!r}")
        text, refs = _content(m.get("content", m.get("value")))
        calls = m.get("tool_calls") or []
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise InputError("wrong_type", "tool_calls must be a list of objects")
        call_id = m.get("tool_call_id")
        out.append(Msg(ROLE_ALIASES[role.lower()], text, refs, calls, call_id if isinstance(call_id, str) else None))
    if not match_images:
        return out
    inline = sum(len(m.image_refs) for m in out)
    listed = record.get("images")
    if listed is None:
        listed = record.get("image")
    if isinstance(listed, str | bytes | dict):
        listed = [listed]
    if listed is not None and not isinstance(listed, list | tuple):
        raise InputError("wrong_type", "images must be a list")
    if inline == 0 and listed:
        placeholders = sum(m.text.count(IMAGE_TOKEN) for m in out)
        if placeholders != len(listed):
            raise InputError(
                "image_placeholder_mismatch", f"{placeholders} <image> placeholders for {len(listed)} images"
            )
        it = iter(listed)
        for m in out:
            m.image_refs = [next(it) for _ in range(m.text.count(IMAGE_TOKEN))]
    elif inline == 0:
        placeholders = sum(m.text.count(IMAGE_TOKEN) for m in out)
        if placeholders:
            raise InputError("image_placeholder_mismatch", f"{placeholders} <image> placeholders and no images")
    return out


def split_prompt(msgs: list[Msg]) -> tuple[list[Msg], list[Msg]]:
    """(leading system/user messages, the rest starting at the first assistant message)."""
    for k, m in enumerate(msgs):
        if m.role == "assistant":
            return msgs[:k], msgs[k:]
    return msgs, []


def prompt_text(prompt: list[Msg]) -> str:
    return "\n".join(m.text for m in prompt if m.role == "user").strip()


def load_refs(refs: list[Any], ctx: RecordContext, stem: str) -> list[dict[str, Any]]:
    return [resolve_image(r, ctx, f"{stem}_{k}") for k, r in enumerate(refs)]


def chat_prompt(
    record: dict[str, Any], ctx: RecordContext, clean: Any = str.strip
) -> tuple[str, list[dict[str, Any]], list[Msg]]:
    """(question, input images, the messages after the prompt) of a chat record. The question is
    the record's ``question`` field when it has one, else the prompt's user text, passed through
    ``clean``; the input images are the prompt's image references."""
    prompt, rest = split_prompt(normalize_messages(record))
    question = record.get("question") if isinstance(record.get("question"), str) else prompt_text(prompt)
    question = clean(question or "")
    if not question:
        raise InputError("missing_field:question")
    return question, load_refs([r for m in prompt for r in m.image_refs], ctx, "input"), rest


def tool_arguments(call: dict[str, Any]) -> tuple[str, Any]:
    """(function name, parsed arguments) of an OpenAI tool call; arguments stay a string when
    they are not valid JSON (the caller decides what that means)."""
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str):
        raise InputError("wrong_type", "tool call without a function name")
    args = fn.get("arguments", fn.get("parameters"))
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    return name, args
