"""OpenAI chat messages with tool calls (``openai_tools``)::

    {"messages": [
       {"role": "user", "content": [{"type": "text", "text": "What is ...?"},
                                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]},
       {"role": "assistant", "content": "I'll measure it.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "python", "arguments": "{\\"code\\": \\"print(1 + 1)\\"}"}}]},
       {"role": "tool", "tool_call_id": "call_1", "content": "2"},
       {"role": "assistant", "content": "The answer is 2. <answer>2</answer>"}],
     "answer": "2"}

Every tool call whose arguments hold ``code`` (any name: ``python``, ``code_interpreter``,
``execute_python``, ...) is a code cell; so is a ``python``/``code_interpreter`` call whose
arguments are raw source rather than JSON. ``image_zoom_in_tool`` / ``image_rotate_tool`` calls
are replayed as the generated cells of :mod:`pipeline.formats.zoom_tools`; other tools are
rejected (``invalid_input:unsupported_tool:<name>``), as is any call to a vision model or service
(``zoom_tools.NON_REPLAYABLE_TOOLS``). The ``tool`` message with the matching
``tool_call_id`` is the observation; images a tool produced may follow in the next ``user``
message (the Chat Completions API allows images only there), and count as that observation's
images. The final answer is the last ``<answer>...</answer>``, else the last assistant text.
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    clean_text,
    drop_image_tokens,
    split_answer,
    turn,
)
from pipeline.formats.chat import (
    chat_prompt,
    has_chat,
    load_refs,
    tool_arguments,
)
from pipeline.formats.zoom_tools import deepeyes_cell, is_non_replayable, unsupported_tool
from schemas import sample as S

RAW_CODE_TOOLS = ("python", "code_interpreter", "python_interpreter", "execute_python", "run_python")
ZOOM_TOOLS = ("image_zoom_in_tool", "image_rotate_tool")


class OpenAITools:
    name = "openai_tools"

    def detect(self, record: dict[str, Any]) -> bool:
        if not has_chat(record):
            return False
        msgs = record.get("messages") or []
        return any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in msgs)

    def _cell(self, call: dict[str, Any], zooms: list[int]) -> str:
        name, args = tool_arguments(call)
        if is_non_replayable(name):
            raise unsupported_tool(name)
        if isinstance(args, dict) and isinstance(args.get("code"), str):
            return args["code"]
        if name in ZOOM_TOOLS:
            zooms[0] += 1
            return deepeyes_cell({"name": name, "arguments": args}, zooms[0])
        if isinstance(args, str) and name in RAW_CODE_TOOLS:
            return args
        raise unsupported_tool(name)

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question, images, rest = chat_prompt(record, ctx, drop_image_tokens)
        turns: list[dict[str, Any]] = []
        by_call: dict[str, int] = {}
        pending: list[int] = []  # code turns still waiting for their tool message
        last_answered: int | None = None
        answer: str | None = None
        last_text: str | None = None
        zooms = [0]
        for m in rest:
            if m.role == "assistant":
                body, found = split_answer(m.text)
                answer = found if found is not None else answer
                reasoning = clean_text(body)
                if m.tool_calls:
                    for j, call in enumerate(m.tool_calls):
                        turns.append(turn(reasoning if j == 0 else "", self._cell(call, zooms)))
                        pending.append(len(turns) - 1)
                        if isinstance(call.get("id"), str):
                            by_call[call["id"]] = len(turns) - 1
                    last_text = None
                elif reasoning:
                    turns.append(turn(reasoning))
                    last_text = reasoning
                last_answered = None
            elif m.role == "tool":
                k = by_call.get(m.tool_call_id or "", pending[0] if pending else None)
                if k is None or k not in pending:
                    raise InputError("unsupported_turns", "a tool message that answers no pending tool call")
                pending.remove(k)
                turns[k][S.TURN_OBS_TEXT] = drop_image_tokens(m.text) or None
                turns[k][S.TURN_OBS_IMAGES] = load_refs(m.image_refs, ctx, f"obs_{k}")
                last_answered = k
            elif m.role == "user" and last_answered is not None:
                k = last_answered
                turns[k][S.TURN_OBS_IMAGES] += load_refs(m.image_refs, ctx, f"obs_{k}_u")
                extra = drop_image_tokens(m.text)
                if extra:
                    turns[k][S.TURN_OBS_TEXT] = "\n".join(x for x in (turns[k][S.TURN_OBS_TEXT], extra) if x)
            elif m.role != "system":
                raise InputError("unsupported_turns", f"a {m.role} message in the middle of the trajectory")
        if not turns:
            raise InputError("empty_trajectory")
        if answer is None and last_text:
            answer = last_text
        return canonical_row(
            record, ctx, self.name,
            question=question, images=images, turns=turns, final_answer=answer,
        )


ADAPTER = OpenAITools()
