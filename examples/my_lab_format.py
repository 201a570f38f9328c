"""A worked example of a format plug-in: a lab's own rollout format, no fork of twi-curate needed.

A record of this (made-up) format::

    {"uid": "r-17", "img": "figs/page.png", "prompt": "What does the small label read?",
     "steps": [{"thought": "The label is tiny: crop and enlarge it.",
                "python": "crop = image.crop((440, 20, 600, 100)).resize((320, 160))\\ncrop.save('zoom.png')",
                "stdout": ""},
               {"thought": "The zoom reads 42."}],
     "final": "42", "gold": "42"}

Use it with ``twi-curate run rollouts.jsonl --format my_lab_format:ADAPTER`` (the module on
PYTHONPATH or installed), or register it in your package's pyproject.toml so it is detected
like a built-in format::

    [project.entry-points."twi_curate.formats"]
    my_lab = "my_lab_format:ADAPTER"
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.base import (
    InputError,
    RecordContext,
    canonical_row,
    list_field,
    resolve_image,
    text_field,
    turn,
)


class MyLabRollout:
    name = "my_lab"  # stored in source.format

    def detect(self, record: dict[str, Any]) -> bool:
        return isinstance(record.get("steps"), list) and "prompt" in record and "uid" in record

    def to_row(self, record: dict[str, Any], ctx: RecordContext) -> dict[str, Any]:
        question = text_field(record.get("prompt"), "prompt", required=True)
        # resolve_image applies the run's --image-root and ingest.path_map lookups
        images = [resolve_image(record["img"], ctx, "input_0")] if record.get("img") else []
        turns = []
        for step in list_field(record.get("steps"), "steps"):
            if not isinstance(step, dict):
                raise InputError("wrong_type", "each step must be an object")
            turns.append(turn(text_field(step.get("thought"), "thought"), text_field(step.get("python"), "python"),
                              text_field(step.get("stdout"), "stdout")))
        if not turns:
            raise InputError("empty_trajectory")
        return canonical_row(
            record, ctx, self.name,
            question=question, images=images, turns=turns,
            final_answer=text_field(record.get("final"), "final"),
            ground_truth=text_field(record.get("gold"), "gold"),
        )


ADAPTER = MyLabRollout()
