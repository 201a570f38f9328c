"""One small fixture per public trajectory format, written in that format's exact shape, with real
PNG images, plus the canonical sample each must parse into.

``write_format_fixtures(root)`` writes them under ``root`` using every source kind (JSONL, JSON
array, a single JSON object, Parquet with Hugging Face image structs, a ``save_to_disk`` folder)
and returns ``{record id: Expected}``; ``Expected.file``/``index`` say where each record sits.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from tests.images import png

BOX = (440, 20, 600, 100)  # where the small label sits in the input image


def label_image(text: str = "42", size: tuple[int, int] = (640, 480), seed: int = 0) -> Image.Image:
    """A page with big shapes (placed by ``seed``) and one small label inside BOX (what the
    trajectories zoom into)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = int(rng.integers(0, 400)), int(rng.integers(120, 300))
        w, h = (int(v) for v in rng.integers(60, 170, 2))
        color = tuple(int(c) for c in rng.integers(0, 200, 3))
        shape = d.rectangle if rng.random() < 0.5 else d.ellipse
        shape([x, y, x + w, y + h], outline=color, width=5, fill=None if rng.random() < 0.6 else color)
    d.rectangle(BOX, fill=(250, 250, 245), outline=(0, 0, 0), width=2)
    d.text((BOX[0] + 60, BOX[1] + 30), text, fill=(0, 0, 0), font=ImageFont.load_default(size=14))
    return im


def crop_zoom(im: Image.Image, box: tuple[int, int, int, int], scale: int) -> Image.Image:
    crop = im.crop(box)
    return crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.LANCZOS)


def shown_png(im: Image.Image) -> bytes:
    """The PNG of ``plt.imshow(im); plt.axis('off'); plt.show()`` as the sandbox captures it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plt.imshow(im)
    plt.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ExpectedTurn:
    reasoning: str
    code: str | None = None  # exact code, or None for a turn without code
    code_contains: tuple[str, ...] = ()  # for generated cells: fragments the code must hold
    obs_text: str | None = None
    obs_images: list[str] = field(default_factory=list)  # sha256 of each recorded image


@dataclass
class Expected:
    format: str
    question: str
    ground_truth: str | None
    discipline: str
    images: list[tuple[str, int, int, str | None]]  # (sha256, width, height, path as referenced)
    turns: list[ExpectedTurn]
    final_answer: str | None
    route_reasons_include: tuple[str, ...] = ()
    file: str = ""  # the file (or HF folder) under root holding the record
    index: int = 0  # the record's index in that file


def where(root: Path, source_file: str) -> str:
    """The first path component of a row's source file under ``root`` (file or HF folder)."""
    return Path(source_file).resolve().relative_to(root.resolve()).parts[0]


def page_files(img_dir: Path, stem: str, seed: int) -> tuple[Image.Image, bytes, bytes]:
    """images/<stem>.png (a page) and images/<stem>_zoom.png (its BOX enlarged 2x)."""
    page = label_image(seed=seed)
    page_png, zoom2 = png(page), png(crop_zoom(page, BOX, 2))
    (img_dir / f"{stem}.png").write_bytes(page_png)
    (img_dir / f"{stem}_zoom.png").write_bytes(zoom2)
    return page, page_png, zoom2


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_format_fixtures(root: Path) -> dict[str, Expected]:
    root.mkdir(parents=True, exist_ok=True)
    img_dir = root / "images"
    img_dir.mkdir(exist_ok=True)
    exp: dict[str, Expected] = {}

    # --- native -------------------------------------------------------------------------
    page, page_png, zoom2 = page_files(img_dir, "native", 1)
    native_code = "crop = image.crop((440, 20, 600, 100)).resize((320, 160))\ncrop.save('zoom.png')\nprint(crop.size)\n"
    _write_jsonl(root / "native.jsonl", [{
        "id": "native-1", "dataset": "mine", "discipline": "Physics",
        "question": "What current does the ammeter label in the small box show, in amperes?",
        "answer": "42", "images": ["images/native.png"],
        "turns": [
            {"reasoning": "The label is tiny, so I crop the box and enlarge it 2x.", "code": native_code,
             "observation": {"text": "(320, 160)\n", "images": ["images/native_zoom.png"]}},
            {"reasoning": "The enlarged label clearly reads 42, so the current is 42 A.", "code": None},
        ],
        "final_answer": "42",
    }])
    exp["native-1"] = Expected(
        "native", "What current does the ammeter label in the small box show, in amperes?", "42", "physics",
        [(sha(page_png), 640, 480, "images/native.png")],
        [ExpectedTurn("The label is tiny, so I crop the box and enlarge it 2x.", native_code, (), "(320, 160)\n", [sha(zoom2)]),
         ExpectedTurn("The enlarged label clearly reads 42, so the current is 42 A.")],
        "42",
    )

    # --- Thyme SFT (absolute image paths, as the repo's converter writes them) --------------
    page, page_png, zoom2 = page_files(img_dir, "thyme_sft", 2)
    abs_in, abs_out = str((img_dir / "thyme_sft.png").resolve()), str((img_dir / "thyme_sft_zoom.png").resolve())
    thyme_code = (
        "from PIL import Image\n"
        f"img = Image.open({abs_in!r})\n"
        "crop = img.crop((440, 20, 600, 100)).resize((320, 160))\n"
        "crop.save('zoom.png')\n"
        "print('saved zoom', crop.size)\n"
    )
    thyme_question = (
        "<image>\nWhat reading does the ammeter label in the small box show, in amperes?\n"
        f"### User Image Path: {abs_in}\n### User Image Size: 640x480"
    )
    _write_jsonl(root / "thyme_sft.jsonl", [{
        "id": "thyme-sft-1",
        "image": [abs_in, abs_out],
        "question": thyme_question,
        "response": (
            "<think>The label in the box is only a few pixels tall. I will crop the box and enlarge it.\n"
            f"<code>\n```python\n{thyme_code}```\n</code>\n"
            "<sandbox_output>saved zoom (320, 160)\n<image></sandbox_output>\n"
            "The zoomed crop shows the digits 42 clearly, so the reading is 42 A.</think>\n"
            "<answer>42</answer>"
        ),
    }])
    exp["thyme-sft-1"] = Expected(
        "thyme_sft",
        "What reading does the ammeter label in the small box show, in amperes?\n"
        f"### User Image Path: {abs_in}\n### User Image Size: 640x480",
        None, "physics",
        [(sha(page_png), 640, 480, abs_in)],
        [ExpectedTurn("The label in the box is only a few pixels tall. I will crop the box and enlarge it.",
                      thyme_code, (), "saved zoom (320, 160)", [sha(zoom2)]),
         ExpectedTurn("The zoomed crop shows the digits 42 clearly, so the reading is 42 A.")],
        "42",
    )

    # --- Thyme RL: a prompt, and a rollout (JSON array file) ------------------------------
    page, page_png, zoom2 = page_files(img_dir, "thyme_rl", 3)
    rl_q = "What is the pH at the equivalence point of the titration curve in the box?"
    rl_code = "print(round(14 - 5.3, 1))\n"
    thyme_rl = [
        {"id": "thyme-rl-1",
         "messages": [{"role": "system", "content": "You are a helpful assistant that can run Python."},
                      {"role": "user", "content": f"<image>\n{rl_q}"}],
         "images": ["images/thyme_rl.png"], "solution": "<answer>8.7</answer>", "question": rl_q},
        {"id": "thyme-rl-2",
         "messages": [{"role": "system", "content": "You are a helpful assistant that can run Python."},
                      {"role": "user", "content": f"<image>\n{rl_q}"},
                      {"role": "assistant", "content": "<think>The pOH at equivalence is 5.3, so I compute 14 - 5.3."
                                                       f"\n<code>\n```python\n{rl_code}```\n</code>"},
                      {"role": "user", "content": "<sandbox_output>8.7</sandbox_output>"},
                      {"role": "assistant", "content": "The computation gives a pH of 8.7 at the equivalence point."
                                                       "</think><answer>8.7</answer>"}],
         "images": ["images/thyme_rl.png"], "solution": "<answer>8.7</answer>", "question": rl_q},
    ]
    (root / "thyme_rl.json").write_text(json.dumps(thyme_rl, indent=1))
    exp["thyme-rl-1"] = Expected("thyme_rl", rl_q, "8.7", "chemistry", [(sha(page_png), 640, 480, "images/thyme_rl.png")],
                                 [], None, route_reasons_include=("no_trajectory",))
    exp["thyme-rl-2"] = Expected(
        "thyme_rl", rl_q, "8.7", "chemistry", [(sha(page_png), 640, 480, "images/thyme_rl.png")],
        [ExpectedTurn("The pOH at equivalence is 5.3, so I compute 14 - 5.3.", rl_code, (), "8.7"),
         ExpectedTurn("The computation gives a pH of 8.7 at the equivalence point.")],
        "8.7",
    )

    # --- LLaMA-Factory sharegpt as DeepEyesV2 writes it (JSON array) -----------------------
    page, page_png, zoom2 = page_files(img_dir, "sharegpt", 4)
    sg_code = "crop = images[0].crop((440, 20, 600, 100)).resize((320, 160))\ncrop.save('zoom.png')\nprint(crop.size)\n"
    sg_q = "How many cells with a dark nucleus are inside the small box?"
    sharegpt = [{
        "id": "sharegpt-1", "subject": "Biology", "gt_answer": "42",
        "messages": [
            {"role": "system", "content": "You can write Python code in <code> blocks."},
            {"role": "user", "content": f"<image>\n{sg_q}"},
            {"role": "assistant", "content": f"<think>The box is small; let me enlarge it.</think>\n<code>\n```python\n{sg_code}```\n</code>"},
            {"role": "user", "content": "Code execution result:\nstdout:\n```\n(320, 160)\n```\nstderr:\n```\n\n```\nImages:\n<image>"},
            {"role": "assistant", "content": "<think>The enlarged box shows the count written as 42 next to the cells.</think>\n<answer>42</answer>"},
        ],
        "images": ["images/sharegpt.png", "images/sharegpt_zoom.png"],
    }]
    (root / "sharegpt.json").write_text(json.dumps(sharegpt))
    exp["sharegpt-1"] = Expected(
        "sharegpt", sg_q, "42", "biology", [(sha(page_png), 640, 480, "images/sharegpt.png")],
        [ExpectedTurn("The box is small; let me enlarge it.", sg_code, (), "(320, 160)", [sha(zoom2)]),
         ExpectedTurn("The enlarged box shows the count written as 42 next to the cells.")],
        "42",
    )

    # --- PyVision (OpenAI parts, data URLs, image clues) -----------------------------------
    page, page_png, zoom2 = page_files(img_dir, "pyvision", 5)
    pv_code = (
        "import matplotlib.pyplot as plt\n"
        "crop = image_clue_0.crop((440, 20, 600, 100))\n"
        "plt.imshow(crop)\nplt.axis('off')\nplt.show()\n"
        "print(crop.size)\n"
    )
    pv_q = "What is the value of x printed in the small box of the coordinate plane?"
    pv_obs = shown_png(page.crop(BOX))  # what plt.show() of the crop records
    pyvision = {
        "id": "pyvision-1", "data_source": "mmk12_math", "answer": "42", "question": pv_q,
        "messages": [
            {"role": "system", "content": "You are an agent that writes Python inside <code> tags."},
            {"role": "user", "content": [
                {"type": "text", "text": "<image_clue_0>"},
                {"type": "image_url", "image_url": {"url": data_url(page_png)}},
                {"type": "text", "text": "</image_clue_0>\n\n"},
                {"type": "text", "text": pv_q}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"I need a closer look at the box.\n<code>\n```python\n{pv_code}```\n</code>\n"}]},
            {"role": "user", "content": [
                {"type": "text", "text": "<interpreter>\nText Result:\n(160, 80)\nImage Result:\n"},
                {"type": "text", "text": "<image_clue_1>"},
                {"type": "image_url", "image_url": {"url": data_url(pv_obs)}},
                {"type": "text", "text": "</image_clue_1>"},
                {"type": "text", "text": "</interpreter>\n"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "The crop shows x = 42.\n<answer>\\boxed{42}</answer>"}]},
        ],
    }
    _write_jsonl(root / "pyvision.jsonl", [pyvision])
    exp["pyvision-1"] = Expected(
        "pyvision", pv_q, "42", "mathematics", [(sha(page_png), 640, 480, None)],
        [ExpectedTurn("I need a closer look at the box.", pv_code,
                      (), "(160, 80)", [sha(pv_obs)]),
         ExpectedTurn("The crop shows x = 42.")],
        "\\boxed{42}",
    )

    # --- PyVision RL input (a single JSON object file) --------------------------------------
    page, page_png, zoom2 = page_files(img_dir, "pyvision_rl", 6)
    (root / "pyvision_rl.json").write_text(json.dumps({
        "id": "pyvision-rl-1", "question": "<image>\nFind the area of the shaded triangle.", "answer": "12",
        "ability": "math", "data_source": "geoqa", "image_path": "images/pyvision_rl.png",
    }))
    exp["pyvision-rl-1"] = Expected("pyvision_rl", "Find the area of the shaded triangle.", "12", "mathematics",
                                    [(sha(page_png), 640, 480, "images/pyvision_rl.png")], [], None,
                                    route_reasons_include=("no_trajectory",))

    # --- OpenAI chat with tool calls -------------------------------------------------------
    page, page_png, zoom2 = page_files(img_dir, "openai", 7)
    oa_code = "crop = image.crop((440, 20, 600, 100)).resize((320, 160))\ncrop.save('zoom.png')\nprint('zoom', crop.size)\n"
    oa_q = "What elevation is printed next to the summit in the small box of this topographic map?"
    openai = {
        "id": "openai-1", "category": "Earth Science", "ground_truth": "42 m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": oa_q},
                                         {"type": "image_url", "image_url": {"url": data_url(page_png)}}]},
            {"role": "assistant", "content": "The label is small; I will zoom with Python.",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "python", "arguments": json.dumps({"code": oa_code})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "zoom (320, 160)"},
            {"role": "user", "content": [{"type": "text", "text": "Image produced by the tool:"},
                                         {"type": "image_url", "image_url": {"url": data_url(zoom2)}}]},
            {"role": "assistant", "content": "The zoomed label reads 42, so the summit is at 42 m. <answer>42 m</answer>"},
        ],
    }
    _write_jsonl(root / "openai_tools.jsonl", [openai])
    exp["openai-1"] = Expected(
        "openai_tools", oa_q, "42 m", "geography", [(sha(page_png), 640, 480, None)],
        [ExpectedTurn("The label is small; I will zoom with Python.", oa_code, (), "zoom (320, 160)\nImage produced by the tool:", [sha(zoom2)]),
         ExpectedTurn("The zoomed label reads 42, so the summit is at 42 m.")],
        "42 m",
    )

    # --- DeepEyes zoom tool (Parquet; images as HF {"bytes", "path"} structs) ---------------
    page, page_png, zoom2 = page_files(img_dir, "deepeyes", 8)
    de_call = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [440, 20, 600, 100], "label": "summit label"}}\n</tool_call>'
    de_q = "What is the elevation printed next to the summit on this topographic map?"
    de_obs = png(crop_zoom(page, BOX, 3))  # what the generated cell writes: 160 px wide -> 3x
    deepeyes = {
        "id": "deepeyes-1", "data_source": "vstar", "reward_model": {"style": "rule", "ground_truth": "<answer>42</answer>"},
        "messages": json.dumps([
            {"role": "user", "content": f"<image>\n{de_q}"},
            {"role": "assistant", "content": f"<think>The label is tiny; zoom in on it.</think>\n{de_call}"},
            {"role": "user", "content": "<tool_response><image></tool_response>"},
            {"role": "assistant", "content": "<think>The zoomed label reads 42 m.</think>\n<answer>42</answer>"},
        ]),
        "images": [{"bytes": page_png, "path": "page.png"}, {"bytes": de_obs, "path": "zoom_1.png"}],
    }
    table = pa.table({
        "id": [deepeyes["id"]], "data_source": [deepeyes["data_source"]],
        "reward_model": [deepeyes["reward_model"]],
        "messages": [json.loads(deepeyes["messages"])],
        "images": [deepeyes["images"]],
    })
    pq.write_table(table, root / "deepeyes.parquet")
    exp["deepeyes-1"] = Expected(
        "deepeyes", de_q, "42", "geography", [(sha(page_png), 640, 480, "page.png")],
        [ExpectedTurn("The label is tiny; zoom in on it.\n" + de_call, None,
                      ("images[0]", "(440, 20, 600, 100)", "zoom_1.png"), None, [sha(de_obs)]),
         ExpectedTurn("The zoomed label reads 42 m.")],
        "42",
    )

    # --- Mini-o3 grounding (a Hugging Face save_to_disk folder, conversations from/value) ----
    page, page_png, zoom2 = page_files(img_dir, "mini_o3", 9)
    mo_q = "Which constellation name is written in the small box of this sky chart?"
    g1 = '<grounding>{"bbox_2d": [0.6875, 0.0417, 0.9375, 0.2083], "source": "original_image"}</grounding>'
    g2 = '<grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], "source": "observation_1"}</grounding>'
    w, h = page.size
    box1 = (int(0.6875 * w), int(0.0417 * h), int(0.9375 * w), int(0.2083 * h))
    obs1_img = crop_zoom(page, box1, 3)
    obs1 = png(obs1_img)
    box2 = (int(0.25 * obs1_img.width), int(0.25 * obs1_img.height), int(0.75 * obs1_img.width), int(0.75 * obs1_img.height))
    obs2 = png(crop_zoom(obs1_img, box2, 2))
    mini = {
        "id": "mini-o3-1", "answer": "Orion", "extra_info": {"subject": "astronomy"},
        "conversations": [
            {"from": "human", "value": f"<image>\n{mo_q}"},
            {"from": "gpt", "value": f"<think>The box is in the top right.</think>\n{g1}"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": f"<think>Zoom further into the centre of that crop.</think>\n{g2}"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "<think>The text reads Orion.</think>\n<answer>Orion</answer>"},
        ],
    }
    _write_hf_dataset(root / "mini_o3_hf", mini, [page_png, obs1, obs2])
    exp["mini-o3-1"] = Expected(
        "mini_o3", mo_q, "Orion", "astronomy", [(sha(page_png), 640, 480, "page.png")],
        [ExpectedTurn("The box is in the top right.\n" + g1, None, ("images[0]", "observation_1.png"), None, [sha(obs1)]),
         ExpectedTurn("Zoom further into the centre of that crop.\n" + g2, None,
                      ("Image.open('observation_1.png')", "observation_2.png"), None, [sha(obs2)]),
         ExpectedTurn("The text reads Orion.")],
        "Orion",
    )
    for rid, (file, index) in {
        "native-1": ("native.jsonl", 0), "thyme-sft-1": ("thyme_sft.jsonl", 0), "thyme-rl-1": ("thyme_rl.json", 0),
        "thyme-rl-2": ("thyme_rl.json", 1), "sharegpt-1": ("sharegpt.json", 0), "pyvision-1": ("pyvision.jsonl", 0),
        "pyvision-rl-1": ("pyvision_rl.json", 0), "openai-1": ("openai_tools.jsonl", 0),
        "deepeyes-1": ("deepeyes.parquet", 0), "mini-o3-1": ("mini_o3_hf", 0),
    }.items():
        exp[rid].file, exp[rid].index = file, index
    return exp


def _write_hf_dataset(folder: Path, record: dict[str, Any], image_bytes: list[bytes]) -> None:
    """A real ``datasets.Dataset.save_to_disk`` folder with an ``images`` Sequence(Image()) column."""
    import datasets

    names = ["page.png", "observation_1.png", "observation_2.png"]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "extra_info": {"subject": datasets.Value("string")},
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        "images": datasets.Sequence(datasets.Image()),
    })
    ds = datasets.Dataset.from_list(
        [{**record, "images": [{"bytes": b, "path": n} for b, n in zip(image_bytes, names, strict=True)]}],
        features=features,
    )
    ds.save_to_disk(str(folder))

