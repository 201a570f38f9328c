"""The curation report: one self-contained static HTML file over a finished OUT.

``twi-curate report OUT`` (and every ``twi-curate run``) writes ``OUT/report.html``. It needs no
server, no network and no JavaScript: charts are inline SVG drawn here, images are small
thumbnails in ``data:`` URLs, and each thumbnail links to the original bytes copied unchanged
next to the report (``report_files/<sample_id>_<k>.<ext>``), never re-encoded. A
Content-Security-Policy meta tag allows no script at all.

Read-only over the shards (pipeline.tools.shards) and the manifest (pipeline.manifest):

- **funnel** — every row is counted once, at the first stage that removed it: invalid input (an
  ``input_error``, or ``no_trajectory``) -> duplicates / contaminated (``duplicate_of:`` /
  ``contaminated:`` reasons) -> replay failures: code failures (``code_failed:``,
  ``sandbox_violation``, ``observation_mismatch``, ``recovered_error``) and replay-environment gaps
  (``replay_env:``; routing never gives a row both) -> rejected by judges (every other rejection) -> text -> twi. The stages add up to the input
  records; the page says whether they equal the manifest's counts. Every number is in an element
  with ``data-funnel="<stage>"`` and ``data-count``.
- routes x disciplines, top rejection reasons (``duplicate_of:<id>`` counted as one reason),
  each linking to example rows in the gallery;
- per dimension the score histogram by route with the routing threshold of that dimension (the
  manifest's ``config.routing``, else the defaults of routing.policy);
- replay: sample and cell status counts, cell durations; LLM judges: usage, errors by kind,
  metric/LLM agreement ("not used" without an LLM judge);
- history: one line per run found in OUT (``manifest.json``, ``runs/*.json``);
- gallery: a deterministic sample per route (``samples`` rows each of twi, text, rejected, ordered
  by a hash of the row; None = every row) plus examples of the top rejection reasons: question,
  input images, each cell's code with the recorded and the replayed output side by side and its
  fidelity, the scores of every dimension with their explanations, route and reasons, the text version.

Everything that comes from data is escaped (html.escape): a trajectory is untrusted.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.manifest import MANIFEST
from pipeline.tools.shards import VIEW, connect, fetch_rows
from routing.policy import RoutingPolicy, threshold_key
from schemas import dimensions as D
from schemas import sample as S

REPORT = "report.html"
RUNS_DIR = "runs"
DEFAULT_SAMPLES = 6
THUMB_PX = 256
# an image already this small is embedded as its original bytes instead of a re-encoded thumbnail
SMALL_IMAGE_BYTES = 24_000
MAX_TEXT = 6000  # characters of one text field shown in the gallery
TOP_REASONS = 15
REASON_EXAMPLES = 2
FETCH_CHUNK = 32
FILES_MARKER = ".twi-curate-report"

# funnel stages in order: (key, label); the removal stages are rejections
FUNNEL = (
    ("invalid", "invalid input"),
    ("dedup", "duplicates / contaminated"),
    ("code_failed", "replay: code failures"),
    ("replay_env", "replay: environment gaps"),
    ("judges", "rejected by judges"),
    ("text", "text"),
    ("twi", "twi"),
)
CODE_FAILURE_REASONS = ("sandbox_violation", "observation_mismatch", "recovered_error")
ROUTE_COLORS = {S.ROUTE_TWI: "#2e7d32", S.ROUTE_TEXT: "#1565c0", S.ROUTE_REJECTED: "#c62828"}


def below_route(dim: str) -> str:
    """Where a score below its dimension's minimum sends a sample (routing.route.decide)."""
    return D.get(dim).below


DURATION_BINS_MS = (0, 10, 30, 100, 300, 1000, 3000, 10000)
SCORE_BINS = 20
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_EXT = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tif"), (b"MM\x00*", "tif"))
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ReportResult:
    path: Path
    files_dir: Path
    html_bytes: int
    files: int
    files_bytes: int
    gallery: int

    def summary(self) -> str:
        return (f"{self.path} ({_size(self.html_bytes)}; {self.gallery} trajectories in the gallery; "
                f"{self.files} full-size images in {self.files_dir.name}/, {_size(self.files_bytes)})")


def parse_samples(value: str | int | None) -> int | None:
    """``--samples``: a count per route, or ``all`` (None: every row)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    n = int(value)
    if n < 0:
        raise ValueError("--samples must be >= 0 or 'all'")
    return n


def e(value: Any) -> str:
    """Escape anything from data for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _clip(text: str | None, limit: int = MAX_TEXT) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _reasons_text() -> str:
    """All reasons of a row as one string, each preceded by chr(31) (prefix tests without lambdas,
    which older DuckDB versions spell differently)."""
    return f"(chr(31) || array_to_string(coalesce({S.ROUTE_REASONS}, []), chr(31)))"


def _has_prefix(prefix: str) -> str:
    return f"contains({_reasons_text()}, chr(31) || '{prefix}')"


def _has_reason(reason: str) -> str:
    return f"list_contains(coalesce({S.ROUTE_REASONS}, []), '{reason}')"


def funnel_stage_sql() -> str:
    """SQL expression: the funnel stage of a row (see the module docstring)."""
    code = " OR ".join([_has_prefix("code_failed:"), *(_has_reason(r) for r in CODE_FAILURE_REASONS)])
    return (
        f"CASE WHEN {S.ROUTE} = 'twi' THEN 'twi' WHEN {S.ROUTE} = 'text' THEN 'text' "
        f"WHEN {S.INPUT_ERROR} IS NOT NULL OR {_has_reason('no_trajectory')} THEN 'invalid' "
        f"WHEN {_has_prefix('duplicate_of:')} OR {_has_prefix('contaminated:')} THEN 'dedup' "
        f"WHEN {code} THEN 'code_failed' "
        f"WHEN {_has_prefix('replay_env:')} THEN 'replay_env' ELSE 'judges' END"
    )


def _row_key_sql() -> str:
    """A deterministic key per row: sample_id is not unique (an exact duplicate shares it)."""
    return (f"md5({S.SAMPLE_ID} || '|' || coalesce(struct_extract({S.SOURCE}, '{S.SRC_FILE}'), '') || '|' || "
            f"coalesce(CAST(struct_extract({S.SOURCE}, '{S.SRC_INDEX}') AS VARCHAR), ''))")


def _prepare(con) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW _r AS SELECT *, {_row_key_sql()} AS _rk, "
                f"{funnel_stage_sql()} AS _stage FROM {VIEW}")


def funnel_counts(con) -> dict[str, int]:
    counts = {k: 0 for k, _ in FUNNEL}
    counts.update(dict(con.execute("SELECT _stage, count(*) FROM _r GROUP BY 1").fetchall()))
    return counts


def reason_key(reason: str) -> str:
    return "duplicate_of" if reason.startswith("duplicate_of:") else reason


def top_reasons(con, limit: int = TOP_REASONS) -> list[tuple[str, int, list[str]]]:
    """(reason, rejected rows with it, row keys of the first examples); duplicate_of:<id> is one reason."""
    rows = con.execute(
        "SELECT reason, count(*) AS n, list(_rk ORDER BY _rk) FROM ("
        f"SELECT _rk, CASE WHEN starts_with(reason, 'duplicate_of:') THEN 'duplicate_of' ELSE reason END AS reason "
        f"FROM (SELECT _rk, unnest({S.ROUTE_REASONS}) AS reason FROM _r WHERE {S.ROUTE} = 'rejected')) "
        "GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    return [(r, n, list(keys)[:REASON_EXAMPLES]) for r, n, keys in rows[:limit]]


def score_histograms(con) -> dict[str, dict[str, Any]]:
    """Per dimension: counts[route][bin] over SCORE_BINS bins of [0, 1], and nulls per route."""
    out = {}
    for d in S.DIMENSIONS:
        col = S.score_column(d)
        counts = {r: [0] * SCORE_BINS for r in S.ROUTES}
        nulls = {r: 0 for r in S.ROUTES}
        for route, b, n in con.execute(
            f"SELECT {S.ROUTE}, CASE WHEN {col} IS NULL THEN -1 "
            f"ELSE least({SCORE_BINS - 1}, greatest(0, CAST(floor({col} * {SCORE_BINS}) AS INTEGER))) END, count(*) "
            "FROM _r GROUP BY 1, 2"
        ).fetchall():
            if route not in counts:
                continue
            if b < 0:
                nulls[route] += n
            else:
                counts[route][b] += n
        out[d] = {"counts": counts, "nulls": nulls}
    return out


def replay_stats(con) -> dict[str, Any]:
    sample_status = con.execute(
        f"SELECT coalesce({S.REPLAY_STATUS}, 'none'), count(*) FROM _r GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    cells = f"(SELECT unnest({S.REPLAY}) AS c FROM _r)"
    cell_status = con.execute(
        f"SELECT struct_extract(c, '{S.CELL_STATUS}'), count(*) FROM {cells} GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    dur = f"struct_extract(c, '{S.CELL_DURATION_MS}')"
    edges = DURATION_BINS_MS
    case = " ".join(f"WHEN {dur} < {hi} THEN {i}" for i, hi in enumerate(edges[1:]))
    bins = [0] * len(edges)
    for b, n in con.execute(
        f"SELECT CASE {case} ELSE {len(edges) - 1} END, count(*) FROM {cells} WHERE {dur} IS NOT NULL GROUP BY 1"
    ).fetchall():
        bins[b] = n
    n, p50, p90, mx, fid = con.execute(
        f"SELECT count({dur}), quantile_cont({dur}, 0.5), quantile_cont({dur}, 0.9), max({dur}), "
        f"avg(struct_extract(c, '{S.CELL_FIDELITY}')) FROM {cells}"
    ).fetchone()
    return {"samples": sample_status, "cells": cell_status, "duration_bins": bins, "n": n, "p50": p50,
            "p90": p90, "max": mx, "mean_fidelity": fid}


def llm_errors(con) -> dict[str, dict[str, int]]:
    """judge_error kind -> {dimension: rows} from the shards' llm_status_<dim> columns."""
    out: dict[str, dict[str, int]] = {}
    for d in S.DIMENSIONS:
        col = S.llm_status_column(d)
        for status, n in con.execute(
            f"SELECT {col}, count(*) FROM _r WHERE starts_with(coalesce({col}, ''), 'judge_error:') GROUP BY 1"
        ).fetchall():
            out.setdefault(status.partition(":")[2] or "unknown", {})[d] = n
    return out


def routes_by_discipline(con) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for d, r, n in con.execute(f"SELECT {S.DISCIPLINE}, {S.ROUTE}, count(*) FROM _r GROUP BY 1, 2").fetchall():
        table.setdefault(d or "unknown", {x: 0 for x in S.ROUTES})[r] = n
    return dict(sorted(table.items()))


def gallery_keys(con, samples: int | None, reason_examples: Iterable[str]) -> list[tuple[str, str]]:
    """(route, row key) of the gallery rows: per route the first ``samples`` rows by row key (None:
    all), then the reason examples not already in, in route order."""
    limit = "" if samples is None else f" QUALIFY row_number() OVER (PARTITION BY {S.ROUTE} ORDER BY _rk) <= {int(samples)}"
    chosen = con.execute(f"SELECT {S.ROUTE}, _rk FROM _r{limit} ORDER BY {S.ROUTE}, _rk").fetchall()
    have = {k for _, k in chosen}
    extra = [k for k in dict.fromkeys(reason_examples) if k not in have]
    if extra:
        chosen += con.execute(f"SELECT {S.ROUTE}, _rk FROM _r WHERE list_contains(?, _rk) ORDER BY _rk",
                              [extra]).fetchall()
    order = {r: i for i, r in enumerate(S.ROUTES)}
    return sorted(chosen, key=lambda x: (order.get(x[0], len(order)), x[1] in extra, x[1]))


def find_runs(out_dir: Path) -> list[dict[str, Any]]:
    """Manifests of the runs recorded in OUT: manifest.json and runs/*.json, oldest first."""
    paths = [out_dir / MANIFEST, *sorted((out_dir / RUNS_DIR).glob("*.json"))]
    runs: dict[str, dict[str, Any]] = {}
    for p in paths:
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            runs.setdefault(str(m.get("run_id") or p.name), {**m, "_file": p.relative_to(out_dir).as_posix()})
    return sorted(runs.values(), key=lambda m: (str(m.get("started_at") or ""), str(m.get("run_id") or "")))


def routing_thresholds(manifest: dict[str, Any] | None) -> tuple[dict[str, float], str]:
    """Threshold per dimension from the manifest's config (else the policy's defaults), and where from."""
    stored = ((manifest or {}).get("config") or {}).get("routing")
    source = "the run's config (manifest.json)"
    try:
        policy = RoutingPolicy(**stored) if isinstance(stored, dict) else None
    except ValueError:
        policy = None
    if policy is None:
        policy, source = RoutingPolicy(), "routing.policy defaults (no config in the manifest)"
    return policy.thresholds(), source


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------
def _ext(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def thumbnail(data: bytes) -> str | None:
    """A data URL of at most THUMB_PX px: the original bytes when already small, else the smaller of a
    PNG and a JPEG re-encode. None when the bytes do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if max(w, h) <= THUMB_PX and len(data) <= SMALL_IMAGE_BYTES and fmt in _MIME:
                im.verify()
                return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode()}"
            if fmt == "JPEG":
                im.draft("RGB", (THUMB_PX, THUMB_PX))
            alpha = "A" in im.getbands() or "transparency" in im.info
            small = im.convert("RGBA" if alpha else "RGB")
            small.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    except Exception:  # noqa: BLE001 - any undecodable image is shown as a note, never breaks the report
        return None
    candidates = []
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    candidates.append(("image/png", buf.getvalue()))
    if not alpha:
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=80, optimize=True)
        candidates.append(("image/jpeg", buf.getvalue()))
    mime, best = min(candidates, key=lambda c: len(c[1]))
    return f"data:{mime};base64,{base64.b64encode(best).decode()}"


class _Files:
    """Full-size images written next to the report, byte for byte."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        self.bytes = 0
        self.by_digest: dict[str, str] = {}  # identical bytes (a replayed image equal to the recorded one) once
        self.thumbs: dict[str, str | None] = {}

    def write(self, stem: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        name = self.by_digest.get(digest)
        if name is None:
            name = self.by_digest[digest] = f"{_SAFE.sub('_', stem)}.{_ext(data)}"
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(data)
            self.count += 1
            self.bytes += len(data)
        return f"{self.folder.name}/{name}"

    def thumb(self, data: bytes) -> str | None:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.thumbs:
            self.thumbs[digest] = thumbnail(data)
        return self.thumbs[digest]


def _image_html(img: dict[str, Any] | None, files: _Files, stem: str, caption: str = "") -> str:
    if not img or not img.get(S.IMG_BYTES):
        return f'<div class="noimg">{e(caption)} (no bytes)</div>'
    data = img[S.IMG_BYTES]
    href = files.write(stem, data)
    size = f"{img.get(S.IMG_WIDTH)}×{img.get(S.IMG_HEIGHT)}, {_size(len(data))}"
    label = f"{caption} {img.get(S.IMG_NAME) or ''}".strip()
    thumb = files.thumb(data)
    inner = (f'<img src="{thumb}" alt="{e(label)}">' if thumb
             else '<span class="noimg">image does not decode</span>')
    return (f'<figure><a href="{e(href)}" target="_blank" rel="noopener" title="full size, original bytes">{inner}</a>'
            f"<figcaption>{e(label)}<br><small>{e(size)}</small></figcaption></figure>")


# ------------------------------------------------------------------------------------------------
# SVG charts
# ------------------------------------------------------------------------------------------------
def funnel_svg(counts: dict[str, int], total: int) -> str:
    width, left, bar_w, row_h = 760, 230, 420, 30
    scale = bar_w / max(total, 1)
    parts, y, remaining = [], 8, total
    rows = [("input records", total, 0, "#546e7a")]
    for key, label in FUNNEL[:5]:
        remaining -= counts[key]
        rows.append((f"− {label}", remaining, counts[key], None))
    rows += [("→ text", counts["text"], 0, ROUTE_COLORS["text"]), ("→ twi", counts["twi"], 0, ROUTE_COLORS["twi"])]
    for label, keep, removed, color in rows:
        parts.append(f'<text x="{left - 8}" y="{y + 19}" text-anchor="end">{e(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{keep * scale:.1f}" height="{row_h - 10}" '
                     f'fill="{color or "#90a4ae"}"><title>{keep}</title></rect>')
        if removed:
            parts.append(f'<rect x="{left + keep * scale:.1f}" y="{y + 4}" width="{removed * scale:.1f}" '
                         f'height="{row_h - 10}" fill="{ROUTE_COLORS["rejected"]}" opacity="0.75">'
                         f"<title>{removed} removed</title></rect>")
        note = f"−{removed} → {keep}" if color is None else str(keep)
        parts.append(f'<text x="{left + bar_w + 10}" y="{y + 19}">{e(note)}</text>')
        y += row_h
    return (f'<svg class="chart" viewBox="0 0 {width} {y + 8}" width="{width}" height="{y + 8}" role="img" '
            f'aria-label="funnel">{"".join(parts)}</svg>')


def histogram_svg(dim: str, hist: dict[str, Any], threshold: float, below: str) -> str:
    width, height, pl, pr, pt, pb = 360, 200, 34, 12, 38, 34
    plot_w, plot_h = width - pl - pr, height - pt - pb
    counts = hist["counts"]
    tops = [sum(counts[r][b] for r in S.ROUTES) for b in range(SCORE_BINS)]
    ymax = max(max(tops), 1)
    bw = plot_w / SCORE_BINS
    parts = [f'<text x="{pl - 30}" y="14" class="t">{e(dim)}</text>',
             f'<line x1="{pl}" y1="{pt + plot_h}" x2="{pl + plot_w}" y2="{pt + plot_h}" stroke="#888"/>',
             f'<line x1="{pl}" y1="{pt}" x2="{pl}" y2="{pt + plot_h}" stroke="#888"/>',
             f'<text x="{pl - 4}" y="{pt + 8}" text-anchor="end" class="s">{ymax}</text>',
             f'<text x="{pl - 4}" y="{pt + plot_h}" text-anchor="end" class="s">0</text>']
    for b in range(SCORE_BINS):
        base = pt + plot_h
        for r in S.ROUTES:
            n = counts[r][b]
            if not n:
                continue
            h = plot_h * n / ymax
            base -= h
            lo = b / SCORE_BINS
            parts.append(f'<rect x="{pl + b * bw + 0.5:.1f}" y="{base:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                         f'fill="{ROUTE_COLORS[r]}"><title>{r}: {n} with {lo:.2f} ≤ score &lt; {lo + 1 / SCORE_BINS:.2f}'
                         "</title></rect>")
    for t in (0, 0.25, 0.5, 0.75, 1):
        x = pl + t * plot_w
        parts.append(f'<text x="{x:.1f}" y="{pt + plot_h + 13}" text-anchor="middle" class="s">{t:g}</text>')
    x = pl + threshold * plot_w
    name = threshold_key(dim)
    parts.append(f'<line x1="{x:.1f}" y1="{pt - 4}" x2="{x:.1f}" y2="{pt + plot_h}" stroke="#000" '
                 f'stroke-width="1.5" stroke-dasharray="4 3"><title>{name} = {threshold:g}</title></line>')
    label = f"{name} {threshold:g}: " + (f"below → {below}" if threshold > 0 else "disabled")
    half = 2.8 * len(label)  # about half its width at 10 px
    tx = min(max(x, half + 2), width - half - 2)
    parts.append(f'<text x="{tx:.1f}" y="{pt - 8}" text-anchor="middle" class="s">{e(label)}</text>')
    nulls = ", ".join(f"{r} {n}" for r, n in hist["nulls"].items() if n)
    parts.append(f'<text x="{pl}" y="{height - 4}" class="s">null (not judged): {e(nulls or "none")}</text>')
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{e(dim)} histogram" data-dimension="{e(dim)}" data-threshold="{threshold:g}">'
            f'{"".join(parts)}</svg>')


def bars_svg(labels: list[str], values: list[int], title: str, color: str = "#546e7a") -> str:
    width, height, pl, pt, pb = 420, 170, 30, 22, 34
    plot_w, plot_h = width - pl - 10, height - pt - pb
    vmax = max(max(values, default=0), 1)
    bw = plot_w / max(len(values), 1)
    parts = [f'<text x="{pl}" y="14" class="t">{e(title)}</text>',
             f'<line x1="{pl}" y1="{pt + plot_h}" x2="{pl + plot_w}" y2="{pt + plot_h}" stroke="#888"/>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * v / vmax
        x = pl + i * bw
        parts.append(f'<rect x="{x + 2:.1f}" y="{pt + plot_h - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                     f'fill="{color}"><title>{e(label)}: {v}</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{pt + plot_h - h - 3:.1f}" text-anchor="middle" class="s">{v}</text>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{pt + plot_h + 13}" text-anchor="middle" class="s">{e(label)}</text>')
    return f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}">{"".join(parts)}</svg>'


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def _anchor(key: str) -> str:
    return f"s-{key[:16]}"


def _reason_anchor(reason: str) -> str:
    return "reason-" + hashlib.sha1(reason.encode()).hexdigest()[:10]


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escape data before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _funnel_section(counts: dict[str, int], total: int, manifest: dict[str, Any] | None, extra: str = "") -> str:
    rows = [[e("input records"), f'<span data-funnel="input" data-count="{total}">{total}</span>', ""]]
    remaining = total
    for key, label in FUNNEL[:5]:
        remaining -= counts[key]
        rows.append([f"− {e(label)}", f'<span data-funnel="{key}" data-count="{counts[key]}">{counts[key]}</span>',
                     f"{remaining} remain"])
    for key, label in FUNNEL[5:]:
        rows.append([f"→ {e(label)}", f'<span data-funnel="{key}" data-count="{counts[key]}">{counts[key]}</span>', ""])
    check = ""
    if manifest:
        routes = manifest.get("routes") or {}
        rejected = sum(counts[k] for k, _ in FUNNEL[:5])
        ok = (manifest.get("input_records") == total and routes.get("twi") == counts["twi"]
              and routes.get("text") == counts["text"] and routes.get("rejected") == rejected)
        check = (f'<p class="{"ok" if ok else "bad"}" data-manifest-match="{str(ok).lower()}">'
                 f"{'✓ equals' if ok else '✗ differs from'} the manifest: {e(manifest.get('input_records'))} input records, "
                 f"routes {e(json.dumps(routes))}; conservation "
                 f"{'ok' if (manifest.get('conservation') or {}).get('ok') else 'FAILED'}.</p>")
    doc = ("<p class=note>Each row counted once, at the first stage that removed it: invalid input (an input error or "
           "no trajectory) → duplicate_of / contaminated → code failure (code_failed, sandbox_violation, "
           "observation_mismatch, recovered_error) → replay-environment gap (replay_env) → any other rejection "
           "(the judges' scores).</p>")
    return (f'<section id="funnel"><h2>Funnel</h2>{funnel_svg(counts, total)}'
            f'{_table(["stage", "rows", ""], rows, "funnel")}{check}{extra}{doc}</section>')


def _routes_section(table: dict[str, dict[str, int]]) -> str:
    rows = []
    for d, c in table.items():
        rows.append([e(d), *[f'<span data-route-discipline="{e(r)}|{e(d)}">{c.get(r, 0)}</span>' for r in S.ROUTES],
                     str(sum(c.values()))])
    totals = [sum(c.get(r, 0) for c in table.values()) for r in S.ROUTES]
    rows.append(["<b>all</b>", *[f"<b>{n}</b>" for n in totals], f"<b>{sum(totals)}</b>"])
    head = ["discipline", *[f'<span class="dot" style="background:{ROUTE_COLORS[r]}"></span>{r}' for r in S.ROUTES],
            "total"]
    return f'<section id="routes"><h2>Routes × disciplines</h2>{_table(head, rows, "num")}</section>'


def _reasons_section(reasons: list[tuple[str, int, list[str]]], total_rejected: int) -> str:
    if not reasons:
        return '<section id="reasons"><h2>Top rejection reasons</h2><p>No rejected rows.</p></section>'
    rows = []
    for reason, n, keys in reasons:
        links = " ".join(f'<a href="#{_anchor(k)}">example {i + 1}</a>' for i, k in enumerate(keys))
        rows.append([f'<a id="{_reason_anchor(reason)}" href="#{_anchor(keys[0])}"><code>{e(reason)}</code></a>',
                     f'<span data-reason="{e(reason)}">{n}</span>', links])
    return (f'<section id="reasons"><h2>Top rejection reasons</h2><p class=note>{total_rejected} rejected rows; a row can '
            f"have several reasons; <code>duplicate_of:&lt;id&gt;</code> counted as one reason.</p>"
            f'{_table(["reason", "rows", "examples (gallery)"], rows)}</section>')


def _scores_section(hists: dict[str, Any], thresholds: dict[str, float], source: str) -> str:
    legend = " ".join(f'<span class="dot" style="background:{c}"></span>{r}' for r, c in ROUTE_COLORS.items())
    charts = "".join(histogram_svg(d, hists[d], thresholds[d], below_route(d)) for d in S.DIMENSIONS)
    return (f'<section id="scores"><h2>Scores by route</h2><p class=note>{legend} — stacked counts in bins of '
            f"{1 / SCORE_BINS:g}; dashed line: the routing threshold, from {e(source)}.</p>"
            f'<div class="grid">{charts}</div></section>')


def _replay_section(stats: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    samples = _table(["replay_status", "samples"], [[e(s), str(n)] for s, n in stats["samples"]], "num")
    cells = _table(["cell status", "cells"], [[e(s), str(n)] for s, n in stats["cells"]], "num")
    edges = DURATION_BINS_MS
    fmt = lambda ms: f"{ms / 1000:g}s" if ms >= 1000 else f"{ms}ms"  # noqa: E731
    labels = [f"<{fmt(hi)}" for hi in edges[1:]] + [f"≥{fmt(edges[-1])}"]
    chart = bars_svg(labels, stats["duration_bins"], "cell duration")
    summary = (f"{stats['n']} cells; duration p50 {_num(stats['p50'], 0)} ms, p90 {_num(stats['p90'], 0)} ms, "
               f"max {_num(stats['max'], 0)} ms; mean fidelity {_num(stats['mean_fidelity'])}")
    box = (manifest or {}).get("sandbox") or {}
    sandbox = (f"; sandbox {e(box.get('kind'))}, level {e(box.get('achieved'))} (required {e(box.get('required'))})"
               if box else "")
    env = (manifest or {}).get("replay_env") or {}
    gaps = env.get("gaps") or {}
    gap_html = ("<p>Replay-environment gaps: " + ", ".join(f"<code>{e(g)}</code> {e(n)}" for g, n in gaps.items())
                + "</p>") if gaps else "<p>Replay-environment gaps: none.</p>"
    return (f'<section id="replay"><h2>Replay</h2><p>{e(summary)}{sandbox}</p>'
            f'<div class="grid">{samples}{cells}{chart}</div>{gap_html}</section>')


def _judges_section(manifest: dict[str, Any] | None, errors: dict[str, dict[str, int]]) -> str:
    judges = (manifest or {}).get("judges") or {}
    llm = judges.get("llm")
    head = '<section id="judges"><h2>LLM judges</h2>'
    if not llm:
        note = "" if not errors else f"<p>errors in the shards: {e(json.dumps(errors))}</p>"
        return f'{head}<p data-llm="not-used">not used (metric judges only).</p>{note}</section>'
    usage = llm.get("usage") or {}
    keys = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "retries", "errors")
    rows = [[e(d), *[e(u.get(k, 0)) for k in keys]] for d, u in sorted(usage.items())]
    usage_t = _table(["dimension", *keys], rows, "num") if rows else "<p>no requests recorded.</p>"
    err_rows = [[e(kind), e(", ".join(f"{d} {n}" for d, n in sorted(by.items()))), str(sum(by.values()))]
                for kind, by in sorted(errors.items())]
    err_t = _table(["error kind", "by dimension", "rows"], err_rows) if err_rows else "<p>no judge errors.</p>"
    agr = judges.get("agreement") or {}
    agr_rows = [[e(d), e(a.get("n")), _num(a.get("mean_abs_diff")), _num(a.get("pearson")),
                 _num(a.get("same_side_of_threshold"))] for d, a in sorted(agr.items())]
    agr_t = (_table(["dimension", "n", "mean |metric − llm|", "Pearson r", "same side of threshold"], agr_rows, "num")
             if agr_rows else "<p>no dimension scored by both.</p>")
    return (f'{head}<p data-llm="used">model {e(llm.get("model"))} at {e(llm.get("endpoint"))}, dimensions '
            f'{e(", ".join(llm.get("dimensions") or []))}</p><h3>usage</h3>{usage_t}<h3>errors by kind</h3>{err_t}'
            f"<h3>metric / LLM agreement</h3>{agr_t}</section>")


def _history_section(runs: list[dict[str, Any]], current: str | None) -> str:
    if not runs:
        return '<section id="history"><h2>History</h2><p>No run manifest in this folder.</p></section>'
    rows = []
    for m in runs:
        routes = m.get("routes") or {}
        rid = str(m.get("run_id") or "")
        mark = " (this report)" if rid == current else ""
        this = m.get("run") if isinstance(m.get("run"), dict) else {}
        read = (f"{e(this.get('input_records'))} read, {e(this.get('already_curated', 0))} already curated"
                if this else "")
        rows.append([f'<span data-run="{e(rid)}">{e(rid)}</span>{mark}', e(m.get("started_at")), read,
                     e(m.get("input_records")), *[e(routes.get(r)) for r in S.ROUTES],
                     "ok" if (m.get("conservation") or {}).get("ok") else "FAILED",
                     e((m.get("timings") or {}).get("total_s")), e(m.get("config_hash")), e(m["_file"])])
    head = ["run", "started", "records of the run", "rows in OUT", *S.ROUTES, "conservation", "total s", "config",
            "file"]
    return (f'<section id="history"><h2>History</h2><p class=note>Runs recorded in this folder '
            f"(manifest.json, {RUNS_DIR}/*.json); counts of OUT after each run.</p>"
            f'{_table(head, rows, "num")}</section>')


def _pre(text: str | None, cls: str = "") -> str:
    return f'<pre class="{cls}">{e(_clip(text))}</pre>' if text else ""


def _gallery_entry(r: dict[str, Any], files: _Files, thresholds: dict[str, float], example_of: list[str]) -> str:
    sid = r[S.SAMPLE_ID]
    key = r["_rk"]
    stem = _SAFE.sub("_", sid)
    route = r.get(S.ROUTE) or "?"
    src = r.get(S.SOURCE) or {}
    reasons = r.get(S.ROUTE_REASONS) or []
    reason_html = " ".join(f"<code class=reason>{e(x)}</code>" for x in reasons)
    examples = "".join(f'<a class="tag" href="#{_reason_anchor(x)}">example of {e(x)}</a>' for x in example_of)
    parts = [f'<article class="sample" id="{_anchor(key)}" data-route="{e(route)}">',
             f'<h3><span class="badge" style="background:{ROUTE_COLORS.get(route, "#555")}">{e(route)}</span> '
             f"<code>{e(sid)}</code> <small>{e(r.get(S.DISCIPLINE))}</small></h3>",
             f'<p class="meta">source {e(src.get(S.SRC_FILE))} #{e(src.get(S.SRC_INDEX))} '
             f"({e(src.get(S.SRC_FORMAT))}) · replay {e(r.get(S.REPLAY_STATUS))} · reasons {reason_html} {examples}</p>",
             f'<div class="q"><b>Question</b>{_pre(r.get(S.QUESTION), "wrap question")}</div>' if r.get(S.QUESTION) else "",
             f"<p><b>Ground truth</b> {e(r.get(S.GROUND_TRUTH))} · <b>final answer</b> {e(r.get(S.FINAL_ANSWER))}</p>"
             if r.get(S.GROUND_TRUTH) or r.get(S.FINAL_ANSWER) else ""]
    if r.get(S.INPUT_ERROR):
        parts.append(f'<p class="bad">input error <code>{e(r[S.INPUT_ERROR])}</code> {e(r.get(S.INPUT_DETAIL))}</p>'
                     f"<b>raw</b>{_pre(r.get(S.RAW), 'wrap')}")
    images = r.get(S.IMAGES) or []
    if images:
        parts.append('<div class="imgs">' + "".join(
            _image_html(img, files, f"{stem}_{k}", f"input {k}") for k, img in enumerate(images)) + "</div>")
    cells: dict[int, list[dict[str, Any]]] = {}
    for c in r.get(S.REPLAY) or []:
        cells.setdefault(c.get(S.CELL_TURN), []).append(c)
    for i, t in enumerate(r.get(S.TURNS) or []):
        parts.append(f'<div class="turn"><p class="step"><b>Step {i + 1}</b></p>{_pre(t.get(S.TURN_REASONING), "wrap")}')
        if t.get(S.TURN_CODE) or cells.get(i):
            parts.append(_pre(t.get(S.TURN_CODE), "code"))
            rec = [_pre(t.get(S.TURN_OBS_TEXT))] + [
                _image_html(img, files, f"{stem}_t{i}_rec{k}", f"recorded {k}")
                for k, img in enumerate(t.get(S.TURN_OBS_IMAGES) or [])]
            rep = []
            for c in cells.get(i, []):
                fid = c.get(S.CELL_FIDELITY)
                status = c.get(S.CELL_STATUS)
                gap = f" ({e(c.get(S.CELL_ENV_GAP))})" if c.get(S.CELL_ENV_GAP) else ""
                cls = "ok" if status == "ok" else "bad"
                rep.append(f'<p class="cellhead"><span class="{cls}">{e(status)}</span>{gap} · '
                           f"{_num(c.get(S.CELL_DURATION_MS), 0)} ms · fidelity "
                           f'<b data-fidelity="{e(fid)}">{_num(fid, 2)}</b></p>')
                rep.append(_pre(c.get(S.CELL_STDOUT)))
                rep.append(_pre(c.get(S.CELL_ERROR), "err"))
                rep += [_image_html(img, files, f"{stem}_c{c.get(S.CELL_INDEX)}_rep{k}", f"replayed {k}")
                        for k, img in enumerate(c.get(S.CELL_IMAGES) or [])]
            if not rep:
                rep.append("<p class=note>not replayed</p>")
            parts.append(f'<div class="cmp"><div><h4>recorded</h4>{"".join(rec)}</div>'
                         f'<div><h4>replayed</h4>{"".join(rep)}</div></div>')
        parts.append("</div>")
    score_rows = []
    for d in S.DIMENSIONS:
        s = r.get(S.score_column(d))
        th = thresholds[d]
        cls = "bad" if s is not None and s < th else ""
        bar = (f'<span class="bar"><span style="width:{max(0.0, min(1.0, s)) * 100:.0f}%"></span></span>'
               if s is not None else "")
        score_rows.append([e(d), f'<span class="{cls}">{_num(s, 2)}</span> {bar}', f"{th:g}",
                           _num(r.get(S.metric_score_column(d)), 2), _num(r.get(S.llm_score_column(d)), 2),
                           e(r.get(S.explanation_column(d)))])
    parts.append(_table(["dimension", "score", "threshold", "metric", "llm", "why"], score_rows, "scores"))
    if r.get(S.TEXT_RESPONSE):
        flags = ", ".join(r.get(S.TEXT_FLAGS) or [])
        parts.append(f"<b>Text version</b> <small>{e(flags)}</small>{_pre(r[S.TEXT_RESPONSE], 'wrap')}")
    parts.append("</article>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:12px 24px 40px}
header{background:#263238;color:#eceff1;padding:14px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0}nav a{color:#b3e5fc;margin-right:14px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 18px;margin:14px 0}
h2{font-size:18px;margin:6px 0 10px}h3{font-size:15px;margin:4px 0}h4{margin:2px 0;font-size:13px;color:#455a64}
table{border-collapse:collapse;margin:6px 12px 6px 0;font-size:13px}
th,td{border-bottom:1px solid #e3e6ea;padding:3px 8px;text-align:left;vertical-align:top}
table.num td{text-align:right}table.num td:first-child{text-align:left}th{background:#f0f2f4}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.chart{font-size:12px;background:#fff}.chart .t{font-weight:600;font-size:13px}.chart .s{font-size:10px;fill:#455a64}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 8px}
.note{color:#546e7a;font-size:12px}.ok{color:#2e7d32}.bad{color:#c62828}
.sample{border-top:3px solid #cfd8dc;padding:10px 0 18px;margin-top:12px}
.badge{color:#fff;border-radius:3px;padding:1px 7px;font-size:12px}
.meta{color:#455a64;font-size:12px;margin:2px 0 6px}.reason{background:#fdecea;padding:0 4px;border-radius:3px}
.tag{font-size:11px;margin-left:6px}
pre{background:#f4f6f8;border:1px solid #e3e6ea;padding:6px 8px;margin:4px 0;overflow:auto;max-height:340px;
font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre.wrap{white-space:pre-wrap;word-break:break-word;font-family:inherit;font-size:13px}
pre.code{background:#263238;color:#eceff1}pre.err{background:#fdecea}
.cmp{display:grid;grid-template-columns:1fr 1fr;gap:12px}.cmp>div{min-width:0}
.turn{border-left:3px solid #b0bec5;padding-left:10px;margin:8px 0}.step{margin:0}.cellhead{margin:2px 0}
figure{display:inline-block;margin:4px 8px 4px 0;vertical-align:top;text-align:center}
figure img{max-width:256px;max-height:256px;border:1px solid #cfd8dc;background:#fff}
figcaption{font-size:11px;color:#546e7a;max-width:256px;word-break:break-all}
.bar{display:inline-block;width:60px;height:7px;background:#e3e6ea;vertical-align:middle}
.bar span{display:block;height:7px;background:#607d8b}.scores td:last-child{max-width:640px}
"""


def render(out_dir: Path, files_dir: Path, samples: int | None = DEFAULT_SAMPLES) -> tuple[str, _Files, int]:
    """The report's HTML for OUT (full-size images go to ``files_dir``); -> (html, files, gallery rows)."""
    out_dir = Path(out_dir)
    con = connect(out_dir)
    _prepare(con)
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    thresholds, source = routing_thresholds(manifest)
    total = con.execute("SELECT count(*) FROM _r").fetchone()[0]
    counts = funnel_counts(con)
    reasons = top_reasons(con)
    files = _Files(files_dir)

    keys = gallery_keys(con, samples, (k for _, _, ks in reasons for k in ks))
    example_of: dict[str, list[str]] = {}
    for reason, _, ks in reasons:
        for k in ks:
            example_of.setdefault(k, []).append(reason)
    gallery: list[str] = []
    routes_seen: list[str] = []
    for start in range(0, len(keys), FETCH_CHUNK):
        chunk = keys[start:start + FETCH_CHUNK]
        rows = {r["_rk"]: r for r in fetch_rows(con, "SELECT * FROM _r WHERE list_contains(?, _rk)",
                                                 [[k for _, k in chunk]])}
        for route, k in chunk:
            if route not in routes_seen:
                routes_seen.append(route)
                n = sum(1 for x, _ in keys if x == route)
                gallery.append(f'<h3 class="route-head" id="gallery-{e(route)}">{e(route)} ({n} shown)</h3>')
            gallery.append(_gallery_entry(rows[k], files, thresholds, example_of.get(k, [])))

    m = manifest or {}
    evaluation = out_dir / "evaluation.json"
    ev_html = ""
    if evaluation.is_file():
        try:
            ev = json.loads(evaluation.read_text())
            ev_html = (f"<p>Agreement with {e(Path(str(ev.get('labels', ''))).name)}: {e(ev.get('agree'))}/"
                       f"{e(ev.get('labeled'))} = {float(ev.get('agreement') or 0):.1%}</p>")
        except (OSError, ValueError, TypeError):
            ev_html = ""
    title = f"twi-curate report — {m.get('run_id', out_dir.name)}"
    sample_note = "every row" if samples is None else f"{samples} per route (by a hash of the row)"
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("funnel", "funnel"), ("routes", "routes"), ("reasons", "reasons"), ("scores", "scores"), ("replay", "replay"),
        ("judges", "LLM judges"), ("history", "history"), ("gallery", "gallery")))
    head = (f"<header><h1>{e(title)}</h1><p>{e(total)} rows · started {e(m.get('started_at', '?'))} · config "
            f"{e(m.get('config_hash', '?'))} · twi-curate {e((m.get('versions') or {}).get('twi-curate', '?'))} · "
            f"inputs {e(', '.join(m.get('inputs') or []))}</p><nav>{nav}</nav></header>")
    body = [
        _funnel_section(counts, total, manifest, ev_html),
        _routes_section(routes_by_discipline(con)),
        _reasons_section(reasons, total - counts["text"] - counts["twi"]),
        _scores_section(score_histograms(con), thresholds, source),
        _replay_section(replay_stats(con), manifest),
        _judges_section(manifest, llm_errors(con)),
        _history_section(find_runs(out_dir), m.get("run_id")),
        f'<section id="gallery"><h2>Gallery</h2><p class=note>{e(sample_note)}, plus examples of the top rejection '
        f"reasons. Click an image for the original file.</p>{''.join(gallery) or '<p>no rows.</p>'}</section>",
    ]
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body>{head}<main>{''.join(body)}</main></body></html>\n")
    return page, files, len(keys)


def write_report(out_dir: Path, dest: Path | None = None, samples: int | None = DEFAULT_SAMPLES) -> ReportResult:
    """Write the report of OUT to ``dest`` (default OUT/report.html) and its full-size images to
    ``<dest stem>_files/`` beside it (a folder this function made before is replaced)."""
    out_dir = Path(out_dir)
    dest = Path(dest) if dest is not None else out_dir / REPORT
    files_dir = dest.parent / f"{dest.stem}_files"
    if (files_dir / FILES_MARKER).is_file():
        shutil.rmtree(files_dir)
    page, files, n = render(out_dir, files_dir, samples)
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / FILES_MARKER).write_text("written by twi-curate report; replaced on the next report\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(dest)
    return ReportResult(path=dest, files_dir=files_dir, html_bytes=dest.stat().st_size, files=files.count,
                        files_bytes=files.bytes, gallery=n)

