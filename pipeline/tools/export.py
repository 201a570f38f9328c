"""Training-ready exports of a curated run, per curriculum stage (routing.curriculum):

  llamafactory  sharegpt JSON (`messages`, `images`) + dataset_info.json + image files; a TwI sample
                is user question → assistant step with <code> → user "Code execution result:" (the
                replayed stdout and images, as DeepEyesV2 trains) → … → assistant <answer>.
  verl          RL Parquet: data_source, prompt (chat messages), images ({bytes, path}), ability,
                reward_model {style: rule, ground_truth}, extra_info (sample_id, split, index,
                difficulty, route, stage).
  swift         ms-swift / Thyme SFT JSONL: image (paths), question ("<image>\\n..."), response with
                <code>```python ...```</code> and <sandbox_output>...<image>...</sandbox_output>.
  hf            Hugging Face datasets (save_to_disk), images as a Sequence of Image features.
Every sample's number of "<image>" placeholders equals its number of images.
Text-route samples keep their input image and answer with the converted reasoning only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.tools.shards import VIEW, connect, fetch_rows
from routing.curriculum import CurriculumPolicy, difficulty, select_stage
from schemas import sample as S

FORMATS = ("llamafactory", "verl", "swift", "hf")
IMAGE_TOKEN = "<image>"


def load_rows(out_dir: Path) -> list[dict[str, Any]]:
    """Accepted rows (twi and text routes) of a run, as canonical dicts."""
    return fetch_rows(connect(out_dir), f"SELECT * FROM {VIEW} WHERE {S.ROUTE} IN ('{S.ROUTE_TWI}', '{S.ROUTE_TEXT}')")


class ImageStore:
    """Writes each distinct image once under ``root/images`` and returns its relative path."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)

    def path(self, image: dict[str, Any]) -> str:
        data = image[S.IMG_BYTES]
        with Image.open(io.BytesIO(data)) as im:
            ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}.get(im.format or "", "png")
        rel = f"images/{image[S.IMG_SHA256]}.{ext}"
        target = self.root / rel
        if not target.exists():
            target.write_bytes(data)
        return rel


def _cells(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c[S.CELL_TURN]: c for c in row.get(S.REPLAY) or []}


def _question(row: dict[str, Any]) -> str:
    return IMAGE_TOKEN * len(row.get(S.IMAGES) or []) + "\n" + (row.get(S.QUESTION) or "")


def _answer(row: dict[str, Any]) -> str:
    return f"<answer>{(row.get(S.FINAL_ANSWER) or '').strip()}</answer>"


def _code_block(code: str) -> str:
    return f"<code>\n```python\n{code.rstrip()}\n```\n</code>"


def sharegpt_messages(row: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(messages, images in placeholder order) in the DeepEyesV2 / LLaMA-Factory convention."""
    images = list(row.get(S.IMAGES) or [])
    messages = [{"role": "user", "content": _question(row)}]
    if row[S.ROUTE] == "text":
        messages.append({"role": "assistant", "content": row.get(S.TEXT_RESPONSE) or _answer(row)})
        return messages, images
    cells = _cells(row)
    pending: list[str] = []
    for i, t in enumerate(row.get(S.TURNS) or []):
        pending.append((t[S.TURN_REASONING] or "").strip())
        cell = cells.get(i)
        if t[S.TURN_CODE] and cell is not None:
            pending.append(_code_block(t[S.TURN_CODE]))
            messages.append({"role": "assistant", "content": "\n".join(p for p in pending if p)})
            pending = []
            produced = list(cell[S.CELL_IMAGES] or [])
            result = f"Code execution result:\nstdout:\n```\n{cell[S.CELL_STDOUT] or ''}\n```\n"
            if cell[S.CELL_ERROR]:
                result += f"stderr:\n```\n{cell[S.CELL_ERROR]}\n```\n"
            if produced:
                result += "Images:\n" + IMAGE_TOKEN * len(produced)
            messages.append({"role": "user", "content": result})
            images.extend(produced)
    pending.append(_answer(row))
    messages.append({"role": "assistant", "content": "\n".join(p for p in pending if p)})
    return messages, images


def thyme_record(row: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(Thyme/ms-swift SFT record without image paths filled, images in placeholder order)."""
    images = list(row.get(S.IMAGES) or [])
    question = IMAGE_TOKEN * len(images) + "\n" + (row.get(S.QUESTION) or "")
    if row[S.ROUTE] == "text":
        body = (row.get(S.TEXT_RESPONSE) or "").replace(_answer(row), "").strip()
        return {"question": question, "response": f"<think>{body}</think>{_answer(row)}"}, images
    cells = _cells(row)
    parts = []
    for i, t in enumerate(row.get(S.TURNS) or []):
        if t[S.TURN_REASONING]:
            parts.append(t[S.TURN_REASONING].strip())
        cell = cells.get(i)
        if t[S.TURN_CODE] and cell is not None:
            parts.append(_code_block(t[S.TURN_CODE]))
            produced = list(cell[S.CELL_IMAGES] or [])
            out = (cell[S.CELL_STDOUT] or "").rstrip()
            if cell[S.CELL_STATUS] != S.STATUS_OK:
                out = f"Sandbox for cell {i} failed: {cell[S.CELL_ERROR] or cell[S.CELL_STATUS]}".rstrip()
            parts.append(f"<sandbox_output>{out}{IMAGE_TOKEN * len(produced)}</sandbox_output>")
            images.extend(produced)
    return {"question": question, "response": "<think>" + "\n".join(parts) + "</think>" + _answer(row)}, images


def _extra_info(row: dict[str, Any], index: int, stage: str) -> dict[str, Any]:
    return {"sample_id": row[S.SAMPLE_ID], "index": index, "split": "train", "stage": stage,
            "difficulty": difficulty(row), "route": row[S.ROUTE], "discipline": row[S.DISCIPLINE]}


def export(out_dir: Path, fmt: str, stage: str, dest: Path, policy: CurriculumPolicy | None = None) -> dict[str, Any]:
    """Write one stage of a run in one format to ``dest``; returns a summary."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {list(FORMATS)}")
    rows = select_stage(load_rows(out_dir), stage, policy or CurriculumPolicy())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = f"twi_{stage.replace('-', '_')}"
    if fmt == "llamafactory":
        store = ImageStore(dest)
        records = []
        for r in rows:
            messages, images = sharegpt_messages(r)
            records.append({"messages": messages, "images": [store.path(i) for i in images]})
        (dest / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1))
        info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt",
                       "columns": {"messages": "messages", "images": "images"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant"}}}
        (dest / "dataset_info.json").write_text(json.dumps(info, indent=2))
    elif fmt == "swift":
        store = ImageStore(dest)
        with open(dest / f"{name}.jsonl", "w") as fh:
            for r in rows:
                rec, images = thyme_record(r)
                fh.write(json.dumps({"image": [str((dest / store.path(i)).resolve()) for i in images], **rec},
                                    ensure_ascii=False) + "\n")
    elif fmt == "verl":
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = []
        for k, r in enumerate(rows):
            records.append({
                "data_source": f"twi-curate/{r[S.DISCIPLINE]}",
                "prompt": [{"role": "user", "content": _question(r)}],
                "images": [{"bytes": i[S.IMG_BYTES], "path": i[S.IMG_NAME]} for i in r.get(S.IMAGES) or []],
                "ability": r[S.DISCIPLINE],
                "reward_model": {"style": "rule", "ground_truth": r.get(S.GROUND_TRUTH) or ""},
                "extra_info": _extra_info(r, k, stage),
                "agent_name": "tool_agent" if r[S.ROUTE] == S.ROUTE_TWI else "single_turn_agent",
            })
        pq.write_table(pa.Table.from_pylist(records), dest / f"{name}.parquet")
    else:  # hf
        import datasets

        features = datasets.Features({
            "sample_id": datasets.Value("string"), "discipline": datasets.Value("string"),
            "route": datasets.Value("string"), "stage": datasets.Value("string"),
            "question": datasets.Value("string"), "ground_truth": datasets.Value("string"),
            "difficulty": datasets.Value("float64"),
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.Sequence(datasets.Image()),
        })
        records = []
        for r in rows:
            messages, images = sharegpt_messages(r)
            records.append({"sample_id": r[S.SAMPLE_ID], "discipline": r[S.DISCIPLINE], "route": r[S.ROUTE],
                            "stage": stage, "question": r.get(S.QUESTION) or "",
                            "ground_truth": r.get(S.GROUND_TRUTH), "difficulty": difficulty(r),
                            "messages": messages,
                            "images": [{"bytes": i[S.IMG_BYTES], "path": None} for i in images]})
        datasets.Dataset.from_list(records, features=features).save_to_disk(str(dest / name))
    by_route: dict[str, int] = {}
    for r in rows:
        by_route[r[S.ROUTE]] = by_route.get(r[S.ROUTE], 0) + 1
    summary = {"format": fmt, "stage": stage, "name": name, "samples": len(rows), "by_route": by_route,
               "dest": str(dest)}
    (dest / f"{name}.export.json").write_text(json.dumps(summary, indent=2))
    import time

    with open(Path(out_dir) / "exports.jsonl", "a") as fh:  # the run remembers what was exported from it
        fh.write(json.dumps({**summary, "dest": str(dest.resolve()),
                             "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return summary
