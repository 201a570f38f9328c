"""VisualSketchpad output folders (``visualsketchpad``), written from the published outputs
(Yushi-Hu/VisualSketchpad ``outputs/<task>/<id>/``). One folder is one record;
:mod:`pipeline.formats.sources` finds it (a folder holding ``output.json`` beside ``request.json``,
``ex.json``, ``example.json`` or ``usage_summary.json``) and hands the adapter
``{"visualsketchpad_folder": {"task": <parent folder name>, "output": <output.json>,
"request": ..., "ex": ..., "example": ...}}`` (the sidecar files parsed, absent ones None)::

    output.json: [
      {"role": "user", "content": [{"type": "text", "text": "Here are some tools ... # USER REQUEST #: ..."}]},
      {"role": "assistant", "content": [{"type": "text", "text": "THOUGHT 0: ...\\nACTION 0:\\n```python\\n...\\n```"}]},
      {"role": "user", "content": [{"type": "text", "text": "OBSERVATION: Execution success. The output is as follows:\\n"},
                                   {"type": "image_url", "image_url": {"url": "iVBORw0KGgo..."}},   # raw base64 PNG
                                   {"type": "text", "text": "\\nMaximum flow value: 10\\n\\nPlease generate the next THOUGHT ..."}]},
      {"role": "assistant", "content": [{"type": "text", "text": "THOUGHT 1: ...\\nANSWER: 10. TERMINATE"}]}]

Rules:
  * Each assistant message is one turn: its fenced Python blocks (joined) are the cell, the rest
    of its text the reasoning (including text the model wrote after the code). "ACTION n: No
    action needed." gives a turn without code. The final answer is the text after the last
    ``ANSWER:`` up to ``TERMINATE``.
  * The user message after a cell is its observation: ``OBSERVATION: Execution success/error``
    header and the closing "Please generate the next THOUGHT ..." instruction are dropped, the
    rest (stdout, or the error and traceback) is the recorded text, its image parts (raw base64
    PNG, no ``data:`` prefix) the recorded images. UUID-named PNGs in the folder are the
    executor's saved displays; only what ``output.json`` holds counts as observed.
  * Question and ground truth: geometry ``ex.json`` (``problem_text`` and ``choices``; the
    ``answer`` letter is resolved to its choice, e.g. "D" -> "90"); math/graph ``example.json``
    (``label``; the question is the first prompt's ``USER REQUEST`` up to "Now please generate");
    vision ``request.json`` (``query``; ``answer`` when present).
  * Input images: the folder's ``image.png`` (geometry); its path stays the one the prompt wrote
    in ``<img src='...'>`` (another machine's path) so the sandbox maps it there. Vision tasks'
    ``request.json`` ``images`` resolve beside the folder.
  * The notebook VisualSketchpad runs cells in has already run ``from PIL import Image`` (and,
    for vision tasks, loaded the inputs as ``image_1``, ``image_2``, ...), and ``tools.py`` is
    imported for the model. The first cell therefore gets a marked preamble doing the same; when
    a cell calls a helper whose code the prompt shows (the geometry prompt prints its tools.py
    helpers), that code is put in the preamble of the first cell calling it.
  * A cell calling one of VisualSketchpad's tools that the sandbox cannot have
    (``segment_and_mark``, ``detection``, ``sliding_window_detection``, ``depth``: vision-model
    servers; ``crop_image``, ``zoom_in_image_by_bbox``, ``overlay_images`` when no code for them is
    given) is ``invalid_input:unsupported_tool:<name>``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    drop_image_tokens,
    resolve_image,
    turn,
)
from pipeline.formats.chat import Msg, load_refs, normalize_messages
from pipeline.formats.sources import SKETCHPAD_KEY
from pipeline.formats.zoom_tools import unsupported_tool
from schemas import sample as S

# VisualSketchpad agent/tools.py (Yushi-Hu/VisualSketchpad @ 3bc765d)
VISION_TOOLS = ("segment_and_mark", "detection", "sliding_window_detection", "depth")
HELPER_TOOLS = ("crop_image", "zoom_in_image_by_bbox", "overlay_images")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)
_OBS_HEADER = re.compile(r"^\s*OBSERVATION:\s*Execution (?:success|error)\.?\s*(?:The output is as follows:)?\s*", re.I)
_OBS_TRAILER = re.compile(r"\s*(?:Please generate the next THOUGHT|If you can get the answer).*$", re.S)
_ANSWER = re.compile(r"ANSWER:\s*(.*?)\s*(?:TERMINATE|$)", re.S)
_IMG_SRC = re.compile(r"<img src=['\"]([^'\"]+)['\"]\s*/?>")
PREAMBLE = "# twi-curate: what VisualSketchpad's notebook ran before the first action\nfrom PIL import Image\n"


def _calls(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", code) is not None


def _defines(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(re.findall(r"(?m)^def\s+(\w+)", code))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)} | {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    }


def prompt_helpers(prompt: str) -> tuple[str, set[str]]:
    """(source, names) of the helper functions the prompt shows as tools.py code: fenced blocks
    before the first example ACTION that define top-level functions."""
    head = prompt.split("ACTION 0", 1)[0]
    blocks = [b for b in _FENCE.findall(head) if re.search(r"(?m)^def\s+\w+", b)]
    names = set().union(*(_defines(b) for b in blocks)) if blocks else set()
    return "\n".join(blocks), names


def _assistant(text: str) -> tuple[str, str | None, str | None]:
    """(reasoning, code or None, answer or None) of one assistant message."""
    blocks = _FENCE.findall(text)
    reasoning = _FENCE.sub("", text)
    if "```" in reasoning:
        raise InputError("unterminated_code", "``` fence opened but never closed")
    found = _ANSWER.findall(reasoning)
    answer = found[-1].strip().rstrip(".").strip() if found else None
    code = "\n".join(b if b.endswith("\n") else b + "\n" for b in blocks) if blocks else None
    return reasoning.strip(), code, answer or None


def _observation_text(text: str) -> str | None:
    text = _OBS_TRAILER.sub("", _OBS_HEADER.sub("", drop_image_tokens(text)))
    return text.strip() or None


def _question_and_truth(data: dict[str, Any], prompt: str) -> tuple[str, str | None]:
    ex, example, request = data.get("ex"), data.get("example"), data.get("request")
    if isinstance(ex, dict) and isinstance(ex.get("problem_text"), str):
        choices = ex.get("choices") if isinstance(ex.get("choices"), list) else []
        question = ex["problem_text"]
        if choices:
            question += "\nChoices: " + "  ".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(choices))
        truth = ex.get("answer")
        if isinstance(truth, str) and len(truth) == 1 and 0 <= ord(truth.upper()) - 65 < len(choices):
            truth = choices[ord(truth.upper()) - 65]
        return question, None if truth is None else str(truth)
    truth = None
    if isinstance(example, dict) and example.get("label") is not None:
        truth = str(example["label"])
    if isinstance(request, dict) and isinstance(request.get("query"), str) and request["query"].strip():
        answer = request.get("answer", request.get("label"))
        return request["query"].strip(), truth if answer is None else str(answer)
    found = re.findall(r"USER REQUEST\s*#:\s*(.*?)(?:\n\s*Now please generate|\n# RESULT #:|\Z)", prompt, re.S)
    question = found[-1].strip() if found else ""
    if not question:
        raise InputError("missing_field:question", "no ex.json/example.json/request.json question and no USER REQUEST in the prompt")
    return question, truth


class VisualSketchpad:
    name = "visualsketchpad"

    def detect(self, record: dict[str, Any]) -> bool:
        return isinstance(record.get(SKETCHPAD_KEY), dict)

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        data = record.get(SKETCHPAD_KEY)
        if not isinstance(data, dict):
            raise InputError(f"missing_field:{SKETCHPAD_KEY}")
        output = data.get("output")
        if isinstance(output, dict) and "error" in output:
            raise InputError("empty_trajectory", f"the VisualSketchpad run failed: {str(output['error'])[:300]}")
        if not isinstance(output, list) or not output:
            raise InputError("missing_field:output", "output.json must hold the list of messages")
        msgs = normalize_messages({"messages": output}, match_images=False)
        if msgs[0].role != "user":
            raise InputError("unsupported_turns", "output.json does not start with the user prompt")
        prompt = drop_image_tokens(msgs[0].text)
        question, truth = _question_and_truth(data, prompt)
        images = self._inputs(data, msgs[0], prompt, ctx)
        helpers, helper_names = prompt_helpers(prompt)
        turns, answer = self._turns(msgs[1:], ctx)
        self._check_tools(turns, helper_names)
        self._preamble(turns, data, images, helpers, helper_names)
        meta = {k: v for k, v in (data.get("ex") or {}).items() if k in ("source",)} if isinstance(data.get("ex"), dict) else {}
        return canonical_row(
            {**meta, "answer": truth}, ctx, self.name, question=question, images=images, turns=turns,
            final_answer=answer, ground_truth=truth, dataset=str(data.get("task") or ctx.dataset),
        )

    @staticmethod
    def _inputs(data: dict[str, Any], first: Msg, prompt: str, ctx: RecordContext) -> list[dict[str, Any]]:
        if first.image_refs:
            return load_refs(first.image_refs, ctx, "input")
        request = data.get("request")
        if isinstance(request, dict) and isinstance(request.get("images"), list):
            return load_refs(request["images"], ctx, "input")
        written = _IMG_SRC.findall(prompt)
        if not written and not (ctx.base_dir / "image.png").is_file():
            return []
        img = resolve_image("image.png", ctx, "input_0")
        if written:
            img[S.IMG_PATH] = written[-1]  # the task's path (earlier ones are the prompt's examples)
        return [img]

    @staticmethod
    def _turns(msgs: list[Msg], ctx: RecordContext) -> tuple[list[dict[str, Any]], str | None]:
        turns: list[dict[str, Any]] = []
        answer = None
        pending: int | None = None
        for m in msgs:
            if m.role == "assistant":
                reasoning, code, found = _assistant(m.text)
                answer = found if found is not None else answer
                turns.append(turn(reasoning, code))
                pending = len(turns) - 1 if code else None
            elif m.role == "user" and pending is not None:
                turns[pending][S.TURN_OBS_TEXT] = _observation_text(m.text)
                turns[pending][S.TURN_OBS_IMAGES] = load_refs(m.image_refs, ctx, f"obs_{pending}")
                pending = None
            elif m.role == "user":
                continue  # a prompt to go on after a turn without code
            elif m.role != "system":
                raise InputError("unsupported_turns", f"a {m.role} message in output.json")
        if not turns:
            raise InputError("empty_trajectory")
        return turns, answer

    @staticmethod
    def _check_tools(turns: list[dict[str, Any]], helper_names: set[str]) -> None:
        defined: set[str] = set()
        for t in turns:
            code = t[S.TURN_CODE]
            if not code:
                continue
            defined |= _defines(code)
            for name in VISION_TOOLS + HELPER_TOOLS:
                if name in defined or name in helper_names:
                    continue
                if _calls(code, name):
                    raise unsupported_tool(name)

    @staticmethod
    def _preamble(turns: list[dict[str, Any]], data: dict[str, Any], images: list[dict[str, Any]],
                  helpers: str, helper_names: set[str]) -> None:
        code_turns = [t for t in turns if t[S.TURN_CODE]]
        if not code_turns:
            return
        first = code_turns[0]
        pre = PREAMBLE
        if isinstance(data.get("request"), dict) and images:
            pre += "".join(f"image_{k + 1} = images[{k}]\n" for k in range(len(images)))
        first[S.TURN_CODE] = pre + "# twi-curate: end of preamble\n" + first[S.TURN_CODE]
        if not helpers:
            return
        defined: set[str] = set()
        for t in code_turns:
            needed = any(_calls(t[S.TURN_CODE], n) for n in helper_names - defined)
            if needed:
                t[S.TURN_CODE] = (
                    "# twi-curate: the tools.py helpers the prompt shows (imported for the model)\n"
                    + helpers.rstrip("\n") + "\n# twi-curate: end of helpers\n" + t[S.TURN_CODE]
                )
                return
            defined |= _defines(t[S.TURN_CODE])


ADAPTER = VisualSketchpad()
