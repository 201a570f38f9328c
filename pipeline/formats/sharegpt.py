"""LLaMA-Factory "sharegpt" multimodal records as DeepEyesV2 uses them (``sharegpt``)::

    {"messages": [
       {"role": "user", "content": "<image>\\nWhat is the value at the red marker?"},
       {"role": "assistant", "content": "<think>Crop it.</think>\\n<code>\\n```python\\n...\\n```\\n</code>"},
       {"role": "user", "content": "Code execution result:\\nstdout:\\n```\\n(120, 80)\\n```\\n"
                                   "stderr:\\n```\\n\\n```\\nImages:\\n<image>"},
       {"role": "assistant", "content": "<think>The crop reads 42.</think>\\n<answer>42</answer>"}],
     "images": ["images/q1.png", "images/q1_out0.png"]}

``conversations`` with ``from``/``value`` (human/gpt/observation) is accepted too. The
``<image>`` placeholders of all messages take the ``images`` entries in order (their counts must
be equal); those in the prompt are the inputs, those in an observation are what its cell
produced. A code cell's observation is the next user message starting ``Code execution result:``
(its ``stdout:`` and ``stderr:`` blocks are the recorded text) or a ``tool``/``observation``
message. The final answer is the last ``<answer>...</answer>``.

A plain multimodal chat (image + question + an assistant reply, no code, no tool call) is a valid
sample without code: its final answer is the last ``<answer>``, else the last assistant text.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    clean_text,
    drop_image_tokens,
    split_answer,
    split_code_blocks,
    turn,
)
from pipeline.formats.chat import (
    Msg,
    chat_prompt,
    has_chat,
    load_refs,
)
from schemas import sample as S

RESULT_PREFIX = "Code execution result:"
_LABELS = ("stdout:", "stderr:", "Images:")


def _section(text: str, label: str) -> str:
    """Content of one ``label:`` section: its fenced block, or the text up to the next label."""
    m = re.search(rf"(?m)^\s*{re.escape(label)}[ \t]*\n?", text)
    if not m:
        return ""
    rest = text[m.end() :]
    fence = re.match(r"\s*```[^\n]*\n(.*?)```", rest, re.S)
    if fence:
        return fence.group(1)
    stops = [i for i in (rest.find(lbl) for lbl in _LABELS if lbl != label) if i >= 0]
    return rest[: min(stops)] if stops else rest


def execution_result_text(text: str) -> str | None:
    """``Code execution result:`` message -> recorded output text (stdout, then stderr)."""
    body = text.split(RESULT_PREFIX, 1)[1]
    stdout, stderr = _section(body, "stdout:"), _section(body, "stderr:")
    if not stdout and not stderr and "stdout:" not in body:
        stdout = body.split("Images:", 1)[0]
    out = stdout.strip("\n")
    if stderr.strip():
        out = f"{out}\n{stderr.strip()}" if out else stderr.strip()
    return drop_image_tokens(out) or None


def assistant_turns(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """One assistant message -> its turns (a turn per ``<code>`` cell, plus trailing reasoning)
    and its ``<answer>`` if any."""
    body, answer = split_answer(text)
    turns = []
    for before, code in split_code_blocks(body):
        reasoning = clean_text(before)
        if code is not None or reasoning:
            turns.append(turn(reasoning, code))
    return turns, answer


def chat_trajectory(
    msgs: list[Msg],
    ctx: RecordContext,
    parse_assistant: Any,
    parse_observation: Any,
) -> tuple[list[dict[str, Any]], str | None]:
    """Walk the messages after the prompt: assistant messages give turns, the message after a
    code turn gives its observation (``parse_observation(msg) -> text or None``, images from the
    message's placeholders). Returns (turns, final answer)."""
    turns: list[dict[str, Any]] = []
    answer = None
    awaiting = False
    for m in msgs:
        if m.role == "assistant":
            new, found = parse_assistant(m.text)
            answer = found if found is not None else answer
            turns.extend(new)
            awaiting = bool(new) and bool(new[-1][S.TURN_CODE])
        elif m.role in ("user", "tool") and awaiting:
            k = len(turns) - 1
            turns[k][S.TURN_OBS_TEXT] = parse_observation(m)
            turns[k][S.TURN_OBS_IMAGES] = load_refs(m.image_refs, ctx, f"obs_{k}")
            awaiting = False
        elif m.role == "system":
            continue
        else:
            raise InputError("unsupported_turns", f"a {m.role} message that is not a code result")
    return turns, answer


def _observation(m: Msg) -> str | None:
    text = m.text.strip()
    if text.startswith(RESULT_PREFIX):
        return execution_result_text(text)
    if m.role == "tool":
        return drop_image_tokens(text) or None
    raise InputError("unsupported_turns", "a user message after a code cell that is not 'Code execution result:'")


class ShareGPT:
    name = "sharegpt"

    def detect(self, record: dict[str, Any]) -> bool:
        return has_chat(record)

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question, images, rest = chat_prompt(record, ctx, drop_image_tokens)
        turns, answer = chat_trajectory(rest, ctx, assistant_turns, _observation)
        if not any(t[S.TURN_CODE] for t in turns):  # plain multimodal chat: a sample without code
            said = [m.text for m in rest if m.role == "assistant" and m.text.strip()]
            if answer is None and said:
                answer = clean_text(split_answer(said[-1])[0]) or None
            if not turns and answer is not None:
                turns = [turn(answer)]
        if not turns:
            raise InputError("empty_trajectory")
        return canonical_row(
            record, ctx, self.name,
            question=question, images=images, turns=turns, final_answer=answer,
        )


ADAPTER = ShareGPT()
