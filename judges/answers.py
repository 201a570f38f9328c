"""Answer verification: does a final answer match the ground truth?

Order of checks (first that applies decides):
 1. unwrap ``<answer>...</answer>`` and ``\\boxed{...}``;
 2. option letters: ``C``, ``(C)``, ``C.``, ``C) text``, ``Option C`` compare as letters;
 3. numbers: the first number of each side (fractions ``3/4``, percentages, thousands separators,
    units ignored) equal within a relative tolerance of 1e-2 (absolute 1e-6 near zero);
 4. text: case-, space- and punctuation-insensitive equality.
"""

from __future__ import annotations

import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OPTION = re.compile(r"^\s*(?:option\s*)?\(?([A-Ha-h])\)?(?:[.):]\s*.*|\s*)$", re.S | re.I)
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?"
)


def unwrap(text: str) -> str:
    """Strip answer tags and \\boxed{} (balanced braces) from a final answer."""
    text = text.strip()
    m = _ANSWER_TAG.search(text)
    if m:
        text = m.group(1).strip()
    i = text.rfind("\\boxed{")
    if i >= 0:
        depth = 0
        for j in range(i + len("\\boxed{") - 1, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + len("\\boxed{") : j].strip()
    return text


def option_letter(text: str) -> str | None:
    m = _OPTION.match(text)
    return m.group(1).upper() if m else None


def first_number(text: str) -> float | None:
    for m in _NUMBER.finditer(text):
        s = m.group().strip()
        if not any(ch.isdigit() for ch in s):
            continue
        percent = s.endswith("%")
        s = s.rstrip("%").replace(",", "").replace(" ", "")
        try:
            if "/" in s:
                num, den = s.split("/")
                value = float(num) / float(den)
            else:
                value = float(s)
        except (ValueError, ZeroDivisionError):
            continue
        return value / 100.0 if percent else value
    return None


def _norm_text(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def answers_match(pred: str | None, gold: str | None, rel_tol: float = 1e-2) -> bool:
    """True when the prediction states the ground truth (see module docstring for the rules)."""
    if pred is None or gold is None:
        return False
    p, g = unwrap(pred), unwrap(gold)
    gl, pl = option_letter(g), option_letter(p)
    if gl is not None:
        return pl == gl
    gn, pn = first_number(g), first_number(p)
    if gn is not None:
        if pn is None:
            return False
        if gn == 0:
            return abs(pn) <= 1e-6
        return abs(pn - gn) <= rel_tol * abs(gn)
    return bool(_norm_text(g)) and _norm_text(p) == _norm_text(g)
