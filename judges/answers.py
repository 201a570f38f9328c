"""Answer verification: does a final answer match the ground truth?

Both sides are first unwrapped from ``<answer>...</answer>`` and ``\\boxed{...}``. Then the first
rule that applies to the ground truth decides:
 1. option letter (``C``, ``(C)``, ``C.``, ``C) text``, ``Option C``): the prediction must name the
    same letter;
 2. symbolic expression with variables (``2x+2``, ``\\frac{x}{2}``, ``x^2-1``): equivalent to the
    prediction under sympy (difference simplifies to 0, else agrees at 5 random points);
 3. quantity — a number, fraction, percentage, LaTeX numeric expression (``\\frac{1}{2}``,
    ``\\sqrt{2}/2``, ``3\\pi``) or scientific notation, optionally with a unit: the prediction's
    first quantity, after converting SI-prefixed units of the same kind (``5 km`` = ``5000 m``,
    ``250 mL`` = ``0.25 L``, ``90°`` = ``π/2 rad``), agrees to the precision the ground truth is
    written in: |pred − gold| ≤ max(half a unit of gold's last written digit, 1e-3 · |gold|)
    (so gold ``933`` rejects 938, gold ``12.5`` accepts 12.54, gold ``1/3`` accepts 0.3333).
    Units of a different kind (``5 kg`` vs ``5 m``) never match;
 4. text: case-, space- and punctuation-insensitive equality, or a short ground truth (at most 4
    words) stated as whole words in the prediction ("white" in "The cap is white");
 5. options spelled out in the question (lines ``A. text`` ... as DeepEyes' V* prompts write
    them) whose text the ground truth is: the prediction names a letter, or picks the option whose
    content words (those not shared by every option) it all states, the most specific one when
    several fit — "The man's cap is white." picks "A. The color of the man's cap is white.",
    "red and white" picks "red and white" over "red" — and it must be the ground truth's option;
    a prediction that fits two options equally ("white or blue") picks none.
A prediction that is a sentence states its quantity after its last "is", "=", "equals" or
"answer": "the flow from node (0) to node (2) is 10" answers 10, not 0.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OPTION = re.compile(r"^\s*(?:option\s*)?\(?([A-Ha-h])\)?(?:[.):]\s*.*|\s*)$", re.S | re.I)
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?"
)
_TIMES_TEN = re.compile(r"(\d(?:\.\d+)?)\s*(?:\\times|×|x|\*)\s*10\^\{?([-+]?\d+)\}?")
_LATEX_HINT = re.compile(r"\\(frac|dfrac|tfrac|sqrt|pi|cdot|times)|\^|π|√")
_VARIABLE = re.compile(r"(?<![A-Za-z\\])[a-zA-Z](?![A-Za-z])")

# unit -> (kind, factor to the kind's base unit)
_BASE_UNITS = {"m": "length", "g": "mass", "s": "time", "L": "volume", "l": "volume", "Pa": "pressure",
               "J": "energy", "eV": "energy", "W": "power", "Hz": "frequency", "mol": "amount",
               "V": "voltage", "A": "current", "K": "temperature", "N": "force", "C": "charge",
               "M": "concentration"}
_PREFIXES = {"G": 1e9, "M": 1e6, "k": 1e3, "h": 1e2, "c": 1e-2, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "μ": 1e-6,
             "n": 1e-9, "p": 1e-12}
_SPECIAL_UNITS = {"min": ("time", 60.0), "h": ("time", 3600.0), "hr": ("time", 3600.0),
                  "°": ("angle", 1.0), "deg": ("angle", 1.0), "degrees": ("angle", 1.0), "degree": ("angle", 1.0),
                  "rad": ("angle", 180.0 / math.pi), "Å": ("length", 1e-10), "AU": ("length", 1.496e11),
                  "ly": ("length", 9.461e15), "pc": ("length", 3.086e16), "atm": ("pressure", 101325.0),
                  "cal": ("energy", 4.184), "kcal": ("energy", 4184.0), "%": ("ratio", 0.01)}


def unit_factor(unit: str) -> tuple[str, float] | None:
    """'km' -> ('length', 1000.0); None for words that are not units."""
    unit = unit.strip().rstrip(".")
    if unit in _SPECIAL_UNITS:
        return _SPECIAL_UNITS[unit]
    if unit in _BASE_UNITS:
        return _BASE_UNITS[unit], 1.0
    if len(unit) > 1 and unit[0] in _PREFIXES and unit[1:] in _BASE_UNITS:
        return _BASE_UNITS[unit[1:]], _PREFIXES[unit[0]]
    return None


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
    return text.strip().rstrip(".").strip("$ ")


def option_letter(text: str) -> str | None:
    m = _OPTION.match(text)
    return m.group(1).upper() if m else None


# --- symbolic ----------------------------------------------------------------------------------
def _latex_to_python(s: str) -> str:
    s = s.replace("\\left", "").replace("\\right", "").replace("\\,", "").replace("\\!", "")
    s = s.replace("π", "pi").replace("√", "sqrt").replace("−", "-").replace("×", "*").replace("·", "*")
    for _ in range(8):  # nested \frac{a}{b} -> ((a)/(b))
        new = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == s:
            break
        s = new
    s = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"((\1)/(\2))", s)  # \frac12
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("^", "**")
    return s.replace("{", "(").replace("}", ")").replace("\\", "")


def to_sympy(text: str):
    """Parse a (LaTeX-ish) expression with sympy; None when it is not one."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    src = _latex_to_python(text)
    if not src.strip() or re.search(r"[^\w\s+\-*/().,]", src) or len(src) > 200:
        return None
    try:
        expr = parse_expr(
            src.replace(",", ""),
            transformations=standard_transformations + (implicit_multiplication_application, convert_xor),
            evaluate=True,
        )
    except Exception:  # noqa: BLE001 - sympy raises many types on junk
        return None
    return expr if isinstance(expr, sympy.Expr) else None


def symbolic_equal(a, b) -> bool:
    import sympy

    try:
        if sympy.simplify(a - b) == 0:
            return True
        syms = sorted(a.free_symbols | b.free_symbols, key=str)
        rng = random.Random(0)
        for _ in range(5):
            point = {s: rng.uniform(0.5, 2.5) for s in syms}
            va, vb = complex(a.evalf(subs=point)), complex(b.evalf(subs=point))
            if abs(va - vb) > 1e-6 * max(1.0, abs(va)):
                return False
        return True
    except Exception:  # noqa: BLE001
        return False


# --- quantities ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantity:
    value: float  # in the base unit of ``kind``
    half_unit: float  # half a unit of the last written digit (0 for exact expressions)
    kind: str | None  # unit kind, e.g. "length"; None without a unit
    raw: float  # the number as written, before unit conversion
    raw_half_unit: float


def _plain_number(s: str) -> tuple[float, float] | None:
    s = s.replace(",", "").replace(" ", "")
    percent = s.endswith("%")
    s = s.rstrip("%")
    try:
        if "/" in s:
            num, den = s.split("/")
            value, half = float(num) / float(den), 0.0
        else:
            value = float(s)
            mantissa, _, exp = s.lower().partition("e")
            half = 0.5 * 10 ** (-len(mantissa.partition(".")[2]) + (int(exp) if exp else 0))
    except (ValueError, ZeroDivisionError):
        return None
    return (value / 100.0, half / 100.0) if percent else (value, half)


def quantity(text: str) -> Quantity | None:
    """The first quantity in a text: number (or numeric LaTeX expression) and optional unit."""
    text = _TIMES_TEN.sub(lambda m: f"{m.group(1)}e{m.group(2)}", text)
    if _LATEX_HINT.search(text):
        expr = to_sympy(re.sub(r"\s*(°|\\circ|degrees?|rad)\s*$", "", text))
        if expr is not None and not expr.free_symbols:
            try:
                value = float(expr.evalf())
            except (TypeError, ValueError):
                return None
            unit = unit_factor("°") if re.search(r"(°|\\circ|degrees?)\s*$", text) else None
            return Quantity(value, 0.0, unit[0] if unit else None, value, 0.0)
    for m in _NUMBER.finditer(text):
        token = m.group().strip()
        if not any(ch.isdigit() for ch in token):
            continue
        parsed = _plain_number(token)
        if parsed is None:
            continue
        value, half = parsed
        rest = text[m.end():].lstrip()
        word = re.match(r"(°|\\circ|[A-Za-zµμÅ]+)", rest)
        unit = unit_factor("°" if word and word.group(1) == "\\circ" else word.group(1)) if word else None
        if unit is not None:
            return Quantity(value * unit[1], half * unit[1], unit[0], value, half)
        return Quantity(value, half, None, value, half)
    return None


_STATED = re.compile(r"(?:\bis\b|\bare\b|=|\bequals?\b|\banswer\b|:)", re.I)


def stated_quantity(text: str) -> Quantity | None:
    """The quantity a prediction states: in prose (three or more words) the first quantity after
    its last "is"/"="/"equals"/"answer"/":", else its first quantity."""
    if len(re.findall(r"[A-Za-z]{2,}", text)) >= 3:
        cues = list(_STATED.finditer(text))
        for cue in reversed(cues):
            q = quantity(text[cue.end():])
            if q is not None:
                return q
    return quantity(text)


def first_number(text: str) -> float | None:
    q = quantity(text)
    return None if q is None else q.value


def _norm_text(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def _is_symbolic(text: str) -> bool:
    """An expression in single-letter variables (``2x+2``, ``\\frac{a}{b}``), not prose."""
    words = re.sub(r"\\[a-zA-Z]+|\b(sqrt|sin|cos|tan|log|ln|exp|pi)\b", " ", text)
    return bool(_VARIABLE.search(words)) and not re.search(r"[A-Za-z]{2,}", words) and len(text) < 120


_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.)]\s+(\S.*?)\s*$", re.M)


def question_options(question: str | None) -> dict[str, str]:
    """Options spelled out in a question, one per line (``A. text``, ``(B) text``): letter -> text."""
    found = dict(_OPTION_LINE.findall(question or ""))
    return found if len(found) >= 2 else {}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def chosen_option(pred: str, options: dict[str, str]) -> str | None:
    """The option letter a prediction names, or whose own words (absent from every other option)
    only it contains; None when that is not exactly one."""
    letter = option_letter(pred)
    if letter in options:
        return letter
    if any(_norm_text(pred) == _norm_text(t) for t in options.values()):
        return next(k for k, t in options.items() if _norm_text(pred) == _norm_text(t))
    words = _words(pred)
    shared = set.intersection(*(_words(t) for t in options.values()))
    content = {k: _words(t) - shared for k, t in options.items()}
    hits = [k for k, c in content.items() if c and c <= words]
    if not hits:
        return None
    best = max(len(content[k]) for k in hits)
    top = [k for k in hits if len(content[k]) == best]
    return top[0] if len(top) == 1 else None


def answers_match(
    pred: str | None, gold: str | None, rel_tol: float = 1e-3, question: str | None = None
) -> bool:
    """True when the prediction states the ground truth (see module docstring for the rules);
    ``question`` lets options spelled out in it decide (rule 5)."""
    if pred is None or gold is None:
        return False
    p, g = unwrap(pred), unwrap(gold)
    if not g:
        return False
    gl = option_letter(g)
    options = question_options(question)
    if gl is None and options:
        gl = next((k for k, t in options.items() if _norm_text(t) == _norm_text(g)), None)
    if gl is not None:
        return (chosen_option(p, options) if options else option_letter(p)) == gl
    if _is_symbolic(g) and unit_factor(g.split()[-1]) is None:
        ge, pe = to_sympy(g), to_sympy(p)
        if ge is not None and ge.free_symbols:
            return pe is not None and symbolic_equal(ge, pe)
    gq = quantity(g)
    if gq is not None:
        pq = stated_quantity(p)
        if pq is None:
            return False
        if gq.kind is not None and pq.kind is not None:
            if gq.kind != pq.kind:
                return False
            return abs(pq.value - gq.value) <= max(gq.half_unit, rel_tol * abs(gq.value), 1e-12)
        # a unit on one side only: compare the numbers as written
        return abs(pq.raw - gq.raw) <= max(gq.raw_half_unit, rel_tol * abs(gq.raw), 1e-12)
    if not _norm_text(g):
        return False
    if _norm_text(p) == _norm_text(g):
        return True
    gold_words = re.findall(r"[a-z0-9]+", g.lower())
    return 0 < len(gold_words) <= 4 and re.search(r"\b" + r"\W+".join(gold_words) + r"\b", p.lower()) is not None
