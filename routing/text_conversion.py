"""TwI -> text-only conversion: keep the reasoning, drop code cells and sandbox outputs, and
repair (or flag) sentences that refer to images the text sample no longer has.

Sentence rules, in order:
  1. a sentence announcing a tool step ("Let me crop the label and zoom in 4x.") is dropped;
  2. a sentence that opens on a produced image ("The zoomed crop shows ...", "In the enhanced
     image, ...") is rewritten to look at the original image ("Looking closely at the image, ...");
  3. any other sentence that still mentions a produced image or the code's output is kept and
     flagged ``unresolved_reference``, so a downstream rewrite (or a human) can fix it.
The input image stays with the text sample: only the tool calls and their outputs go.
"""

from __future__ import annotations

import re
from typing import Any

from schemas import sample as S

PRODUCED = r"(?:zoomed(?:[- ]in)?|cropped|enhanced|processed|magnified|thresholded|binari[sz]ed|edge|contrast[- ]stretched|upscaled)"
VIEW = r"(?:crop|image|view|region|map|mask|version|output|patch|picture|figure)"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_TOOL_STEP = re.compile(
    r"^\s*(?:let me|let's|let us|i will|i'll|i need to|we will|we'll|next,? (?:i|we)|to (?:read|see|count) (?:it|this|them),? (?:i|we))\b"
    r".*\b(?:crop\w*|zoom\w*|enhanc\w*|run\w*|writ\w*|code|threshold\w*|detect\w*|upscal\w*|measur\w*|count\w*"
    r"|contrast|autocontrast|filter\w*|sharpen\w*|pass)\b",
    re.I,
)
_OPENS_ON_PRODUCED = re.compile(
    rf"^\s*(?:in |on )?(?:the |this |that )?{PRODUCED}(?: {VIEW})?(?: now)?"
    r"(?:\s*(?:clearly\s+)?(?:shows|reveals|makes (?:it )?clear|confirms|displays)(?: that)?|\s*,)\s*",
    re.I,
)
_OUTPUT_OPENER = re.compile(
    r"^\s*the (?:code'?s? |printed )?output(?:\s*\(.*?\))?\s*(?:shows|reveals|confirms|makes (?:it )?clear)(?: that)?\s*",
    re.I,
)
_MENTIONS = re.compile(rf"\b{PRODUCED}\s+{VIEW}\b|\b(?:the code|the output|the script|printed|sandbox)\b", re.I)


def convert_reasoning(text: str) -> tuple[str, list[str]]:
    """One reasoning step -> (text without tool references, flags)."""
    kept, flags = [], []
    for sentence in _SENTENCE.split(text.strip()):
        if not sentence:
            continue
        if _TOOL_STEP.search(sentence):
            flags.append("dropped_tool_step")
            continue
        m = _OPENS_ON_PRODUCED.match(sentence) or _OUTPUT_OPENER.match(sentence)
        if m:
            rest = sentence[m.end():]
            sentence = "Looking closely at the image, " + (rest[:1].lower() + rest[1:])
            flags.append("rewrote_image_reference")
        elif _MENTIONS.search(sentence):
            flags.append(f"unresolved_reference: {sentence[:80]}")
        kept.append(sentence)
    return " ".join(kept), flags


def to_text_sample(row: dict[str, Any]) -> tuple[str, list[str]]:
    """The trajectory as pure reasoning followed by the final answer, plus conversion flags."""
    steps, flags = [], []
    for t in row.get(S.TURNS) or []:
        text, f = convert_reasoning(t[S.TURN_REASONING] or "")
        flags.extend(f)
        if text:
            steps.append(text)
    body = "\n\n".join(steps)
    answer = (row.get(S.FINAL_ANSWER) or "").strip()
    return (f"{body}\n\n<answer>{answer}</answer>" if answer else body), flags
