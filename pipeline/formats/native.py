"""The native trajectory format (what `twi-curate sample-corpus` writes), one JSON object per line:

    {"id": "math-0001",                 # optional, informational
     "dataset": "twi-sample",            # optional, defaults to the file's stem
     "discipline": "mathematics",        # optional: a discipline or a synonym (pipeline.stages.discipline);
                                         # else the question is classified
     "question": "...",
     "answer": "37" | null,              # ground truth, optional
     "images": ["images/math-0001.png"], # paths relative to the JSONL file
     "turns": [{"reasoning": "...",
                "code": "python source" | null,
                "observation": {"text": "recorded stdout" | null,
                                "images": ["images/math-0001_t0_0.png"]}}],
     "final_answer": "37"}
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.base import InputError, RecordContext, canonical_row, resolve_image, text_field, turn
from pipeline.stages.discipline import discipline_from_value

KEY_ID = "id"
KEY_DATASET = "dataset"
KEY_DISCIPLINE = "discipline"
KEY_QUESTION = "question"
KEY_ANSWER = "answer"
KEY_IMAGES = "images"
KEY_TURNS = "turns"
KEY_REASONING = "reasoning"
KEY_CODE = "code"
KEY_OBSERVATION = "observation"
KEY_OBS_TEXT = "text"
KEY_OBS_IMAGES = "images"
KEY_FINAL_ANSWER = "final_answer"


class NativeAdapter:
    """The project's own format (see the module docstring)."""

    name = "native"

    def detect(self, record: dict[str, Any]) -> bool:
        return KEY_TURNS in record

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question = text_field(record.get(KEY_QUESTION), KEY_QUESTION, required=True)
        discipline_value = text_field(record.get(KEY_DISCIPLINE), KEY_DISCIPLINE)
        image_refs = record.get(KEY_IMAGES) or []
        if not isinstance(image_refs, list) or not all(isinstance(p, str) for p in image_refs):
            raise InputError("wrong_type", "images must be a list of paths")
        images = [resolve_image(p, ctx, f"input_{k}") for k, p in enumerate(image_refs)]
        raw_turns = record.get(KEY_TURNS)
        if not isinstance(raw_turns, list):
            raise InputError("wrong_type" if raw_turns is not None else "empty_trajectory", "turns must be a list")
        if not raw_turns:
            raise InputError("empty_trajectory")
        turns = []
        for k, t in enumerate(raw_turns):
            if not isinstance(t, dict):
                raise InputError("wrong_type", "each turn must be an object")
            obs = t.get(KEY_OBSERVATION) or {}
            if not isinstance(obs, dict):
                raise InputError("wrong_type", "observation must be an object")
            obs_refs = obs.get(KEY_OBS_IMAGES) or []
            if not isinstance(obs_refs, list) or not all(isinstance(p, str) for p in obs_refs):
                raise InputError("wrong_type", "observation images must be a list of paths")
            turns.append(
                turn(
                    text_field(t.get(KEY_REASONING), KEY_REASONING),
                    text_field(t.get(KEY_CODE), KEY_CODE),
                    text_field(obs.get(KEY_OBS_TEXT), KEY_OBS_TEXT),
                    [resolve_image(p, ctx, f"obs_{k}_{j}") for j, p in enumerate(obs_refs)],
                )
            )
        discipline = discipline_from_value(discipline_value) if discipline_value else None
        return canonical_row(
            record,
            ctx,
            self.name,
            question=question,
            images=images,
            turns=turns,
            final_answer=text_field(record.get(KEY_FINAL_ANSWER), KEY_FINAL_ANSWER),
            ground_truth=text_field(record.get(KEY_ANSWER), KEY_ANSWER),
            discipline=discipline,
            dataset=text_field(record.get(KEY_DATASET), KEY_DATASET) or ctx.dataset,
        )


ADAPTER = NativeAdapter()
