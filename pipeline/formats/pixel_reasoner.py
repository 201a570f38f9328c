"""Pixel-Reasoner SFT records (``pixel_reasoner``), written from the published ``message_list``
records (MEKSAAA/Pixel-Reasoner ``ad-dt/train338cross.json``, a JSON array)::

    {"qid": "mmad_train_0", "id": "/NEW_EDS/.../000.png",
     "message_list": [
       {"role": "system", "content": [{"text": "... <tools> crop_image_normalized ... </tools> ..."}]},
       {"role": "user", "content": [{"text": "Evaluate the following image ..."}, {"image": "/NEW_EDS/.../000.png"}]},
       {"role": "assistant", "content": [{"text": "... <tool_call>{\\"name\\": \\"crop_image_normalized\\",
            \\"arguments\\": {\\"bbox_2d\\": [0.24, 0.27, 0.34, 0.4], \\"target_image\\": 1}}</tool_call>"}]},
       {"role": "user", "content": [{"text": "Here is the cropped image:"}, {"image": "/NEW_EDS/.../crop.png"}]},
       {"role": "assistant", "content": [{"text": "<think>...</think><answer>{...}</answer>"}]}]}

Rules:
  * Content parts carry no ``type``: ``{"text"}`` or ``{"image": path}`` (Qwen-VL style). Every
    path goes through :func:`pipeline.formats.base.resolve_image` (``--image-root`` and
    ``ingest.path_map`` remap another machine's absolute paths); an unresolvable one is
    ``invalid_input:missing_image`` naming the paths looked for.
  * The question is the prompt's user text; the prompt's images are the inputs. No field holds a
    ground truth (``qid``/``id`` are identifiers), so it stays empty.
  * Each ``<tool_call>`` to ``crop_image_normalized`` becomes a generated cell following
    Pixel-Reasoner's own tool (TIGER-AI-Lab/Pixel-Reasoner @ 3f5cf78,
    ``curiosity_driven_rl/openrlhf/trainer/ppo_utils/experience_maker.py``: ``execute_tool``,
    ``crop_image_normalized``, ``resize_cropped``): ``target_image`` is the 1-based index of the
    images so far (the inputs, then each earlier crop, saved as ``crop_<j>.png``); the box is
    normalised to 0-1 (all four values < 1, else pixels), padded by 0.1 on every side, clamped
    to 0-1 and cropped; a crop not larger than 28 px on both sides is an error (the tool's
    minimum size); the crop is resized with Qwen2.5-VL ``smart_resize`` (factor 28, 256*28*28 to
    5120*28*28 pixels), bicubic, and saved as ``crop_<k>.png``. An index outside the images so
    far, or an unparseable call, becomes a cell that raises (as the tool's assert did).
  * The next user message ("Here is the cropped image:" + an image) is the call's observation:
    its image is the recorded crop (in this dataset a precomputed region image).
  * Other tool names are ``invalid_input:unsupported_tool:<name>``; an assistant that answers
    without a call makes a plain sample (no code). The final answer is the last ``<answer>``.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    drop_image_tokens,
)
from pipeline.formats.chat import load_refs, normalize_messages, prompt_text, split_prompt
from pipeline.formats.deepeyes_rollout import tool_call_turns
from pipeline.formats.zoom_tools import FAILING_CALL, unsupported_tool

TOOL = "crop_image_normalized"

CROP = """\
# twi-curate: replay of a Pixel-Reasoner crop_image_normalized call (TIGER-AI-Lab/Pixel-Reasoner
# experience_maker.py: crop_image_normalized, padding 0.1, crop > 28 px; resize_cropped: smart_resize)
import math

from PIL import Image

src = {source}
img_x, img_y = src.size
bbox, padding = {bbox!r}, 0.1
if all(v < 1 for v in bbox):
    x1, y1, x2, y2 = bbox[0] - padding, bbox[1] - padding, bbox[2] + padding, bbox[3] + padding
else:
    x1, y1 = bbox[0] / img_x - padding, bbox[1] / img_y - padding
    x2, y2 = bbox[2] / img_x + padding, bbox[3] / img_y + padding
x1, y1, x2, y2 = (min(max(0, v), 1) for v in (x1, y1, x2, y2))
box = (x1 * img_x, y1 * img_y, x2 * img_x, y2 * img_y)
crop = src.crop(box)
if not (crop.width > 28 and crop.height > 28):
    raise ValueError(f"Cropped image is too small: {{crop.width}}x{{crop.height}}")
factor, min_pixels, max_pixels = 28, 256 * 28 * 28, 5120 * 28 * 28
h_bar = max(factor, round(crop.height / factor) * factor)
w_bar = max(factor, round(crop.width / factor) * factor)
if h_bar * w_bar > max_pixels:
    beta = math.sqrt(crop.height * crop.width / max_pixels)
    h_bar = math.floor(crop.height / beta / factor) * factor
    w_bar = math.floor(crop.width / beta / factor) * factor
elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (crop.height * crop.width))
    h_bar = math.ceil(crop.height * beta / factor) * factor
    w_bar = math.ceil(crop.width * beta / factor) * factor
zoom = crop.convert("RGB").resize((w_bar, h_bar), resample=Image.Resampling.BICUBIC)
zoom.save({out!r})
print({out!r}, "box", tuple(round(v) for v in box), "->", zoom.size)
"""


def crop_cell(call: Any, k: int, n_inputs: int) -> str:
    """One parsed ``crop_image_normalized`` call (the k-th, 1-based) -> its generated cell."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return FAILING_CALL.format(message=f"tool call is not a JSON object with a name: {str(call)[:200]}")
    if call["name"] != TOOL:
        raise unsupported_tool(call["name"])
    args = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
    bbox = args.get("bbox_2d")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)):
        return FAILING_CALL.format(message=f"bbox_2d must be four numbers, got {bbox!r}"[:300])
    target = args.get("target_image", 1)
    if isinstance(target, float) and target.is_integer():
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool) or not 1 <= target < n_inputs + k:
        return FAILING_CALL.format(
            message=f"Incorrect `target_image` {target!r}: only images 1..{n_inputs + k - 1} exist"[:300]
        )
    source = f"images[{target - 1}]" if target <= n_inputs else f"Image.open({f'crop_{target - n_inputs}.png'!r})"
    return CROP.format(source=source, bbox=[float(v) for v in bbox], out=f"crop_{k}.png")


class PixelReasoner:
    name = "pixel_reasoner"

    def detect(self, record: dict[str, Any]) -> bool:
        msgs = record.get("message_list")
        return isinstance(msgs, list) and bool(msgs) and all(isinstance(m, dict) for m in msgs[:4])

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        msgs = normalize_messages({"messages": record["message_list"]}, match_images=False)
        prompt, rest = split_prompt(msgs)
        question = drop_image_tokens(prompt_text(prompt))
        if not question:
            raise InputError("missing_field:question")
        images = load_refs([r for m in prompt for r in m.image_refs], ctx, "input")
        turns, answer = tool_call_turns(rest, ctx, lambda call, k: crop_cell(call, k, len(images)))
        return canonical_row(record, ctx, self.name, question=question, images=images, turns=turns,
                             final_answer=answer)


ADAPTER = PixelReasoner()
