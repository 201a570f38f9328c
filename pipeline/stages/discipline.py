"""Discipline of a record: from its metadata when it has any, else from its question.

1. Metadata. The fields ``discipline``, ``subject``, ``domain``, ``field``, ``category``,
   ``topic``, ``ability``, ``data_source`` (checked in this order, at the top level and inside
   ``extra_info`` / ``metadata``) are matched against :data:`SYNONYMS`: first the whole value
   (lower-cased, ``_``/``-``/``/`` read as spaces), then each of its words, so ``"Physics"``,
   ``"mmk12_physics"`` and ``"earth science"`` all map. The first field that maps decides.
2. Question keywords. Each discipline has a weighted vocabulary (:data:`KEYWORDS`: whole-word,
   case-insensitive terms, also found with a plural ending; multi-word phrases and strongly
   specific terms weigh more), drawn from school and undergraduate curricula (geometry,
   functions, statistics; mechanics, circuits, optics, waves; substances, reactions, laboratory
   and spectra; the Moon, planets, stars, galaxies; maps, landforms, weather, population; cells,
   genetics, ecology, the human body). A chemical formula in the question (KNO3, Fe2O3, NaCl)
   counts for chemistry. The score of a discipline is the sum of the weights of its terms found
   in the question; the highest score wins if it reaches :data:`MIN_SCORE`, else ``unknown``.
   Ties go to the discipline listed first in ``schemas.sample.DISCIPLINES``.

Accuracy, checked (>= 0.85 on each table) by tests/test_discipline.py:

* tests/data/discipline_questions.jsonl, 78 questions the first vocabulary was written from: 0.987;
* discipline_questions_heldout.jsonl (30) and discipline_questions_heldout2.jsonl (98, 14 with no
  discipline), both written before the vocabulary was extended: 0.700 -> 0.967 and 0.755 -> 0.969.
  Their errors were seen while extending it, so these are no longer unbiased estimates;
* discipline_questions_heldout3.jsonl (48), written at the same time and never looked at question
  by question while extending: 0.792 -> 1.000 (the honest estimate of the change).

On the real records of ../shared/real-data (455 questions: V* attribute questions and MVTec
anomaly inspection, no discipline; two VisualSketchpad math tasks) 455/455 get the expected label
(454/455 before: the graph max-flow task was unknown).
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
# A term also matches with a plural "s"/"es" ("magnet" finds "magnets"); en dashes read as hyphens.
KEYWORDS: dict[str, dict[str, float]] = {
    "mathematics": {
        # plane and solid geometry
        "triangle": 2, "isosceles": 3, "equilateral": 3, "hypotenuse": 3, "right triangle": 3, "angle": 1,
        "∠": 3, "∥": 3, "⊥": 3, "△": 3, "≅": 3, "\\odot": 3, "\\angle": 3, "m∠": 3,
        "circle": 1, "diameter": 1, "radius": 1, "chord": 2, "arc": 1, "circumference": 2, "polygon": 3,
        "quadrilateral": 3, "parallelogram": 3, "rectangle": 1, "trapezoid": 3, "trapezium": 3, "rhombus": 3,
        "pentagon": 3, "hexagon": 3, "octagon": 3, "square": 1, "vertex": 1, "vertices": 2, "perpendicular": 2,
        "bisector": 3, "bisects": 3, "midpoint": 3, "diagonal": 2, "congruent": 3, "similar triangles": 3,
        "tangent to circle": 3, "inscribed": 3, "circumscribed": 3, "central angle": 3, "sector": 2,
        "parallel lines": 3, "line segment": 3, "theorem": 3, "pythagorean": 3, "pythagoras": 3,
        "area": 1, "perimeter": 3, "shaded region": 3, "shaded area": 3, "surface area": 3, "volume": 1,
        "prism": 2, "cuboid": 3, "pyramid": 1, "cylinder": 1, "cone": 1, "sphere": 1, "cube": 2, "unit cube": 3,
        "net": 1, "square units": 3, "square centimetres": 3, "square centimeters": 3, "square metres": 2,
        "square meters": 2, "symmetry": 2, "line of symmetry": 3, "axis of symmetry": 3, "scale factor": 3,
        "measure of": 2, "length of": 1, "find the length": 2, "degrees": 1,
        # algebra and functions
        "function": 2, "f(x)": 3, "g(x)": 3, "y =": 2, "parabola": 3, "hyperbola": 3, "ellipse": 1,
        "quadratic": 3, "linear function": 3, "polynomial": 3, "exponential function": 3, "slope": 2,
        "intercept": 2, "y-intercept": 3, "coordinate plane": 3, "coordinates": 1, "quadrant": 3,
        "ordered pair": 3, "equation": 1, "inequality": 3, "solve for": 3, "value of x": 3, "find x": 3,
        "minimum value": 2, "maximum value": 2, "domain": 1, "asymptote": 3, "derivative": 3, "integral": 3,
        "logarithm": 3, "sine": 2, "cosine": 2, "tangent": 1, "trigonometric": 3, "x-axis": 1, "y-axis": 1,
        "even function": 3, "odd function": 3, "sequence": 2, "arithmetic sequence": 3, "geometric sequence": 3,
        # arithmetic and numbers
        "integer": 2, "fraction": 1, "decimal": 2, "ratio": 1, "sum": 1, "difference": 1, "product": 1,
        "multiply": 2, "divided by": 2, "remainder": 3, "digit": 2, "prime number": 3, "factor": 1,
        "common multiple": 3, "common factor": 3, "square root": 3, "percentage": 1.5, "percent": 1,
        "subtract all": 3, "how many": 0.5, "pattern": 1, "calculate": 0.5,
        # statistics and probability
        "median": 2, "mean": 1, "mode": 1, "average": 1, "range": 1, "probability": 3, "bar chart": 2,
        "bar graph": 2, "line graph": 1, "line chart": 2, "pie chart": 3, "histogram": 2, "scatter plot": 3,
        "box plot": 3, "box-and-whisker": 3, "stem-and-leaf": 3, "dot plot": 3, "tally": 3,
        "frequency table": 3, "quartile": 3, "interquartile": 3, "standard deviation": 3, "outlier": 2,
        "data point": 2, "line of best fit": 3, "venn diagram": 3, "table": 1, "table of values": 3,
        "rate of change": 2, "marble": 2, "dice": 2, "spinner": 3, "coin": 1, "sales": 1, "profit": 2,
    },
    "physics": {
        # mechanics
        "force": 2, "net force": 3, "resultant force": 3, "normal force": 3, "free-body": 3, "tension": 3,
        "friction": 3, "frictionless": 3, "mass": 1, "weight": 1, "incline": 3, "inclined plane": 3, "ramp": 2,
        "acceleration": 3, "deceleration": 3, "velocity": 3, "speed": 1, "displacement": 3, "momentum": 3,
        "collision": 3, "energy": 1, "kinetic": 3, "potential energy": 3, "gravitational": 2, "work done": 3,
        "power": 1, "joule": 3, "watt": 3, "newton": 3, "newton's": 3, "m/s": 3, "m/s2": 3, "kg": 1,
        "gravity": 2, "free fall": 3, "projectile": 3, "thrown": 2, "thrown horizontally": 3, "dropped": 1,
        "velocity-time": 3, "speed-time": 3, "distance-time": 3, "displacement-time": 3, "motion": 2,
        "pendulum": 3, "spring": 2, "spring constant": 3, "extension": 2, "hooke's law": 3, "elastic": 2,
        "pulley": 3, "lever": 3, "torque": 3, "moment": 2, "pivot": 3, "fulcrum": 3, "centre of mass": 3,
        "center of mass": 3, "equilibrium": 1, "load": 1, "effort": 2, "horizontal": 1, "launched": 2,
        # fluids and heat
        "pressure": 2, "hydraulic": 3, "piston": 2, "buoyancy": 3, "buoyant": 3, "upthrust": 3, "density": 1,
        "gauge": 1, "temperature": 0.5, "heat": 1, "thermal": 2, "specific heat": 3, "latent heat": 3,
        "conduction": 2, "convection": 1, "boyle's law": 3, "gas law": 3, "thermometer": 1,
        # electricity and magnetism
        "circuit": 3, "circuit diagram": 3, "resistor": 3, "resistance": 3, "equivalent resistance": 3,
        "current": 2, "voltage": 3, "potential difference": 3, "emf": 3, "battery": 2, "cell voltage": 3,
        "bulb": 2, "lamp": 1, "switch": 1, "series": 1, "in parallel": 2, "ammeter": 3, "voltmeter": 3,
        "galvanometer": 3, "ohm": 3, "Ω": 3, "capacitor": 3, "magnet": 3, "bar magnet": 3, "magnetic": 2,
        "magnetic field": 3, "electric field": 3, "field lines": 3, "attract": 2, "repel": 3, "solenoid": 3,
        "electromagnet": 3, "induction": 2, "coil": 2, "transformer": 3, "generator": 2, "motor": 2,
        "charge": 2, "charged particle": 3, "positively charged": 3, "negatively charged": 3, "deflected": 2,
        # optics and waves
        "lens": 3, "convex lens": 3, "concave": 2, "convex": 2, "focal length": 3, "focal point": 3,
        "principal axis": 3, "mirror": 2, "plane mirror": 3, "reflection": 2, "refraction": 3,
        "refractive index": 3, "critical angle": 3, "total internal reflection": 3, "ray of light": 3,
        "light ray": 3, "ray diagram": 3, "glass block": 3, "virtual image": 3, "real image": 3,
        "wavelength": 1, "frequency": 2, "wave": 2, "amplitude": 3, "transverse": 3, "longitudinal": 3,
        "crest": 3, "trough": 2, "oscilloscope": 3, "sound wave": 3, "loudness": 3, "pitch": 1, "echo": 3,
        "diffraction": 3, "interference": 2, "period": 1,
        # modern physics
        "radioactive": 2, "half-life": 2, "alpha particle": 3, "beta particle": 3, "gamma ray": 3,
        "photoelectric": 3,
    },
    "chemistry": {
        # substances and structure
        "chemical": 3, "compound": 2, "substance": 2, "mixture": 2, "pure substance": 3, "particle diagram": 3,
        "molecule": 2, "molecular": 2, "atom": 2, "element": 1, "periodic table": 3, "atomic number": 3,
        "mass number": 3, "isotope": 3, "electron": 1, "electron configuration": 3, "electron shell": 3,
        "proton": 1, "neutron": 1, "iupac": 3, "organic": 2, "hydrocarbon": 3, "alkane": 3, "alkene": 3,
        "alkyne": 3, "alcohol": 2, "ester": 3, "aldehyde": 3, "ketone": 3, "carboxylic acid": 3, "amine": 3,
        "benzene": 3, "polymer": 3, "monomer": 3, "skeletal structure": 3, "skeletal formula": 3,
        "structural formula": 3, "ball-and-stick": 3, "carbon atoms": 3, "hydrogen atoms": 3, "double bond": 3,
        "functional group": 3, "isomer": 3, "bond": 2, "covalent": 3, "ionic": 3, "hydrogen bond": 3,
        "lewis structure": 3, "bond angle": 3, "shape of the molecule": 3, "valence": 2, "ion": 1,
        "lattice": 2, "noble gas": 3, "halogen": 3, "alkali metal": 3, "transition metal": 3,
        "oxidation state": 3, "oxidation number": 3,
        # named substances
        "hydrogen": 1, "oxygen": 1, "carbon": 1, "nitrogen": 1, "chlorine": 3, "sodium": 2, "potassium": 2,
        "magnesium": 2, "calcium": 2, "copper": 1, "zinc": 2, "ammonia": 3, "methane": 3, "ethanol": 3,
        "propane": 3, "sulfate": 3, "sulphate": 3, "nitrate": 3, "carbonate": 3, "chloride": 3, "oxide": 3,
        "hydroxide": 3, "permanganate": 3, "hydrochloric": 3, "sulfuric": 3, "sulphuric": 3, "naoh": 3,
        "h2o": 3, "hcl": 3, "marble chips": 3,
        # reactions, quantities and energy
        "reaction": 2, "react": 2, "reactant": 3, "rate of reaction": 3, "catalyst": 3, "activation energy": 3,
        "energy profile": 3, "enthalpy": 3, "exothermic": 3, "endothermic": 3, "combustion": 2,
        "burns completely": 3, "chemical equation": 3, "balanced equation": 3, "balance the equation": 3,
        "mole": 3, "mol": 3, "molar": 3, "molarity": 3, "mol/l": 3, "g/mol": 3, "kj/mol": 3,
        "titration": 3, "ph": 3, "pka": 3, "acid": 2, "alkali": 2, "base": 1, "basic": 1, "neutral": 1,
        "indicator": 2, "universal indicator": 3, "salt": 2, "solubility": 3, "solubility curve": 3,
        "soluble": 2, "insoluble": 3, "solute": 3, "solvent": 3, "dissolve": 2, "saturated": 2,
        "solution": 1, "concentration": 2, "precipitate": 3, "redox": 3, "oxidation": 3, "reduction": 2,
        "electrolysis": 3, "electrolyte": 3, "electrode": 3, "negative electrode": 3, "anode": 3,
        "cathode": 3, "electrochemical": 3, "phase diagram": 3, "triple point": 3,
        # laboratory and analysis
        "beaker": 3, "flask": 2, "test tube": 3, "burette": 3, "pipette": 3, "bunsen": 3,
        "distillation": 3, "fractional distillation": 3, "filtration": 2, "crystallisation": 3,
        "crystallization": 3, "chromatography": 3, "chromatogram": 3, "rf value": 3, "mass spectrum": 3,
        "m/z": 3, "spectrum": 1, "ir spectrum": 3, "infrared spectrum": 3, "nmr": 3, "absorption spectrum": 2,
        "uv-visible": 3, "ligand": 3,
    },
    "astronomy": {
        "moon": 3, "lunar": 3, "new moon": 3, "full moon": 3, "crescent": 3, "gibbous": 3, "sun": 1.5,
        "solar": 1, "solar system": 3, "solar eclipse": 3, "solar disk": 3, "planet": 3, "exoplanet": 3,
        "mercury": 1, "venus": 3, "mars": 3, "jupiter": 3, "saturn": 3, "uranus": 3, "neptune": 3, "pluto": 3,
        "star": 2, "polaris": 3, "north star": 3, "sirius": 3, "galaxy": 3,
        "milky way": 3, "andromeda": 3, "nebula": 3, "supernova": 3, "black hole": 3, "neutron star": 3,
        "pulsar": 3, "quasar": 3, "dark matter": 3, "dark energy": 3, "constellation": 3, "sky chart": 3,
        "star chart": 3, "night sky": 3, "sky": 1, "telescope": 3, "observatory": 3, "orbit": 2, "orbiting": 2,
        "orbital": 2, "orbital period": 3, "rotation curve": 3, "eclipse": 3, "solstice": 3, "equinox": 3,
        "redshift": 3, "blueshift": 3, "light curve": 3, "hertzsprung-russell": 3, "h-r diagram": 3,
        "hr diagram": 3, "main sequence": 3, "main-sequence": 3, "red giant": 3, "white dwarf": 3,
        "magnitude": 2, "apparent magnitude": 3, "absolute magnitude": 3, "luminosity": 3, "spectral class": 3,
        "cepheid": 3, "crater": 3, "impact crater": 3, "celestial": 3, "star trail": 3, "comet": 3,
        "asteroid": 3, "meteor": 3, "meteorite": 3, "light-year": 3, "parsec": 3, "kpc": 3, "mpc": 3,
        "astronomical unit": 3, "phases": 1, "phase of the moon": 3, "earth's orbit": 3, "deep-sky": 3,
        "angular size": 3, "sunspot": 3, "solar flare": 3, "corona": 2, "aurora": 2, "space station": 3,
        "spacecraft": 3, "space probe": 3, "rover": 2, "universe": 3, "cosmic": 3, "big bang": 3,
        "interstellar": 3, "hubble": 3, "long exposure": 2, "transit": 2, "astronaut": 3,
    },
    "geography": {
        # maps
        "map": 2, "sketch map": 3, "map extract": 3, "os map": 3, "world map": 3, "map scale": 3,
        "topographic": 3, "contour": 3, "contour lines": 3, "grid reference": 3, "six-figure": 3,
        "four-figure": 3, "spot height": 3, "compass": 2, "north": 1, "latitude": 3, "longitude": 3,
        "equator": 2, "hemisphere": 1, "tropic": 2, "time zone": 3, "greenwich": 3, "choropleth": 3,
        "aerial photograph": 3, "satellite image": 2, "elevation": 2, "altitude": 1, "summit": 2,
        # human geography
        "country": 2, "border": 2, "continent": 3, "capital city": 2, "population": 1,
        "population pyramid": 3, "population density": 3, "birth rate": 3, "death rate": 3, "migration": 2,
        "gdp": 3, "per capita": 3, "employment structure": 3, "industrialised": 3, "industrialized": 3,
        "land use": 3, "farmland": 3, "urban": 2, "rural": 2, "urbanisation": 3, "urbanization": 3,
        "settlement": 3, "village": 2, "town": 1, "city": 1, "outskirts": 2, "region": 1, "port": 1,
        "kilometres": 1, "kilometers": 1, "km": 1,
        # physical geography
        "river": 2, "discharge": 2, "hydrograph": 3, "tributary": 3, "meander": 3, "floodplain": 3,
        "estuary": 3, "delta": 2, "drainage basin": 3, "water cycle": 3, "groundwater": 3, "sea": 1,
        "ocean": 2, "ocean current": 3, "coast": 2, "coastline": 3, "coastal": 3, "cliff": 1, "headland": 3,
        "wave-cut": 3, "spit": 2, "beach": 1, "deposition": 2, "deposited": 2, "landform": 3, "erosion": 3,
        "weathering": 3, "glacier": 3, "glaciation": 3, "glacial": 3, "u-shaped valley": 3,
        "v-shaped valley": 3, "valley": 2, "mountain range": 3, "plate boundary": 3,
        "tectonic": 3, "oceanic plate": 3, "continental plate": 3, "subduction": 3, "fault line": 3,
        "volcano": 2, "earthquake": 2, "rock": 1, "sedimentary": 3, "igneous": 3, "metamorphic": 3, "soil": 1,
        "desert": 2, "rainforest": 2, "tundra": 2, "savanna": 2, "biome": 1,
        # weather and climate
        "climate": 3, "climate graph": 3, "rainfall": 3, "precipitation": 3, "isotherm": 3, "isobar": 3,
        "weather": 2, "weather map": 3, "low-pressure": 3, "high-pressure": 3, "cold front": 3, "warm front": 3,
        "monsoon": 3, "humidity": 2, "wind": 1, "monthly temperature": 3, "average temperature": 2,
        # a few places (countries and cities named in map and climate questions)
        "africa": 2, "asia": 2, "europe": 2, "america": 1, "australia": 1, "pacific": 2, "atlantic": 2,
        "france": 1, "germany": 1, "austria": 1, "italy": 1, "spain": 1, "china": 1, "india": 1, "japan": 1,
        "brazil": 1, "egypt": 1, "kenya": 1, "russia": 1, "canada": 1, "mexico": 1, "london": 1, "paris": 1,
        "tokyo": 1, "cairo": 1, "moscow": 1, "beijing": 1, "mumbai": 1, "sydney": 1, "new york": 1,
    },
    "biology": {
        # cells and genetics
        "cell": 2, "animal cell": 3, "plant cell": 3, "cell wall": 3, "cell membrane": 3,
        "organelle": 3, "cytoplasm": 3, "vacuole": 3, "ribosome": 3, "mitosis": 3, "meiosis": 3,
        "metaphase": 3, "anaphase": 3, "prophase": 3, "cell division": 3, "nucleus": 2, "chromosome": 3,
        "karyotype": 3, "dna": 3, "rna": 3, "gene": 3, "allele": 3, "punnett": 3, "offspring": 3,
        "phenotype": 3, "genotype": 3, "recessive": 3, "dominant": 1, "inherited": 2, "inheritance": 3,
        "heterozygous": 3, "homozygous": 3, "sex-linked": 3, "trait": 2, "mutation": 3, "pedigree": 3,
        "enzyme": 3, "protein": 2, "photosynthesis": 3, "chloroplast": 3, "mitochondria": 3,
        "mitochondrion": 3, "respiration": 3, "aerobic": 3, "anaerobic": 3, "atp": 3,
        # ecology and evolution
        "food web": 3, "food chain": 3, "ecosystem": 3, "consumer": 2, "primary consumer": 3,
        "secondary consumer": 3, "producer": 2, "decomposer": 3, "trophic": 3, "pyramid of numbers": 3,
        "pyramid of biomass": 3, "biomass": 3, "predator": 3, "prey": 3, "habitat": 2, "community": 1,
        "organism": 3, "species": 2, "adaptation": 2, "adapted": 2, "natural selection": 3,
        "evolution": 3, "fossil": 1, "carrying capacity": 3, "life cycle": 3, "larva": 3, "pupa": 3,
        # organisms
        "mammal": 3, "amphibian": 3, "reptile": 3, "insect": 3, "vertebrate": 3, "invertebrate": 3,
        "herbivore": 3, "carnivore": 3, "omnivore": 3, "bacteria": 3, "bacterium": 3, "virus": 3, "fungi": 3,
        "fungus": 3, "algae": 3, "agar": 3, "antibiotic": 3, "colonies": 1, "plant": 1, "animal": 1.5,
        "flower": 3, "petal": 3, "stamen": 3, "anther": 3, "stigma": 3, "ovary": 3, "pollen": 3,
        "pollination": 3, "seed": 2, "germination": 3, "leaf": 2, "stomata": 3, "xylem": 3, "phloem": 3,
        "plant stem": 3, "root hair": 3, "epidermis": 3, "tissue": 3, "organ": 2,
        # the human body
        "heart": 2, "chamber": 1, "blood": 2, "blood vessel": 3, "artery": 3, "vein": 3, "capillary": 3,
        "oxygenated": 3, "deoxygenated": 3, "red blood cell": 3, "white blood cell": 3, "blood smear": 3,
        "blood glucose": 3, "hormone": 3, "insulin": 3, "glucagon": 3, "lung": 3, "kidney": 3, "nephron": 3,
        "liver": 3, "stomach": 3, "small intestine": 3, "intestine": 3, "villus": 3, "villi": 3, "digestive": 3,
        "bile": 3, "skeleton": 3, "skull": 3, "bone": 3, "muscle": 3, "teeth": 2, "neuron": 3, "nerve": 3,
        "reflex": 3, "brain": 2, "retina": 3, "human eye": 3, "immune": 3, "antibody": 3, "infection": 2,
        "disease": 2, "syndrome": 3, "vitamin": 3,
        # methods
        "micrograph": 2, "microscope": 2, "magnification": 2, "stained": 2, "gel electrophoresis": 3,
        "dna fingerprint": 3,
    },
}
MIN_SCORE = 1.0
# Abbreviations and units: matched as written, never with a plural ending.
NO_PLURAL = frozenset({"mol", "kg", "km", "ph", "pka", "kpc", "mpc", "emf", "gdp", "atp", "dna", "rna", "nmr",
                       "iupac", "hcl", "naoh", "h2o", "m/s", "m/s2", "m/z", "mol/l", "g/mol", "kj/mol"})
# Chemical formulas written in the question (KNO3, Fe2O3, NaCl, CO2, H2SO4): two or more element
# symbols with a digit or a two-letter symbol among them (so geometry labels such as "BC" or "ABCD"
# are not formulas), or a diatomic gas.
_ELEMENT_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr "
    "Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W "
    "Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr"
)
ELEMENTS = frozenset(_ELEMENT_SYMBOLS.split())
DIATOMIC = frozenset({"H2", "N2", "O2", "F2", "Cl2", "Br2", "I2", "O3"})
FORMULA_WEIGHT = 3.0
_FORMULA = re.compile(r"(?<![\w(])((?:\(?[A-Z][a-z]?\d*\)?\d*){1,8})(?![\w])")
_ELEMENT_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")
# Subscript/superscript digits and dashes as plain characters (CO₂ -> CO2, velocity–time -> velocity-time).
_TRANSLATE = str.maketrans("₀₁₂₃₄₅₆₇₈₉⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻–—−", "01234567890123456789+----")


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


def _term_regex(term: str) -> str:
    body = re.escape(term)
    if term[-1].isalpha() and term.lower() not in NO_PLURAL:
        plural = f"|{re.escape(term[:-1])}ies" if term.endswith("y") else ""
        body = f"(?:{body}(?:s|es)?{plural})"
    # whole-word match; terms that start/end with a symbol match as written
    left = r"(?<![\w])" if term[0].isalnum() else ""
    right = r"(?![\w])" if term[-1].isalnum() else ""
    return left + body + right


@lru_cache(maxsize=1)
def _patterns() -> list[tuple[str, re.Pattern[str], float]]:
    return [
        (discipline, re.compile(_term_regex(term), re.I), float(weight))
        for discipline, terms in KEYWORDS.items()
        for term, weight in terms.items()
    ]


def _is_formula(token: str) -> bool:
    bare = token.replace("(", "").replace(")", "")
    parts = _ELEMENT_TOKEN.findall(bare)
    if "".join(sym + n for sym, n in parts) != bare or not all(sym in ELEMENTS for sym, _ in parts):
        return False
    if bare in DIATOMIC:
        return True
    return len(parts) >= 2 and any(n or len(sym) == 2 for sym, n in parts)


def has_chemical_formula(question: str) -> bool:
    """Whether the question writes a chemical formula (see :data:`ELEMENTS`)."""
    return any(_is_formula(m.group(1)) for m in _FORMULA.finditer(question))


def keyword_scores(question: str) -> dict[str, float]:
    text = question.translate(_TRANSLATE)
    scores = dict.fromkeys(KEYWORDS, 0.0)
    for discipline, pattern, weight in _patterns():
        if pattern.search(text):
            scores[discipline] += weight
    if has_chemical_formula(text):
        scores["chemistry"] += FORMULA_WEIGHT
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
