"""DeepEyes rollout logs as its V* evaluation saves them (``deepeyes_rollout``).

Written from the published records (Visual-Agent/DeepEyes ``eval_results/.../result_*.jsonl``,
made by ``eval/eval_vstar.py``)::

    {"image": "sa_30411.jpg", "question": "What is the color of the man's cap?",
     "answer": "The color of the man's cap is white.",              # ground truth
     "pred_ans": "...", "status": "success", "acc": 1.0,           # the model's own eval: ignored
     "pred_output": [
       {"role": "system", "content": "... <tools> image_zoom_in_tool ... </tools> ..."},
       {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,"}},
                                    {"type": "text", "text": "Question: ...\\nOptions: ..."}]},
       {"role": "assistant", "content": "<think>...</think>\\n<tool_call>\\n{\\"name\\": \\"image_zoom_in_tool\\",
                                         \\"arguments\\": {\\"bbox_2d\\": [20, 902, 42, 914], \\"label\\": \\"cap\\"}}\\n"},
       {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,"}},
                                    {"type": "text", "text": "\\nThink first, ..."}]},
       {"role": "assistant", "content": "<think>...</think> <answer>The man's cap is white.</answer>"}]}

Rules:
  * The evaluation saves every image payload emptied (``data:image/jpeg;base64,``). Those are
    placeholders, not corrupt images: the one in the prompt stands for the record's ``image``
    (a file name, looked up with :func:`pipeline.formats.base.resolve_image` beside the record's
    file, under ``--image-root`` and through ``ingest.path_map``; V* keeps it at
    ``<vstar_root>/direct_attributes/<image>``), the ones in later user turns for the zoom
    crops, which were never stored: the replay regenerates them. A payload that was not
    emptied is read as the image it holds.
  * ``<tool_call>`` is usually never closed (generation stopped there): a call runs to
    ``</tool_call>``, the next ``<tool_call>`` or the end of the message. As in the evaluation,
    only the first call of a message is executed (later ones stay in the reasoning). The call
    JSON becomes a generated cell with the evaluation's own zoom rules
    (:data:`pipeline.formats.zoom_tools.DEEPEYES_VSTAR_ZOOM`: crop as given, Qwen2.5-VL
    ``smart_resize`` to multiples of 28 with at least 4*28*28 pixels), saving ``zoom_<k>.png``.
    The user turn after a call is its observation: its text is the evaluation's instruction,
    not tool output, so no observation text is recorded.
  * The question is the prompt's text as the model saw it — ``Question: ...`` with its
    ``Options:`` lines (the scientific-accuracy judge reads an answer such as "Purple" against
    them) — without the evaluation's fixed "Think first, call **image_zoom_in_tool** ..."
    instruction; the record's bare ``question`` field is the fallback.
  * The final answer is the last ``<answer>``; the ground truth is ``answer``. ``pred_ans``,
    ``status`` and ``acc`` are the model's own evaluation and are not kept.
  * A rollout whose assistant answers without calling the tool is a plain sample (no code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    clean_text,
    drop_image_tokens,
    resolve_image,
    split_answer,
    turn,
)
from pipeline.formats.chat import Msg, normalize_messages, prompt_text, split_prompt
from pipeline.formats.zoom_tools import FAILING_CALL, deepeyes_cell
from schemas import sample as S

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# the evaluation's fixed instruction after the question and its options; the model saw the options,
# so the question is the prompt's text (options included) without this line
_INSTRUCTION = re.compile(r"\s*Think first, call \*\*image_zoom_in_tool\*\* if needed.*\Z", re.S)


def emptied(ref: Any) -> bool:
    """An image reference whose payload was emptied (``data:image/...;base64,`` and nothing)."""
    if isinstance(ref, dict):
        ref = ref.get("url", ref.get("image_url"))
        if isinstance(ref, dict):
            ref = ref.get("url")
    return isinstance(ref, str) and ref.strip().startswith("data:") and not ref.partition(",")[2].strip()


def first_call(text: str) -> tuple[str, str | None, str]:
    """(text before the first ``<tool_call>``, its body or None, the rest after it). An unclosed
    call runs to the next ``<tool_call>`` or the end of the text."""
    start = text.find(OPEN)
    if start < 0:
        return text, None, ""
    body_start = start + len(OPEN)
    ends = [i for i in (text.find(CLOSE, body_start), text.find(OPEN, body_start)) if i >= 0]
    end = min(ends) if ends else len(text)
    closed = text.startswith(CLOSE, end)
    rest = text[end + len(CLOSE) :] if closed else text[end:]
    return text[:start], text[body_start:end], rest


def call_text(call: str, before: str, after: str, closed: bool) -> str:
    """The turn's reasoning: the text around the call and the call as written."""
    written = (OPEN + call + (CLOSE if closed else "")).strip()
    return "\n".join(p for p in (clean_text(before), written, clean_text(after)) if p)


def parse_call(body: str) -> Any:
    try:
        return json.loads(body.strip())
    except json.JSONDecodeError:
        return None


def tool_call_turns(
    rest: list[Msg],
    ctx: RecordContext,
    make_cell: Callable[[Any, int], str],
    recorded: Callable[[list[Any]], list[Any]] = list,
) -> tuple[list[dict[str, Any]], str | None]:
    """(turns, final answer) of a rollout whose assistant messages make ``<tool_call>`` calls
    (DeepEyes rollouts, Pixel-Reasoner): the first call of each message becomes the cell
    ``make_cell(parsed call, k)`` (k counts calls from 1; an unparseable call becomes a cell that
    raises), the next user/tool message is its observation (its images, filtered by
    ``recorded``); a rollout that answers without calling is a plain sample without code."""
    turns: list[dict[str, Any]] = []
    answer: str | None = None
    pending: int | None = None  # the code turn waiting for its observation
    calls = 0
    for m in rest:
        if m.role == "assistant":
            body, found = split_answer(m.text)
            answer = found if found is not None else answer
            before, call, after = first_call(body)
            if call is None:
                if clean_text(before):
                    turns.append(turn(clean_text(before)))
                pending = None
                continue
            calls += 1
            parsed = parse_call(call)
            code = (
                make_cell(parsed, calls)
                if parsed is not None
                else FAILING_CALL.format(message=f"tool call is not valid JSON: {call.strip()[:200]}")
            )
            turns.append(turn(call_text(call, before, after, CLOSE in body), code))
            pending = len(turns) - 1
        elif m.role in ("user", "tool") and pending is not None:
            turns[pending][S.TURN_OBS_IMAGES] = [
                resolve_image(r, ctx, f"obs_{pending}_{j}") for j, r in enumerate(recorded(m.image_refs))
            ]
            pending = None
        elif m.role != "system":
            raise InputError("unsupported_turns", f"a {m.role} message that answers no tool call")
    if not turns:
        if answer is None:
            raise InputError("empty_trajectory")
        turns.append(turn(answer))  # answered directly: a plain sample without code
    return turns, answer


class DeepEyesRollout:
    name = "deepeyes_rollout"

    def detect(self, record: dict[str, Any]) -> bool:
        msgs = record.get("pred_output")
        return isinstance(msgs, list) and bool(msgs) and all(isinstance(m, dict) and "role" in m for m in msgs[:4])

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        msgs = normalize_messages({"messages": record["pred_output"]}, match_images=False)
        prompt, rest = split_prompt(msgs)
        question = drop_image_tokens(_INSTRUCTION.sub("", prompt_text(prompt)))
        if not question.strip() and isinstance(record.get("question"), str):
            question = record["question"]
        if not question:
            raise InputError("missing_field:question")
        turns, answer = tool_call_turns(
            rest, ctx, lambda call, k: deepeyes_cell(call, k, rules="vstar_eval"),
            recorded=lambda refs: [r for r in refs if not emptied(r)],
        )
        images = self._inputs(record, prompt, ctx)
        return canonical_row(record, ctx, self.name, question=question, images=images, turns=turns,
                             final_answer=answer)

    @staticmethod
    def _inputs(record: dict[str, Any], prompt: list[Any], ctx: RecordContext) -> list[dict[str, Any]]:
        refs = [r for m in prompt for r in m.image_refs]
        named = record.get("image")
        if isinstance(named, list | tuple):
            named = named[0] if len(named) == 1 else None
        out = []
        for k, ref in enumerate(refs or ([named] if named is not None else [])):
            if emptied(ref):
                if not isinstance(named, str) or not named.strip():
                    raise InputError("missing_image", "the prompt's image payload was emptied and the record names no `image` file")
                ref = named
            out.append(resolve_image(ref, ctx, f"input_{k}"))
        return out


ADAPTER = DeepEyesRollout()
