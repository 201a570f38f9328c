"""Thyme (yfzhang114/Thyme): SFT records and RL records.

SFT (``thyme_sft``)::

    {"image": ["/data/q1.jpg", "/data/q1_crop.jpg"],          # paths (absolute in the repo's
                                                               # converter) or base64 strings
     "question": "<image>\\nWhat is ...?\\n### User Image Path: /data/q1.jpg ...",
     "response": "<think>I'll crop ...<code>\\n```python\\n...\\n```\\n</code>"
                 "<sandbox_output><image></sandbox_output> The crop shows ...</think>"
                 "<answer>B</answer>"}

The n-th ``<image>`` of the response is ``image[q + n]`` where q counts the question's own
``<image>`` placeholders (the inputs); the counts must match exactly. Text inside
``<sandbox_output>`` is the cell's recorded output (failures start with ``Sandbox for``). Each
``<code>`` block ends a turn; the text after the last output is the closing turn.

RL (``thyme_rl``)::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "<image>\\nWhat is ...?"}],
     "images": ["/data/q1.jpg"], "solution": "<answer>B</answer>", "question": "What is ...?"}

A prompt without assistant messages is kept as a sample without turns (routing rejects it as
``no_trajectory``); rollouts (assistant messages, outputs either spliced in or as the following
user/tool message) are parsed like the SFT response.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.formats.base import (
    IMAGE_TOKEN,
    InputError,
    RecordContext,
    canonical_row,
    clean_text,
    drop_image_tokens,
    resolve_image,
    split_answer,
    split_code_blocks,
    text_field,
    turn,
)
from pipeline.formats.chat import all_text, has_chat, normalize_messages, split_prompt
from schemas import sample as S

OUT_OPEN, OUT_CLOSE = "<sandbox_output>", "</sandbox_output>"


def parse_response(
    response: str, obs_refs: list[Any], ctx: RecordContext
) -> tuple[list[dict[str, Any]], str | None]:
    """A Thyme response -> (turns, final answer). ``obs_refs``: the image references the
    response's ``<image>`` placeholders stand for, in order."""
    body, answer = split_answer(response)
    if body.count(IMAGE_TOKEN) != len(obs_refs):
        raise InputError(
            "image_placeholder_mismatch", f"{body.count(IMAGE_TOKEN)} <image> in the response for {len(obs_refs)} images"
        )
    refs = iter(obs_refs)
    turns: list[dict[str, Any]] = []
    awaiting = False  # the last turn has code and no output yet
    for before, code in split_code_blocks(body):
        text = before
        stripped = text.lstrip()
        if stripped.startswith(OUT_OPEN):
            if not awaiting:
                raise InputError("orphan_observation", "<sandbox_output> not after a code block")
            end = stripped.find(OUT_CLOSE)
            if end < 0:
                raise InputError("unterminated_observation", "<sandbox_output> without </sandbox_output>")
            inner = stripped[len(OUT_OPEN) : end]
            k = len(turns) - 1
            turns[k][S.TURN_OBS_TEXT] = drop_image_tokens(inner).strip() or None
            turns[k][S.TURN_OBS_IMAGES] = [
                resolve_image(next(refs), ctx, f"obs_{k}_{j}") for j in range(inner.count(IMAGE_TOKEN))
            ]
            awaiting = False
            text = stripped[end + len(OUT_CLOSE) :]
        if OUT_OPEN in text or OUT_CLOSE in text or IMAGE_TOKEN in text:
            raise InputError("orphan_observation", "sandbox output or <image> outside its code block's output")
        reasoning = clean_text(text)
        if code is not None:
            turns.append(turn(reasoning, code))
            awaiting = True
        elif reasoning:
            turns.append(turn(reasoning))
    return turns, answer


# Thyme's prompts name the input image's path and size on lines of their own, e.g.
#   ### User Image Path: "/eval/17127.jpg"      or  ### User Image Path:** /eval/17127.jpg
#   ### User Image Size: "1024x768"
# Its code opens that path, which usually differs from the record's ``image`` entry (a base64
# string on the hub, a converted copy elsewhere): the input's IMG_PATH becomes the prompt's path
# so the sandbox maps it, and the size must match the resolved image's (else the code's pixel
# coordinates would point at the wrong place).
_PROMPT_PATH = re.compile(r"User Image Path\W*?:\**\s*[\"'`]?([^\"'`\n]+?)[\"'`]?\s*$", re.I | re.M)
_PROMPT_SIZE = re.compile(r"User Image Size\W*?:\**\s*[\"'`(\[]?\s*(\d+)\s*[x×*,]\s*(\d+)", re.I | re.M)


def apply_prompt_paths(text: str, images: list[dict[str, Any]]) -> None:
    """Set the inputs' IMG_PATH from the prompt's ``User Image Path`` lines (k-th line -> k-th
    input) and check the ``User Image Size`` lines against them; InputError('image_size_mismatch')."""
    for image, path in zip(images, _PROMPT_PATH.findall(text), strict=False):
        image[S.IMG_PATH] = path.strip()
    for image, (w, h) in zip(images, _PROMPT_SIZE.findall(text), strict=False):
        if (int(w), int(h)) != (image[S.IMG_WIDTH], image[S.IMG_HEIGHT]):
            raise InputError(
                "image_size_mismatch",
                f"the prompt says {w}x{h} but {image[S.IMG_PATH] or image[S.IMG_NAME]} is "
                f"{image[S.IMG_WIDTH]}x{image[S.IMG_HEIGHT]}: the code's coordinates would not fit this image",
            )


def _image_list(record: dict[str, Any], key: str) -> list[Any]:
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str | bytes | dict):
        return [value]
    if not isinstance(value, list):
        raise InputError("wrong_type", f"{key} must be a list")
    return value


class ThymeSFT:
    name = "thyme_sft"

    def detect(self, record: dict[str, Any]) -> bool:
        return isinstance(record.get("response"), str) and "question" in record and not has_chat(record)

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question = text_field(record.get("question"), "question", required=True)
        response = text_field(record.get("response"), "response", required=True)
        if not response.strip():
            raise InputError("empty_trajectory")
        refs = _image_list(record, "image" if "image" in record else "images")
        n_inputs = question.count(IMAGE_TOKEN)
        if n_inputs > len(refs):
            raise InputError("image_placeholder_mismatch", f"{n_inputs} <image> in the question, {len(refs)} images")
        images = [resolve_image(r, ctx, f"input_{k}") for k, r in enumerate(refs[:n_inputs])]
        apply_prompt_paths(question, images)
        turns, answer = parse_response(response, refs[n_inputs:], ctx)
        if not turns:
            raise InputError("empty_trajectory")
        return canonical_row(
            record, ctx, self.name,
            question=drop_image_tokens(question), images=images, turns=turns, final_answer=answer,
        )


class ThymeRL:
    name = "thyme_rl"

    def detect(self, record: dict[str, Any]) -> bool:
        return has_chat(record) and ("solution" in record or OUT_OPEN in all_text(record))

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        refs = _image_list(record, "images")
        msgs = normalize_messages(record, match_images=False)  # matched by the Thyme rule below
        prompt, rollout = split_prompt(msgs)
        prompt_user = "\n".join(m.text for m in prompt if m.role == "user")
        n_inputs = prompt_user.count(IMAGE_TOKEN)
        if n_inputs > len(refs):
            raise InputError("image_placeholder_mismatch", f"{n_inputs} <image> in the prompt, {len(refs)} images")
        images = [resolve_image(r, ctx, f"input_{k}") for k, r in enumerate(refs[:n_inputs])]
        apply_prompt_paths(prompt_user, images)
        question = text_field(record.get("question"), "question") or drop_image_tokens(prompt_user)
        if not question:
            raise InputError("missing_field:question")
        parts = []
        for m in rollout:
            if m.role == "assistant" or OUT_OPEN in m.text:
                parts.append(m.text)
            else:  # an output sent back as its own message
                parts.append(f"{OUT_OPEN}{m.text}{OUT_CLOSE}")
        turns, answer = parse_response("".join(parts), refs[n_inputs:], ctx) if rollout else ([], None)
        if rollout and not turns:
            raise InputError("empty_trajectory")
        return canonical_row(
            record, ctx, self.name,
            question=re.sub(r"\s+\n", "\n", question).strip(), images=images, turns=turns, final_answer=answer,
        )


SFT = ThymeSFT()
RL = ThymeRL()
