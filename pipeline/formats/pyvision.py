"""PyVision / PyVision-RL (agents-x-project): trajectories (``pyvision``) and RL inputs (``pyvision_rl``).

Trajectory: OpenAI-style ``messages`` with images as ``image_url`` data-URL parts, each wrapped
in ``<image_clue_K>`` ... ``</image_clue_K>`` text parts::

    {"messages": [
       {"role": "user", "content": [{"type": "text", "text": "<image_clue_0>"},
                                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                                    {"type": "text", "text": "</image_clue_0>\\n\\nWhat is ...?"}]},
       {"role": "assistant", "content": "Let me zoom.\\n<code>\\n```python\\n...\\n```\\n</code>\\n"},
       {"role": "user", "content": [{"type": "text", "text": "<interpreter>\\nText Result:\\n42\\nImage Result:\\n"},
                                    {"type": "text", "text": "<image_clue_1>"}, {"type": "image_url", ...},
                                    {"type": "text", "text": "</image_clue_1>"},
                                    {"type": "text", "text": "</interpreter>\\n"}]},
       {"role": "assistant", "content": "... <answer>\\\\boxed{42}</answer>"}],
     "question": "What is ...?", "answer": "42"}                       # optional

The observation of a cell is the next user message ``<interpreter>`` ... ``</interpreter>``
(in PyVision-RL wrapped in ``<tool_response>``): ``Text Result:`` is the recorded text (a
literal ``None`` means no output), the images after ``Image Result:`` are what the cell
produced; an interpreter message without those sections holds the error. PyVision exposes the
input images to the code as ``image_clue_0``, ``image_clue_1``, ... (PIL images); so does the
replay sandbox, so the code is kept exactly as written.

RL input (one JSON object or a JSON array of them)::

    {"id": "...", "question": "<image>\\nWhat is ...?", "answer": "42", "ability": "math",
     "data_source": "mmk12", "image_path": "images/q.png"}

has no trajectory: it is kept as a sample without turns (routing rejects it as ``no_trajectory``).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    drop_image_tokens,
    resolve_image,
    text_field,
)
from pipeline.formats.chat import (
    Msg,
    all_text,
    chat_prompt,
    has_chat,
)
from pipeline.formats.sharegpt import assistant_turns, chat_trajectory

_CLUE_TAG = re.compile(r"</?image_clue_\d+>")
_INTERPRETER = re.compile(r"<interpreter>(.*?)(?:</interpreter>|$)", re.S)


def _plain(text: str) -> str:
    return drop_image_tokens(_CLUE_TAG.sub("", text)).strip()


def interpreter_text(m: Msg) -> str | None:
    """Recorded text of an ``<interpreter>`` observation (Text Result, or the error)."""
    text = re.sub(r"</?tool_response>", "", m.text)
    found = _INTERPRETER.search(text)
    if not found:
        raise InputError("unsupported_turns", "a user message after a code cell that is not an <interpreter> result")
    inner = found.group(1)
    if "Text Result:" in inner:
        result = inner.split("Text Result:", 1)[1].split("Image Result:", 1)[0]
    else:  # PyVision writes the error report alone inside <interpreter>
        result = inner
    result = _plain(result)
    return None if result in ("", "None") else result


class PyVision:
    name = "pyvision"

    def detect(self, record: dict[str, Any]) -> bool:
        if not has_chat(record):
            return False
        text = all_text(record)
        return "<interpreter>" in text or "<image_clue_" in text

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question, images, rest = chat_prompt(record, ctx, _plain)
        turns, answer = chat_trajectory(rest, ctx, assistant_turns, interpreter_text)
        if not turns:
            raise InputError("empty_trajectory")
        return canonical_row(record, ctx, self.name, question=question, images=images, turns=turns, final_answer=answer)


class PyVisionRLInput:
    name = "pyvision_rl"

    def detect(self, record: dict[str, Any]) -> bool:
        return "image_path" in record and "question" in record and not has_chat(record)

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question = text_field(record.get("question"), "question", required=True)
        refs = record.get("image_path")
        refs = [refs] if isinstance(refs, str | bytes | dict) else refs
        if not isinstance(refs, list):
            raise InputError("wrong_type", "image_path must be a path or a list of paths")
        placeholders = question.count("<image>")
        if placeholders and placeholders != len(refs):
            raise InputError("image_placeholder_mismatch", f"{placeholders} <image> for {len(refs)} images")
        images = [resolve_image(r, ctx, f"input_{k}") for k, r in enumerate(refs)]
        return canonical_row(
            record, ctx, self.name, question=_plain(question), images=images, turns=[], final_answer=None
        )


PYVISION = PyVision()
RL_INPUT = PyVisionRLInput()
