"""Zoom-tool trajectories (no code of their own): DeepEyes ``<tool_call>`` and Mini-o3 ``<grounding>``.

Both are chat records (``messages`` or ``conversations`` + ``images``, ``<image>`` placeholders
matched in order, as in :mod:`pipeline.formats.sharegpt`)::

    DeepEyes (deepeyes):
      assistant: "<think>The label is tiny.</think>\\n<tool_call>{\\"name\\": \\"image_zoom_in_tool\\",
                  \\"arguments\\": {\\"bbox_2d\\": [410, 220, 560, 300], \\"label\\": \\"sign\\"}}</tool_call>"
      user:      "<tool_response><image></tool_response>"          # bbox in pixels of the original
    Mini-o3 (mini_o3):
      assistant: "<think>...</think>\\n<grounding>{\\"bbox_2d\\": [0.41, 0.22, 0.56, 0.30],
                  \\"source\\": \\"original_image\\"}</grounding>"
      user:      "<image>"                                            # bbox normalised to 0-1

Each call becomes an equivalent generated Python cell, so the sandbox replays it like any other
cell: it opens the source image (``images[0]``, the sandbox's first input, or the file
``observation_<i>.png`` a previous Mini-o3 cell wrote), applies the tool's own box rules
(DeepEyes: clamp to the image, reject inverted boxes and aspect ratios > 100, widen boxes
thinner than 28 px around their centre; Mini-o3: scale by the source size, truncate to int,
clamp), crops, upscales small crops by an integer factor (up to 4x, to about 512 px) with
Lanczos, and saves a PNG in the cwd (DeepEyes ``zoom_<k>.png``, Mini-o3 ``observation_<k>.png``,
k counting calls from 1). A call that cannot be parsed becomes a cell that raises, so the
replay reports it. The call text stays in the turn's reasoning. DeepEyes'
``image_rotate_tool`` (``angle``) is replayed the same way; other tool names are rejected as
``invalid_input:unsupported_tool:<name>``.

Two DeepEyes rule sets exist, read from Visual-Agent/DeepEyes:
  * ``toolbox`` (the RL tool, ``verl/workers/agent/envs/mm_process_engine/visual_toolbox_v6.py``
    ``maybe_resize_bbox`` @ c95288a): the rules above (clamp, validate, widen to 28 px).
  * ``vstar_eval`` (what wrote the published V* rollout logs, ``eval/eval_vstar.py`` @ cc3ff4d,
    used by :mod:`pipeline.formats.deepeyes_rollout`): the box is cropped exactly as given (no
    clamping: PIL fills outside the image with black), then resized with Qwen2.5-VL's
    ``smart_resize`` (each side rounded to a multiple of 28, at least 28; area at least 4*28*28
    and at most 16384*28*28 pixels), bicubic. That resize is the tool's minimum box size. The
    generated cell saves ``zoom_<k>.png``.

Tools the sandbox can never have (vision models, detectors, OCR services: ``NON_REPLAYABLE_TOOLS``)
are rejected with ``invalid_input:unsupported_tool:<name>`` by every adapter (:func:`unsupported_tool`).
"""

from __future__ import annotations

import json
import re
from numbers import Real
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
    Msg,
    all_text,
    chat_prompt,
    has_chat,
)
from pipeline.formats.sharegpt import chat_trajectory

UPSCALE = """\
scale = max(1, min(4, 512 // max(crop.size)))
zoom = crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.LANCZOS)
zoom.save({out!r})
print({out!r}, "box", box, "->", zoom.size)
"""

DEEPEYES_ZOOM = """\
# twi-curate: replay of a DeepEyes image_zoom_in_tool call (bbox_2d in pixels of the original image)
import math

from PIL import Image

src = images[0]
left, top, right, bottom = {bbox!r}
left, top, right, bottom = max(0, left), max(0, top), min(src.width, right), min(src.height, bottom)
if not (left < right and top < bottom) or max(right - left, bottom - top) / min(right - left, bottom - top) > 100:
    raise ValueError(f"invalid zoom box {{(left, top, right, bottom)}} for a {{src.size}} image")
if right - left < 28 or bottom - top < 28:  # the tool widens thin boxes to 28 px around their centre
    cx, cy, ratio = (left + right) / 2, (top + bottom) / 2, 28 / min(right - left, bottom - top)
    half_w, half_h = math.ceil((right - left) * ratio / 2), math.ceil((bottom - top) * ratio / 2)
    left, right = math.floor(cx - half_w), math.ceil(cx + half_w)
    top, bottom = math.floor(cy - half_h), math.ceil(cy + half_h)
box = (left, top, right, bottom)
crop = src.crop(box)
"""

DEEPEYES_ROTATE = """\
# twi-curate: replay of a DeepEyes image_rotate_tool call
from PIL import Image

box = None
crop = images[0].rotate({angle!r}, expand=True)
"""

MINI_O3_GROUNDING = """\
# twi-curate: replay of a Mini-o3 grounding call (bbox_2d normalised to 0-1 of its source image)
from PIL import Image

src = {source}
w, h = src.size
x0, y0, x1, y1 = (int(v * s) for v, s in zip({bbox!r}, (w, h, w, h)))
x0, y0 = max(0, min(x0, w - 1)), max(0, min(y0, h - 1))
x1, y1 = max(1, min(x1, w)), max(1, min(y1, h))
if x0 >= x1 or y0 >= y1:
    raise ValueError(f"invalid grounding box {{(x0, y0, x1, y1)}} for a {{src.size}} image")
box = (x0, y0, x1, y1)
crop = src.crop(box)
"""

DEEPEYES_VSTAR_ZOOM = """\
# twi-curate: replay of a DeepEyes V* evaluation zoom (Visual-Agent/DeepEyes eval/eval_vstar.py):
# crop the box as given, resize with Qwen2.5-VL smart_resize (factor 28, 4*28*28..16384*28*28 px), bicubic
import math

from PIL import Image

src = images[0]
left, top, right, bottom = {bbox!r}
box = (left, top, right, bottom)
crop = src.crop(box)
width, height = right - left, bottom - top
factor, min_pixels, max_pixels = 28, 4 * 28 * 28, 16384 * 28 * 28
new_w = max(factor, round(width / factor) * factor)
new_h = max(factor, round(height / factor) * factor)
if new_w * new_h > max_pixels:
    beta = math.sqrt((width * height) / max_pixels)
    new_w = math.floor(width / beta / factor) * factor
    new_h = math.floor(height / beta / factor) * factor
elif new_w * new_h < min_pixels:
    beta = math.sqrt(min_pixels / (width * height))
    new_w = math.ceil(width * beta / factor) * factor
    new_h = math.ceil(height * beta / factor) * factor
zoom = crop.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
zoom.save({out!r})
print({out!r}, "box", box, "->", zoom.size)
"""

# Tools whose results come from a model or a service the replay sandbox cannot have. A trajectory
# calling one (as a tool call, or from its code where the format says so) cannot be replayed and
# is rejected as unsupported_tool:<name>. VisualSketchpad's vision experts are listed from
# Yushi-Hu/VisualSketchpad agent/tools.py (@ 3bc765d): segment_and_mark (Set-of-Mark server),
# detection and sliding_window_detection (Grounding DINO server), depth (Depth-Anything server).
NON_REPLAYABLE_TOOLS = frozenset({
    "segment_and_mark", "detection", "sliding_window_detection", "depth",
    "som", "set_of_mark", "grounding_dino", "groundingdino", "grounded_sam", "segment_anything", "sam",
    "object_detection", "detect_objects", "detector", "ocr", "paddleocr", "easyocr", "google_ocr",
    "depth_estimation", "image_captioning", "caption_image", "vqa", "web_search", "image_search",
})


def unsupported_tool(name: Any) -> InputError:
    """``InputError('unsupported_tool:<name>')`` (name made machine-readable) for a tool the
    replay cannot run; the detail says why and what to do."""
    text = name if isinstance(name, str) else repr(name)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "unnamed"
    known = "a vision model or service" if is_non_replayable(text) else "a tool the replay does not know"
    return InputError(
        f"unsupported_tool:{safe}",
        f"the trajectory calls {text[:100]!r}, {known}: the sandbox cannot run it, so the trajectory "
        "cannot be replayed (drop such records or replay them where the tool exists)",
    )


def is_non_replayable(name: str) -> bool:
    low = name.lower()
    return low in NON_REPLAYABLE_TOOLS or low.startswith("som_")


FAILING_CALL = "# twi-curate: this tool call cannot be replayed as written\nraise ValueError({message!r})\n"


def _four_numbers(value: Any) -> list[float | int] | None:
    if isinstance(value, list | tuple) and len(value) == 4 and all(
        isinstance(v, Real) and not isinstance(v, bool) for v in value
    ):
        return [v if isinstance(v, int) else float(v) for v in value]
    return None


def _calls(text: str, tag: str) -> list[tuple[str, str, str]]:
    """[(text before, call body, full call text)] for each ``<tag>...</tag>``; trailing text
    is returned as ('rest', '', '') by the caller's split."""
    out = []
    pos = 0
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    while True:
        start = text.find(open_t, pos)
        if start < 0:
            if close_t in text[pos:]:
                raise InputError("unterminated_code", f"{close_t} without {open_t}")
            out.append((text[pos:], "", ""))
            return out
        end = text.find(close_t, start)
        if end < 0:
            raise InputError("unterminated_code", f"{open_t} without {close_t}")
        out.append((text[pos:start], text[start + len(open_t) : end], text[start : end + len(close_t)]))
        pos = end + len(close_t)


def _json(body: str) -> Any:
    try:
        return json.loads(body.strip())
    except json.JSONDecodeError:
        return None


class _ZoomAdapter:
    name = ""
    tag = ""

    def detect(self, record: dict[str, Any]) -> bool:
        return has_chat(record) and f"<{self.tag}>" in all_text(record)

    def cell(self, body: str, k: int) -> str:
        raise NotImplementedError

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question, images, rest = chat_prompt(record, ctx, drop_image_tokens)
        counter = [0]

        def parse_assistant(text: str) -> tuple[list[dict[str, Any]], str | None]:
            body, answer = split_answer(text)
            turns = []
            for before, call_body, call_text in _calls(body, self.tag):
                if call_text:
                    counter[0] += 1
                    reasoning = (clean_text(before) + "\n" + call_text).strip()
                    turns.append(turn(reasoning, self.cell(call_body, counter[0])))
                elif clean_text(before):
                    turns.append(turn(clean_text(before)))
            return turns, answer

        turns, answer = chat_trajectory(rest, ctx, parse_assistant, _observation)
        if not turns:
            raise InputError("empty_trajectory")
        return canonical_row(
            record, ctx, self.name,
            question=question, images=images, turns=turns, final_answer=answer,
        )


def _observation(m: Msg) -> str | None:
    text = re.sub(r"</?tool_response>", "", m.text)
    return drop_image_tokens(text) or None


def deepeyes_cell(call: Any, k: int, rules: str = "toolbox") -> str:
    """A DeepEyes tool call (parsed JSON: {"name", "arguments"}) -> the equivalent Python cell,
    with the ``toolbox`` (RL tool) or ``vstar_eval`` (V* evaluation script) box rules."""
    out = f"zoom_{k}.png"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return FAILING_CALL.format(message=f"tool call is not a JSON object with a name: {str(call)[:200]}")
    args = call.get("arguments")
    if isinstance(args, str):
        args = _json(args)
    args = args if isinstance(args, dict) else {}
    if call["name"] == "image_zoom_in_tool":
        bbox = _four_numbers(args.get("bbox_2d"))
        if bbox is None:
            return FAILING_CALL.format(message=f"bbox_2d must be four numbers, got {args.get('bbox_2d')!r}"[:300])
        if rules == "vstar_eval":
            return DEEPEYES_VSTAR_ZOOM.format(bbox=tuple(bbox), out=out)
        return DEEPEYES_ZOOM.format(bbox=tuple(bbox)) + UPSCALE.format(out=out)
    if call["name"] == "image_rotate_tool":
        angle = args.get("angle")
        if not isinstance(angle, Real) or isinstance(angle, bool):
            return FAILING_CALL.format(message=f"angle must be a number, got {angle!r}"[:300])
        return DEEPEYES_ROTATE.format(angle=angle) + UPSCALE.format(out=out)
    raise unsupported_tool(call["name"])


class DeepEyes(_ZoomAdapter):
    name = "deepeyes"
    tag = "tool_call"

    def cell(self, body: str, k: int) -> str:
        call = _json(body)
        if call is None:
            return FAILING_CALL.format(message=f"tool call is not valid JSON: {body.strip()[:200]}")
        return deepeyes_cell(call, k)


class MiniO3(_ZoomAdapter):
    name = "mini_o3"
    tag = "grounding"

    def cell(self, body: str, k: int) -> str:
        call = _json(body)
        if not isinstance(call, dict):
            return FAILING_CALL.format(message=f"grounding call is not a JSON object: {body.strip()[:200]}")
        bbox = _four_numbers(call.get("bbox_2d"))
        if bbox is None:
            return FAILING_CALL.format(message=f"bbox_2d must be four numbers, got {call.get('bbox_2d')!r}"[:300])
        source = call.get("source", "original_image")
        m = re.fullmatch(r"observation_(\d+)", source) if isinstance(source, str) else None
        if source in (None, "", "original_image") or (m and int(m.group(1)) == 0):
            src = "images[0]"
        elif m:
            src = f"Image.open({f'observation_{int(m.group(1))}.png'!r})"
        else:
            return FAILING_CALL.format(message=f"unknown grounding source {source!r}"[:300])
        return MINI_O3_GROUNDING.format(source=src, bbox=tuple(bbox)) + UPSCALE.format(out=f"observation_{k}.png")


DEEPEYES = DeepEyes()
MINI_O3 = MiniO3()
