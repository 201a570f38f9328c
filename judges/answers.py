"""Answer verification: does a final answer match the ground truth?

Order of checks (first that applies decides):
 1. unwrap ``<answer>...</answer>`` and ``\\boxed{...}``;
 2. option letters: ``C``, ``(C)``, ``C.``, ``C) text``, ``Option C`` compare as letters;
 3. numbers: the first number of each side (fractions ``3/4``, percentages, thousands separators,
    scientific notation; units ignored) agree to the precision the ground truth is written in:
    |pred − gold| ≤ max(half a unit of gold's last written digit, rel_tol · |gold|), rel_tol = 1e-3
    (so gold "933" rejects 938, gold "12.5" accepts 12.54, gold "1/3" accepts 0.3333);
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
    found = _first_number(text)
    return None if found is None else found[0]


def _first_number(text: str) -> tuple[float, float] | None:
    """(value, half a unit of its last written digit; 0 for fractions) of the first number."""
    for m in _NUMBER.finditer(text):
        s = m.group().strip()
        if not any(ch.isdigit() for ch in s):
            continue
        percent = s.endswith("%")
        s = s.rstrip("%").replace(",", "").replace(" ", "")
        try:
            if "/" in s:
                num, den = s.split("/")
                value, half_unit = float(num) / float(den), 0.0
            else:
                value = float(s)
                mantissa, _, exp = s.lower().partition("e")
                decimals = len(mantissa.partition(".")[2])
                half_unit = 0.5 * 10 ** (-decimals + (int(exp) if exp else 0))
        except (ValueError, ZeroDivisionError):
            continue
        return (value / 100.0, half_unit / 100.0) if percent else (value, half_unit)
    return None


def _norm_text(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def answers_match(pred: str | None, gold: str | None, rel_tol: float = 1e-3) -> bool:
    """True when the prediction states the ground truth (see module docstring for the rules)."""
    if pred is None or gold is None:
        return False
    p, g = unwrap(pred), unwrap(gold)
    gl, pl = option_letter(g), option_letter(p)
    if gl is not None:
        return pl == gl
    gold_num, pred_num = _first_number(g), first_number(p)
    if gold_num is not None:
        if pred_num is None:
            return False
        value, half_unit = gold_num
        return abs(pred_num - value) <= max(half_unit, rel_tol * abs(value), 1e-12)
    return bool(_norm_text(g)) and _norm_text(p) == _norm_text(g)
