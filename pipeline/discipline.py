"""Discipline of a record: from its metadata when it has any, else from its question.

1. Metadata. The fields ``discipline``, ``subject``, ``domain``, ``field``, ``category``,
   ``topic``, ``ability``, ``data_source`` (checked in this order, at the top level and inside
   ``extra_info`` / ``metadata``) are matched against :data:`SYNONYMS`: first the whole value
   (lower-cased, ``_``/``-``/``/`` read as spaces), then each of its words, so ``"Physics"``,
   ``"mmk12_physics"`` and ``"earth science"`` all map. The first field that maps decides.
2. Question keywords. Each discipline has a weighted vocabulary (:data:`KEYWORDS`: whole-word,
   case-insensitive terms; multi-word phrases and strongly specific terms weigh more). The
   score of a discipline is the sum of the weights of its terms found in the question; the
   highest score wins if it reaches :data:`MIN_SCORE`, else ``unknown``. Ties go to the
   discipline listed first in ``schemas.sample.DISCIPLINES``.

Measured on tests/data/discipline_questions.jsonl (78 realistic image questions, 12 per
discipline plus 6 with no discipline): see tests/test_discipline.py, which prints the accuracy.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from schemas import sample as S

UNKNOWN = "unknown"
METADATA_KEYS = ("discipline", "subject", "domain", "field", "category", "topic", "ability", "data_source")
NESTED_METADATA = ("extra_info", "metadata", "meta")

SYNONYMS: dict[str, tuple[str, ...]] = {
    "mathematics": (
        "mathematics", "math", "maths", "mathematical", "geometry", "plane geometry", "solid geometry",
        "analytic geometry", "algebra", "calculus", "arithmetic", "statistics", "probability",
        "trigonometry", "number theory", "combinatorics", "geometry3k", "geo3k", "geoqa", "mathvista",
        "mathverse", "mathvision", "mavis", "function plot", "math word problem",
    ),
    "physics": (
        "physics", "physical", "mechanics", "optics", "electromagnetism", "electricity", "magnetism",
        "thermodynamics", "kinematics", "dynamics", "acoustics", "waves", "quantum", "nuclear physics",
        "electronics", "fluid mechanics",
    ),
    "chemistry": (
        "chemistry", "chem", "chemical", "organic chemistry", "inorganic chemistry", "analytical chemistry",
        "physical chemistry", "biochemistry", "stoichiometry", "electrochemistry",
    ),
    "astronomy": (
        "astronomy", "astrophysics", "astro", "cosmology", "space science", "planetary science",
        "astronomical",
    ),
    "geography": (
        "geography", "geographic", "geographical", "earth science", "earth sciences", "geology",
        "geoscience", "cartography", "meteorology", "climatology", "oceanography", "remote sensing",
        "map reading",
    ),
    "biology": (
        "biology", "bio", "biological", "life science", "life sciences", "anatomy", "botany", "zoology",
        "genetics", "ecology", "microbiology", "cell biology", "physiology", "medicine", "medical",
        "histology", "pathology", "neuroscience",
    ),
}

# weight 3: a term that almost only one discipline uses; 2: typical; 1: suggestive but shared.
KEYWORDS: dict[str, dict[str, float]] = {
    "mathematics": {
        "triangle": 2, "isosceles": 3, "equilateral": 3, "hypotenuse": 3, "right triangle": 3, "angle": 1,
        "circle": 1, "diameter": 1, "radius": 1, "chord": 2, "arc": 1, "circumference": 2, "polygon": 3,
        "quadrilateral": 3, "parallelogram": 3, "rectangle": 1, "trapezoid": 3, "rhombus": 3, "vertex": 1,
        "vertices": 2, "perpendicular": 2, "bisector": 3, "congruent": 3, "similar triangles": 3,
        "area": 1, "perimeter": 3, "shaded region": 3, "shaded area": 3, "volume": 1, "prism": 2,
        "cylinder": 1, "cone": 1, "sphere": 1, "cube": 2, "cubes": 2, "net": 1, "function": 2, "f(x)": 3,
        "parabola": 3, "hyperbola": 3, "ellipse": 1, "slope": 2, "intercept": 2, "coordinate plane": 3,
        "coordinates": 1, "equation": 1, "equations": 1, "inequality": 3, "integer": 2, "fraction": 1,
        "ratio": 1, "sum": 1, "difference": 1, "product": 1, "median": 2, "mean": 1, "mode": 1,
        "average": 1, "probability": 3, "bar chart": 2, "line graph": 1, "table": 1, "sequence": 2,
        "derivative": 3, "integral": 3, "logarithm": 3, "sine": 2, "cosine": 2, "tangent": 1, "degrees": 1,
        "x-axis": 1, "y-axis": 1, "value of x": 3, "find x": 3, "how many": 0.5, "pattern": 1, "marble": 2,
        "dice": 2, "marbles": 2,
    },
    "physics": {
        "force": 2, "net force": 3, "friction": 3, "mass": 1, "incline": 3, "acceleration": 3, "velocity": 3,
        "speed": 1, "displacement": 3, "momentum": 3, "energy": 1, "kinetic": 3, "potential energy": 3,
        "work done": 3, "power": 1, "circuit": 3, "resistor": 3, "resistors": 3, "current": 2, "voltage": 3,
        "battery": 2, "ammeter": 3, "voltmeter": 3, "ohm": 3, "Ω": 3, "capacitor": 3, "magnetic field": 3,
        "electric field": 3, "charge": 2, "charges": 2, "lens": 3, "focal length": 3, "mirror": 2,
        "refraction": 3, "refractive index": 3, "ray of light": 3, "wavelength": 1, "frequency": 2,
        "wave": 2, "oscilloscope": 3, "period": 1, "projectile": 3, "pendulum": 3, "spring": 2,
        "spring constant": 3, "pulley": 3, "pulleys": 3, "lever": 3, "torque": 3, "pressure": 2,
        "gauge": 1, "temperature": 0.5, "heat": 1, "newton": 3, "m/s": 3, "kg": 1, "gravity": 2,
        "buoyancy": 3, "density": 1, "load": 1, "effort": 2, "horizontal": 1, "launched": 2,
    },
    "chemistry": {
        "chemical": 3, "compound": 2, "molecule": 2, "molecular": 2, "atom": 2, "atoms": 2, "element": 1,
        "periodic table": 3, "atomic number": 3, "iupac": 3, "organic": 2, "hydrocarbon": 3, "moles": 3,
        "mole": 3, "molar": 3, "reaction": 2, "catalyst": 3, "activation energy": 3, "titration": 3,
        "ph": 3, "pka": 3, "acid": 2, "base": 1, "basic": 1, "indicator": 2, "salt": 2, "salts": 2,
        "solubility": 3, "solution": 1, "concentration": 2, "electrode": 3, "anode": 3, "cathode": 3,
        "electrochemical": 3, "oxidation": 3, "reduction": 2, "bond": 2, "lewis structure": 3,
        "electron": 1, "isomer": 3, "functional group": 3, "mass spectrum": 3, "m/z": 3, "spectrum": 1,
        "beaker": 3, "precipitate": 3, "naoh": 3, "h2o": 3, "hcl": 3, "structural formula": 3,
        "ball-and-stick": 3, "carbon atoms": 3, "valence": 2, "ion": 1, "ions": 1, "kj/mol": 3,
    },
    "astronomy": {
        "moon": 3, "lunar": 3, "sun": 1, "solar system": 3, "planet": 3, "planets": 3, "exoplanet": 3,
        "star": 2, "stars": 2, "galaxy": 3, "galaxies": 3, "nebula": 3, "constellation": 3,
        "sky chart": 3, "telescope": 3, "orbit": 2, "orbital": 2, "eclipse": 3, "solstice": 3,
        "equinox": 3, "redshift": 3, "light curve": 3, "hertzsprung-russell": 3, "red giant": 3,
        "white dwarf": 3, "magnitude": 2, "cepheid": 3, "crater": 3, "craters": 3, "celestial": 3,
        "star trail": 3, "comet": 3, "asteroid": 3, "light-year": 3, "parsec": 3, "phases": 1,
        "earth's orbit": 3, "deep-sky": 3, "angular size": 3, "sunspot": 3, "meteor": 3,
    },
    "geography": {
        "map": 2, "topographic": 3, "contour": 3, "contour lines": 3, "elevation": 2, "summit": 2,
        "altitude": 1, "country": 2, "continent": 3, "world map": 3, "map scale": 3, "latitude": 3,
        "longitude": 3, "river": 2, "delta": 2, "sea": 1, "ocean": 2, "climate": 3, "climate graph": 3,
        "rainfall": 3, "precipitation": 3, "isotherm": 3, "population": 1, "population pyramid": 3,
        "land use": 3, "farmland": 3, "urban": 2, "plate boundaries": 3, "plate boundary": 3,
        "tectonic": 3, "mountain range": 3, "glacier": 3, "glaciers": 3, "valley": 2, "landform": 3,
        "erosion": 2, "satellite image": 2, "town": 1, "towns": 1, "city": 1, "region": 1,
        "kilometres": 1, "kilometers": 1, "volcano": 2, "earthquake": 2, "weather": 2, "compass": 2,
        "north": 1, "grid reference": 3, "spot height": 3,
    },
    "biology": {
        "cell": 2, "cells": 2, "organelle": 3, "mitosis": 3, "meiosis": 3, "metaphase": 3, "nucleus": 2,
        "chromosome": 3, "dna": 3, "gene": 3, "genes": 3, "allele": 3, "punnett": 3, "offspring": 3,
        "phenotype": 3, "genotype": 3, "recessive": 3, "dominant": 1, "inherited": 2, "pedigree": 3,
        "enzyme": 3, "protein": 2, "photosynthesis": 3, "chloroplast": 3, "mitochondria": 3,
        "food web": 3, "food chain": 3, "ecosystem": 3, "consumer": 2, "primary consumer": 3,
        "predator": 3, "prey": 3, "organism": 3, "organisms": 3, "species": 2, "heart": 2, "chamber": 1,
        "organ": 2, "tissue": 3, "micrograph": 2, "stomata": 3, "leaf": 2, "epidermis": 3, "flower": 3,
        "pollen": 3, "bacteria": 3, "virus": 3, "gel electrophoresis": 3, "carrying capacity": 3,
        "digestive": 3, "bile": 3, "blood": 2, "neuron": 3, "plant": 1, "animal": 2, "stained": 2,
        "evolution": 3, "fossil": 1,
    },
}
MIN_SCORE = 1.0


def _norm(value: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-/]+", " ", value.lower())).strip()


@lru_cache(maxsize=1)
def _synonym_index() -> dict[str, str]:
    return {_norm(s): d for d, names in SYNONYMS.items() for s in names}


def discipline_from_value(value: Any) -> str | None:
    """A metadata value -> a discipline of schemas.sample.DISCIPLINES (not unknown), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _norm(value)
    if text in S.DISCIPLINES and text != UNKNOWN:
        return text
    index = _synonym_index()
    if text in index:
        return index[text]
    for word in text.split():
        if word in index:
            return index[word]
    return None


def discipline_from_metadata(record: dict[str, Any]) -> str | None:
    """The first metadata field (see module docstring) whose value maps to a discipline."""
    scopes = [record] + [record[k] for k in NESTED_METADATA if isinstance(record.get(k), dict)]
    for key in METADATA_KEYS:
        for scope in scopes:
            found = discipline_from_value(scope.get(key))
            if found:
                return found
    return None


@lru_cache(maxsize=1)
def _patterns() -> list[tuple[str, re.Pattern[str], float]]:
    out = []
    for discipline, terms in KEYWORDS.items():
        for term, weight in terms.items():
            # whole-word match; terms that start/end with a symbol match as written
            left = r"(?<![\w])" if term[0].isalnum() else ""
            right = r"(?![\w])" if term[-1].isalnum() else ""
            out.append((discipline, re.compile(left + re.escape(term) + right, re.I), float(weight)))
    return out


def keyword_scores(question: str) -> dict[str, float]:
    scores = dict.fromkeys(KEYWORDS, 0.0)
    for discipline, pattern, weight in _patterns():
        if pattern.search(question):
            scores[discipline] += weight
    return scores


def classify_question(question: str | None) -> str:
    """Keyword classifier over the question text (see module docstring)."""
    if not question:
        return UNKNOWN
    scores = keyword_scores(question)
    best = max(scores.values())
    if best < MIN_SCORE:
        return UNKNOWN
    return next(d for d in S.DISCIPLINES if scores.get(d) == best)


def resolve_discipline(record: dict[str, Any], question: str | None) -> str:
    """Metadata first, then the question classifier."""
    return discipline_from_metadata(record) or classify_question(question)
