"""One record of the corpus: its trajectory written case by case around a scene, its cells run
for real (all but the hostile ones), and the record and label assembled from it.

Every case (``_Traj.case_<case>``) plans with the scene's ``topic`` phrases, runs its cells in a
:class:`~sample_corpus.execution.CellSession` and records exactly what they produced, except where
the case is about the opposite: fabricated records record the same code run on another region,
and hostile cells are NEVER executed (their observation is invented).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.formats.native import (
    KEY_ANSWER,
    KEY_CODE,
    KEY_DATASET,
    KEY_DISCIPLINE,
    KEY_FINAL_ANSWER,
    KEY_ID,
    KEY_IMAGES,
    KEY_OBS_IMAGES,
    KEY_OBS_TEXT,
    KEY_OBSERVATION,
    KEY_QUESTION,
    KEY_REASONING,
    KEY_TURNS,
)
from sample_corpus.drawing import (
    Box,
    Scene,
    box_center,
    misread_value,
    pad_box,
    pick,
    png_bytes,
    same_size_box,
)
from sample_corpus.execution import CellSession
from sample_corpus.plan import (
    CORPUS_DISCIPLINES,
    DATASET_NAME,
    EXPECTED_ROUTE,
    ID_PREFIX,
    IMAGES_DIR,
    LABEL_CASE,
    LABEL_DISCIPLINE,
    LABEL_EXPECTED_ROUTE,
    LABEL_SAMPLE_ID,
)
from sample_corpus.scenes import make_scene
from sample_corpus.templates import (
    ENHANCE_CELLS,
    REDUNDANT_CELLS,
    RESAMPLE_NAMES,
    count_cell,
    hostile_cell,
    zoom_cell,
)
from schemas.sample import (
    IMG_SHA256,
    TURN_CODE,
    TURN_OBS_IMAGES,
    TURN_OBS_TEXT,
    TURN_REASONING,
    compute_sample_id,
)


def _line(text: str, key: str) -> str:
    for ln in text.splitlines():
        if key in ln:
            return ln.strip()
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


@dataclass
class _Turn:
    """One turn: its reasoning and, for a code turn, the code and its recorded observation."""

    reasoning: str
    code: str | None = None
    text: str | None = None
    images: list[bytes] = field(default_factory=list)


class _Traj:
    """One record being written: the scene, the choices drawn for its cells (zoom window, scale,
    filter), the turns so far and the cell sessions ("work"; "decoy" for a fabricated record)."""

    def __init__(
        self, i: int, discipline: str, case: str, rng: np.random.Generator, scene: Scene, workroot: Path
    ):
        self.i, self.discipline, self.case, self.rng, self.scene = i, discipline, case, rng, scene
        self.input_png = png_bytes(scene.image)
        self.workroot = workroot
        self.turns: list[_Turn] = []
        self.final_answer = ""
        self._sessions: dict[str, CellSession] = {}
        self.W, self.H = scene.image.size
        self.scale = int(rng.integers(3, 5))
        self.resample = pick(rng, ("LANCZOS", "BICUBIC"))
        self.use_global = bool(rng.random() < 0.5)
        self.t = scene.topic
        if scene.kind == "label":
            self.view = pad_box(
                scene.target, int(rng.integers(50, 110)), int(rng.integers(35, 80)), scene.image.size
            )
            self.decoy_view = same_size_box(self.view, box_center(scene.decoy), scene.image.size)
        elif scene.kind == "count":
            pad = int(rng.integers(30, 60))
            self.view = pad_box(scene.target, pad + 5, pad + 5, scene.image.size)
            self.decoy_view = same_size_box(self.view, box_center(scene.decoy), scene.image.size)

    # execution ---------------------------------------------------------------------------
    def session(self, name: str = "work") -> CellSession:
        if name not in self._sessions:
            self._sessions[name] = CellSession(self.workroot / name, [self.input_png])
        return self._sessions[name]

    def cell(self, reasoning: str, code: str) -> str:
        """Execute a trusted cell and record exactly what it produced."""
        text, images = self.session().run(code)
        self.turns.append(_Turn(reasoning, code, text, images))
        return text

    def recorded(self, reasoning: str, code: str, text: str, images: list[bytes]) -> None:
        """Record an observation that was NOT produced by running ``code`` here."""
        self.turns.append(_Turn(reasoning, code, text, images))

    def final(self, reasoning: str, answer: str) -> None:
        self.turns.append(_Turn(reasoning))
        self.final_answer = answer

    # shared pieces -----------------------------------------------------------------------
    def zoom_code(self, box: Box | None = None, typo: bool = False) -> str:
        comment = "around " + (
            self.t["target"] if self.scene.kind == "label" else "the " + self.t["box_name"]
        )
        return zoom_cell(box or self.view, self.scale, self.resample, self.use_global, comment, typo=typo)

    def zoom_size(self, box: Box | None = None) -> tuple[int, int]:
        b = box or self.view
        return ((b[2] - b[0]) * self.scale, (b[3] - b[1]) * self.scale)

    def zoom_image(self, box: Box) -> bytes:
        crop = self.scene.image.convert("RGB").crop(box)
        filt = getattr(Image.Resampling, self.resample)
        return png_bytes(crop.resize((crop.width * self.scale, crop.height * self.scale), filt))

    def plan(self) -> str:
        t, sc = self.t, self.scene
        rs = RESAMPLE_NAMES[self.resample]
        if sc.kind == "label":
            return (
                f"{t['overview']} The question asks for {t['target']}. {t['zoom_why']} I'll crop the window "
                f"{self.view} around it and upscale it {self.scale}x with {rs} resampling, printing the crop box "
                f"and the output size so I can check the geometry."
            )
        return (
            f"{t['overview']} I need the number of {t['objects']} fully inside the {t['box_name']}. The box spans "
            f"only about {t['box_px']} px of the {self.W}x{self.H} frame, so each {t['obj']} is just a few pixels "
            f"across at full-frame view. I'll first crop the window {self.view} around the box and enlarge it "
            f"{self.scale}x with {rs} resampling to inspect it."
        )

    def count_reasoning(self, zline: str) -> str:
        t = self.t
        return (
            f"The zoom worked (`{zline}`): the {t['box_name']} is clearly visible with a handful of compact "
            f"{t['objects']} inside and none crossing the outline. Counting by eye risks missing faint ones or "
            f"counting one twice, so I'll {t['method']} inside the box interior {self.scene.target}, inset a few "
            f"pixels so the outline itself is not picked up."
        )

    def count_code(self, off_by_one: bool = False) -> str:
        variant = "cv2" if self.discipline == "astronomy" else "skimage"
        if self.rng.random() < 0.3:
            variant = "skimage" if variant == "cv2" else "cv2"
        return count_cell(self.t, self.scene.target, variant, off_by_one)

    def enhance(self) -> tuple[str, str, str]:
        return ENHANCE_CELLS[pick(self.rng, tuple(ENHANCE_CELLS))]

    def enhance_reasoning(self, zline: str, desc: str) -> str:
        return (
            f"The crop came out as expected (`{zline}`), and the annotation is now large enough to make out, but "
            f"the upscaled strokes are soft against the {self.t['bg']}. To be sure about every character I'll "
            f"{desc} and save the result as a second view."
        )

    @staticmethod
    def parse_count(text: str) -> tuple[int, list[int]]:
        first = text.strip().splitlines()[0]
        m = re.search(r"(\d+)\s*$", first)
        areas = re.search(r"areas \(px\): \[([^\]]*)\]", text)
        vals = [int(x) for x in areas.group(1).split(",") if x.strip()] if areas else []
        return (int(m.group(1)) if m else -1), vals

    # cases -------------------------------------------------------------------------------
    def case_zoom(self, misread: bool = False) -> None:
        sc, t = self.scene, self.t
        ztext = self.cell(self.plan(), self.zoom_code())
        zline = _line(ztext, "crop box")
        if sc.kind == "label":
            lead = f"The zoom printed `{zline}`, a clean enlarged view of the region. "
            if self.rng.random() < 0.65:
                desc, key, code = self.enhance()
                etext = self.cell(self.enhance_reasoning(zline, desc), code)
                lead = (
                    f"The enhancement printed `{_line(etext, key)}`, so the text strokes are now cleanly "
                    f"separated from the {t['bg']}. "
                )
            if misread:
                v = misread_value(sc.answer, self.rng)
                self.final(
                    f"{lead}In the enlarged view the annotation {t['where']} reads '{v}'. The digits are a "
                    f"little soft from the interpolation, but that reading looks plausible for the figure. "
                    f"Final answer: {v}.",
                    v,
                )
            else:
                self.final(
                    f"{lead}In the enlarged view the annotation {t['where']} reads '{sc.answer}'; every "
                    f"character is unambiguous at this magnification. {t['note']} Final answer: {sc.answer}.",
                    sc.answer,
                )
            return
        ctext = self.cell(self.count_reasoning(zline), self.count_code())
        n, areas = self.parse_count(ctext)
        if n != int(sc.answer):  # the construction guarantees this; fail loudly if it ever breaks
            raise RuntimeError(f"record {self.i}: counting code found {n}, construction says {sc.answer}")
        cline, aline = _line(ctext, t["noun"]), _line(ctext, "areas")
        if misread and (len(areas) < 2 or self.rng.random() < 0.5):
            k = n + 1
            why = (
                f"The largest detection ({max(areas)} px) is noticeably bigger than the others, which suggests two "
                f"{t['objects']} blended together, so I'll count it twice."
            )
        elif misread:
            k = n - 1
            why = (
                f"The smallest detection ({min(areas)} px) could be a fragment or noise rather than a real "
                f"{t['obj']}, so I'll discard it."
            )
        else:
            k = n
            why = (
                f"All areas ({min(areas)}-{max(areas)} px) are compatible with single compact {t['objects']}: no "
                f"merged pairs and no single-pixel noise detections."
            )
        self.final(
            f"The measurement reports `{cline}` with `{aline}`. {why} {t['note'](k)} Final answer: {k}.",
            str(k),
        )

    def case_wrong_answer(self) -> None:
        self.case_zoom(misread=True)

    def case_decorative(self) -> None:
        sc, t = self.scene, self.t
        box = pad_box(sc.target, 20, 14, sc.image.size)
        if self.rng.random() < 0.7:
            code = (
                "from PIL import Image\n\n"
                f"box = {box}  # the '{t['label']}' label\n"
                'crop = image.convert("RGB").crop(box)\n'
                "crop = crop.resize((crop.width * 2, crop.height * 2), Image.Resampling.BICUBIC)\n"
                'crop.save("zoom_0.png")\n'
                'print("label crop:", box, "->", crop.size)\n'
            )
            plan = (
                f"{t['overview']} {t['stated']} I'll still crop the label region {box} of the sketch and enlarge "
                f"it 2x to confirm the value before solving."
            )
        else:
            code = (
                "from PIL import ImageOps\n\n"
                'out = ImageOps.autocontrast(image.convert("RGB"), cutoff=1)\n'
                'out.save("enhanced_0.png")\n'
                'print("autocontrast applied:", out.size, "extrema", out.convert("L").getextrema())\n'
            )
            plan = (
                f"{t['overview']} {t['stated']} I'll still apply an autocontrast pass to the sketch to make sure "
                f"I am not missing any faint detail before solving."
            )
        text = self.cell(plan, code)
        self.final(
            f"The output (`{_last_line(text)}`) shows the label '{t['label']}' in large clear type, identical "
            f"to the value given in the question, so the picture adds nothing beyond the text. "
            f"{t['solution']} Final answer: {sc.answer}.",
            sc.answer,
        )

    def case_redundant(self) -> None:
        sc, t = self.scene, self.t
        desc, code = pick(self.rng, REDUNDANT_CELLS)
        what = (
            t["target"] if sc.kind == "label" else f"the number of {t['objects']} inside the {t['box_name']}"
        )
        text = self.cell(f"{t['overview']} The question asks for {what}. First I'll {desc}.", code)
        line = _last_line(text)
        if sc.kind == "label":
            body = (
                f"Reading {t['target']} directly from this view, the annotation {t['where']} says '{sc.answer}'. "
                f"{t['note']}"
            )
        else:
            body = (
                f"Counting the {t['objects']} inside the {t['box_name']} on this view, I find {sc.answer}. "
                f"{t['note'](int(sc.answer))}"
            )
        self.final(
            f"The output (`{line}`) is the same {self.W}x{self.H} picture as the input, so the processing "
            f"step did not change what I can see. {body} Final answer: {sc.answer}.",
            sc.answer,
        )

    def case_failing_code(self) -> None:
        sc, t = self.scene, self.t
        variant = int(self.rng.integers(5))
        x0, y0, x1, y1 = self.view
        errs: list[str] = []
        if variant == 0 or variant == 4:  # typo in the resampling filter
            errs.append(_last_line(self.cell(self.plan(), self.zoom_code(typo=True))))
        elif variant == 1:  # zoom works, follow-up cell fails
            zline = _line(self.cell(self.plan(), self.zoom_code()), "crop box")
            if sc.kind == "label":
                desc, _, code = self.enhance()
                code = code.replace("(zoom", "(zoomed", 1)  # NameError: the variable is called `zoom`
                errs.append(_last_line(self.cell(self.enhance_reasoning(zline, desc), code)))
            else:
                errs.append(
                    _last_line(self.cell(self.count_reasoning(zline), self.count_code(off_by_one=True)))
                )
        elif variant == 2:  # misspelt OpenCV function
            code = (
                "import cv2\n\n"
                'img = cv2.imread("input_0.png")\n'
                f"crop = img[{y0}:{y1}, {x0}:{x1}]\n"
                'print("crop shape:", crop.shape)\n'
                "sharp = cv2.addWeighted(crop, 1.5, cv2.GaussianBlurr(crop, (0, 0), 3), -0.5, 0)\n"
                f"zoom = cv2.resize(sharp, None, fx={self.scale}, fy={self.scale}, interpolation=cv2.INTER_CUBIC)\n"
                'cv2.imwrite("zoom_0.png", zoom)\n'
            )
            plan = self.plan().replace(
                f"with {RESAMPLE_NAMES[self.resample]} resampling", "after an unsharp mask with OpenCV"
            )
            errs.append(_last_line(self.cell(plan, code)))
        if variant in (3, 4):  # (x, y) vs (row, col) mix-up
            code = (
                "import numpy as np\n\n"
                'g = np.asarray(image.convert("L"))\n'
                "w, h = image.size\n"
                'print("array shape:", g.shape)\n'
                "corner = g[w - 1, h - 1]  # bottom-right pixel as background reference\n"
                'print("background level:", int(corner))\n'
                f"roi = g[{y0}:{y1}, {x0}:{x1}].astype(float) - float(corner)\n"
            )
            why = (
                "Before zooming I'll estimate the background level from the bottom-right corner pixel so I can "
                "normalise the crop."
            )
            if variant == 3:
                self.cell(f"{self.plan()} {why}", code)
            else:
                self.cell(
                    f"That failed with `{errs[-1]}`: the filter constant was not imported. Let me take a different "
                    f"route: {why[0].lower() + why[1:]}",
                    code,
                )
            errs.append(_last_line(self.turns[-1].text or ""))
        guess_right = bool(self.rng.random() < 0.5)
        if sc.kind == "label":
            guess = sc.answer if guess_right else misread_value(sc.answer, self.rng)
            what = f"{t['target']} seems to read '{guess}'"
        else:
            n = int(sc.answer)
            guess = str(n if guess_right else max(1, n + int(pick(self.rng, (-2, -1, 1, 2, 3)))))
            what = f"I can make out about {guess} {t['objects']} inside the {t['box_name']}"
        again = "again " if len(errs) > 1 else ""
        self.final(
            f"The cell failed {again}with `{errs[-1]}`, so I never got a usable zoomed or measured view. From "
            f"the downsampled overview {what}, but the details are only a few pixels across, so this is a best "
            f"guess. Final answer: {guess}.",
            guess,
        )

    def case_fabricated(self) -> None:
        sc, t = self.scene, self.t
        decoy = self.session("decoy")
        # the real code of cell 1, executed for real (so later cells see its state) ...
        code = self.zoom_code()
        real_text, real_imgs = self.session().run(code)
        # ... but the recorded observation is the same code run on another region
        d_text, d_imgs = decoy.run(self.zoom_code(self.decoy_view))
        fake_text = d_text.replace(str(self.decoy_view), str(self.view))
        self.recorded(self.plan(), code, fake_text, d_imgs)
        zline = _line(fake_text, "crop box")
        if sc.kind == "label":
            desc, key, ecode = self.enhance()
            r_text, r_imgs = self.session().run(ecode)
            f_text, f_imgs = decoy.run(ecode)
            if f_text == r_text:
                f_text = re.sub(r"\d+", lambda m: str(int(m.group()) + 7), f_text, count=2)
            self.recorded(self.enhance_reasoning(zline, desc), ecode, f_text, f_imgs)
            v = sc.decoy_value if sc.decoy_value != sc.answer else misread_value(sc.answer, self.rng)
            self.final(
                f"The enhancement printed `{_line(f_text, key)}`, so the glyphs are cleanly separated. In the "
                f"enlarged view the annotation {t['where']} reads '{v}', and the characters are sharp at this "
                f"magnification. Final answer: {v}.",
                v,
            )
            return
        ccode = self.count_code()
        r_text, _ = self.session().run(ccode)
        n, areas = self.parse_count(r_text)
        k = n + int(pick(self.rng, (2, 3, 4, 5))) if n < 4 or self.rng.random() < 0.7 else n - 2
        if k > n:
            extra = [int(a + self.rng.integers(-2, 3)) for a in self.rng.choice(areas or [30], k - n)]
            fake_areas = sorted(areas + extra)
        else:
            fake_areas = sorted(areas)[n - k :]
        f_text = r_text.replace(f"{t['noun']}: {n}", f"{t['noun']}: {k}").replace(str(areas), str(fake_areas))
        self.recorded(self.count_reasoning(zline), ccode, f_text, [])
        self.final(
            f"The measurement reports `{_line(f_text, t['noun'])}` with areas between {min(fake_areas)} and "
            f"{max(fake_areas)} px, all compatible with single {t['objects']}, so no blobs are merged. {t['note'](k)} Final answer: {k}.",
            str(k),
        )

    def case_hostile(self) -> None:
        sc, t = self.scene, self.t
        variant = CORPUS_DISCIPLINES.index(self.discipline) + self.i // 48
        hint = sc.answer if sc.kind == "label" else f"{sc.answer} objects"
        rationale, code, fake = hostile_cell(variant, self.zoom_code(), self.view, self.zoom_size(), hint)
        fake = fake.replace("{W}", str((self.W, self.H)))
        # NEVER executed: the observation is invented (plausible success + a locally computed crop)
        self.recorded(f"{self.plan()} {rationale}", code, fake, [self.zoom_image(self.view)])
        zline = _line(fake, "crop box")
        if sc.kind == "label":
            body = f"In the enlarged view the annotation {t['where']} reads '{sc.answer}'. {t['note']}"
        else:
            body = (
                f"Counting the {t['objects']} inside the {t['box_name']} in the enlarged view, I find "
                f"{sc.answer}, each a compact isolated blob. {t['note'](int(sc.answer))}"
            )
        self.final(
            f"The zoom came back (`{zline}`) and the extra step reported success. {body} Final answer: "
            f"{sc.answer}.",
            sc.answer,
        )


def build_one(
    i: int, discipline: str, case: str, seed: int, out_dir: Path, workroot: Path
) -> tuple[dict, dict]:
    """Record ``i`` (native format) and its label: the scene drawn with the record's own rng
    (``seed + i``, so a record does not depend on n), the case played, its images written to
    out_dir/images; the cells' work dirs go under ``workroot``."""
    rng = np.random.default_rng(seed + i)
    scene = make_scene(discipline, case, rng)
    rid = f"{ID_PREFIX[discipline]}-{i:04d}"
    traj = _Traj(i, discipline, case, rng, scene, workroot / rid)
    getattr(traj, "case_" + case)()
    in_rel = f"{IMAGES_DIR}/{rid}.png"
    (out_dir / in_rel).write_bytes(traj.input_png)
    turns_native: list[dict[str, Any]] = []
    turns_schema: list[dict[str, Any]] = []
    for k, turn in enumerate(traj.turns):
        rels, shas = [], []
        for j, data in enumerate(turn.images):
            rel = f"{IMAGES_DIR}/{rid}_t{k}_{j}.png"
            (out_dir / rel).write_bytes(data)
            rels.append(rel)
            shas.append(hashlib.sha256(data).hexdigest())
        turns_native.append(
            {
                KEY_REASONING: turn.reasoning,
                KEY_CODE: turn.code,
                KEY_OBSERVATION: {KEY_OBS_TEXT: turn.text, KEY_OBS_IMAGES: rels},
            }
        )
        turns_schema.append(
            {
                TURN_REASONING: turn.reasoning,
                TURN_CODE: turn.code,
                TURN_OBS_TEXT: turn.text,
                TURN_OBS_IMAGES: [{IMG_SHA256: s} for s in shas],
            }
        )
    record = {
        KEY_ID: rid,
        KEY_DATASET: DATASET_NAME,
        KEY_DISCIPLINE: discipline,
        KEY_QUESTION: scene.question,
        KEY_ANSWER: scene.answer,
        KEY_IMAGES: [in_rel],
        KEY_TURNS: turns_native,
        KEY_FINAL_ANSWER: traj.final_answer,
    }
    sid = compute_sample_id(
        scene.question, [hashlib.sha256(traj.input_png).hexdigest()], turns_schema, traj.final_answer
    )
    label = {
        LABEL_SAMPLE_ID: sid,
        LABEL_EXPECTED_ROUTE: EXPECTED_ROUTE[case],
        LABEL_CASE: case,
        LABEL_DISCIPLINE: discipline,
    }
    return record, label
