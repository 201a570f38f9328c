"""The curation report (pipeline/tools/report.py) over a real run: the plain HTML (escaping, funnel numbers,
links, original image bytes) and the page in a real headless Chromium (tests/chromium.py).

The run: nine records of the bundled corpus through `twi-curate run` — good zooms, a decorative
image, failing code, a fabricated observation, a wrong answer, an exact duplicate, a cell importing
a module the replay lacks, a malformed line, and a zoom whose question carries
``<script>window.__xss=1</script>`` and ``<img src=x onerror=...>``.

The Chromium test writes its screenshot to ``$TWI_TEST_ARTIFACTS/report_chromium.png`` (default
``<tmp>/twi-curate-test-artifacts/report_chromium.png``). It is skipped without /usr/bin/chromium,
except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import DEFAULT_N, app, cache_dir
from pipeline.manifest import read_manifest
from pipeline.tools.report import THUMB_PX, write_report
from pipeline.tools.shards import VIEW, connect, fetch_rows
from schemas import sample as S
from tests.chromium import CHROMIUM, Chromium

pytestmark = pytest.mark.timeout(900)
runner = CliRunner()

XSS_QUESTION = ("<script>window.__xss=1</script> <img src=x onerror=\"window.__xss_img=1\"> "
                "{question}")
RAW_XSS = '{"question": "<script>window.__xss_raw=1</script>", "turns": ['  # malformed JSON: shown as raw text
# corpus line -> role in the test corpus (see tests/conftest.py's bundled corpus: labels.jsonl)
PICK = {0: "zoom", 6: "decorative", 18: "failing_code", 30: "fabricated", 36: "wrong_answer"}


def artifacts_dir() -> Path:
    return Path(os.environ.get("TWI_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "twi-curate-test-artifacts")


def _absolute(record: dict, base: Path) -> dict:
    record = json.loads(json.dumps(record))
    record["images"] = [str(base / p) for p in record.get("images") or []]
    for t in record.get("turns") or []:
        obs = t.get("observation") or {}
        obs["images"] = [str(base / p) for p in obs.get("images") or []]
    return record


@pytest.fixture(scope="module")
def report_corpus(cache_root, tmp_path_factory):
    base = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0"
    records = [json.loads(line) for line in (base / "corpus.jsonl").read_text().splitlines()]
    picked = [_absolute(records[i], base) for i in PICK]
    xss = _absolute(records[4], base)
    xss["question"] = XSS_QUESTION.format(question=xss["question"])
    duplicate = picked[1]
    gap = _absolute(records[7], base)  # code that imports a module the replay environment lacks
    gap["question"] = "Which module is missing? " + gap["question"]
    gap["turns"][0]["code"] = "import twi_module_that_is_not_installed\n" + gap["turns"][0]["code"]
    lines = [json.dumps(r) for r in [*picked, xss, duplicate, gap]] + [RAW_XSS]
    folder = tmp_path_factory.mktemp("report-corpus")
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def report_out(ray_local, report_corpus, tmp_path_factory):
    """`twi-curate run` (which ends by writing OUT/report.html): (OUT, what it printed)."""
    out = tmp_path_factory.mktemp("report-run") / "out"
    result = runner.invoke(app, ["run", str(report_corpus), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output


def expected_funnel(out: Path) -> dict[str, int]:
    """The funnel's numbers from the manifest (and, per stage, the shards' reasons)."""
    m = read_manifest(out)
    rejected = m["reasons"].get("rejected", {})
    pref = lambda *ps: sum(n for r, n in rejected.items() if r.startswith(ps))  # noqa: E731
    funnel = {
        "input": m["input_records"],
        "invalid": pref("invalid_input:", "unsupported_tool:") + rejected.get("no_trajectory", 0),
        "dedup": m["dedup"]["duplicates"] + m["dedup"]["best_of_n_rejected"] + m["dedup"]["contaminated"],
        "code_failed": pref("code_failed:", "sandbox_violation", "observation_mismatch", "recovered_error"),
        "replay_env": m["replay_env"]["samples"],
        "text": m["routes"]["text"],
        "twi": m["routes"]["twi"],
    }
    funnel["judges"] = m["routes"]["rejected"] - sum(funnel[k] for k in ("invalid", "dedup", "code_failed", "replay_env"))
    return funnel


class Page(HTMLParser):
    """Ids, links, images, data-funnel numbers and visible text of a report."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.srcs, self.tags = set(), [], [], []
        self.funnel: dict[str, tuple[int, str]] = {}
        self.text: list[str] = []
        self._funnel_key: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if "data-funnel" in a:
            self._funnel_key = a["data-funnel"]
            self.funnel[a["data-funnel"]] = (int(a["data-count"]), "")

    def handle_data(self, data):
        self.text.append(data)
        if self._funnel_key:
            n, _ = self.funnel[self._funnel_key]
            self.funnel[self._funnel_key] = (n, data)
            self._funnel_key = None


def test_run_writes_the_report_and_the_plain_html_is_safe_and_adds_up(report_out, tmp_path):
    out, printed = report_out
    report = out / "report.html"
    assert report.is_file() and f"Report {report}" in " ".join(printed.split())
    text = report.read_text()
    page = Page(text)

    # untrusted text is escaped: no tag from the data, and the page has no script at all
    assert "script" not in page.tags and "<script" not in text.lower()
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=&quot;window.__xss_img=1&quot;&gt;" in text
    assert "&lt;script&gt;window.__xss_raw=1&lt;/script&gt;" in text  # the malformed line's raw text
    visible = "".join(page.text)
    assert '<script>window.__xss=1</script> <img src=x onerror="window.__xss_img=1">' in visible

    # the funnel equals the manifest, stage by stage, and adds up to the input records
    want = expected_funnel(out)
    got = {k: n for k, (n, shown) in page.funnel.items()}
    assert got == want, (got, want)
    assert all(shown == str(n) for n, shown in page.funnel.values())
    assert want == {**want, "input": 9, "invalid": 1, "dedup": 1, "replay_env": 1}
    assert want["code_failed"] >= 2 and want["twi"] >= 1 and want["text"] >= 1
    assert sum(v for k, v in want.items() if k != "input") == want["input"]
    assert 'data-manifest-match="true"' in text and 'data-llm="not-used"' in text

    # self-contained: every image is an inline thumbnail of at most THUMB_PX; no remote resource
    assert page.srcs and all(s.startswith("data:image/") for s in page.srcs)
    for src in page.srcs:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert max(im.size) <= THUMB_PX
    assert not [h for h in page.hrefs if re.match(r"^[a-z]+:", h)], page.hrefs

    # every in-page link has its target; full-size links are the original bytes, copied unchanged
    anchors = [h[1:] for h in page.hrefs if h.startswith("#")]
    assert anchors and not [a for a in anchors if a not in page.ids]
    assert any(a.startswith("s-") for a in anchors)  # reasons link to gallery entries
    files = [h for h in page.hrefs if not h.startswith("#")]
    assert files and all(h.startswith("report_files/") and (out / h).is_file() for h in files)
    originals = {hashlib.sha256(img[S.IMG_BYTES]).hexdigest()
                 for r in fetch_rows(connect(out), f"SELECT {S.IMAGES} FROM {VIEW}") for img in r[S.IMAGES] or []}
    inputs = [h for h in files if re.search(r"_\d+\.\w+$", h)]
    assert inputs and all(hashlib.sha256((out / h).read_bytes()).hexdigest() in originals for h in inputs)

    # deterministic: the same OUT gives the same page
    again = write_report(out, tmp_path / "again" / "report.html")
    assert again.path.read_text() == text and again.files_dir.name == "report_files"


def test_report_command_samples_and_history(report_out, tmp_path):
    out, _ = report_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report*"))
    m = read_manifest(copy)
    older = {**m, "run_id": "20200101T000000-older", "started_at": "2020-01-01T00:00:00Z",
             "routes": {"twi": 1, "text": 0, "rejected": 2}, "input_records": 3}
    (copy / "runs").mkdir(exist_ok=True)  # the run ledger writes runs/<run_id>.json too
    (copy / "runs" / "older.json").write_text(json.dumps(older))

    every = runner.invoke(app, ["report", str(copy), "--out", str(tmp_path / "all.html"), "--samples", "all"])
    assert every.exit_code == 0, every.output
    html_all = (tmp_path / "all.html").read_text()
    assert html_all.count('<article class="sample"') == m["input_records"]
    assert (tmp_path / "all_files").is_dir()
    runs = re.findall(r'data-run="([^"]+)"', html_all)
    assert runs == ["20200101T000000-older", m["run_id"]]  # oldest first, one line per run

    one = runner.invoke(app, ["report", str(copy), "--samples", "1"])
    assert one.exit_code == 0 and (copy / "report.html").is_file(), one.output
    html_one = (copy / "report.html").read_text()
    n_articles = html_one.count('<article class="sample"')
    n_reason_examples = len(set(re.findall(r'href="#(s-[0-9a-f]+)"', html_one)))
    assert 3 <= n_articles <= 3 + n_reason_examples < m["input_records"] + 3

    bad = runner.invoke(app, ["report", str(copy), "--samples", "some"])
    assert bad.exit_code == 2 and "--samples" in bad.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no shards/" in " ".join(missing.output.split())


@pytest.fixture(scope="session")
def chromium_binary():
    """/usr/bin/chromium (or $TWI_CHROMIUM): skip without it, but fail under CI."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must install it (.ci/run: apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return CHROMIUM


def test_report_in_headless_chromium(chromium_binary, report_out):
    out, _ = report_out
    report = out / "report.html"
    want = expected_funnel(out)
    shot = artifacts_dir() / "report_chromium.png"
    shot.unlink(missing_ok=True)
    with Chromium(chromium_binary) as browser:
        page = browser.open(report.as_uri(), width=1200)
        assert page.evaluate("document.title").startswith("twi-curate report")
        widths = page.evaluate("Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth)))",
                               await_promise=True)
        assert widths and all(w > 0 for w in widths), widths
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        funnel = page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-funnel]')]"
                               ".map(e => [e.dataset.funnel, Number(e.textContent)]))")
        assert funnel == want, (funnel, want)
        # the untrusted question ran nothing and shows as text
        assert page.evaluate("[typeof window.__xss, typeof window.__xss_img, typeof window.__xss_raw]") == [
            "undefined"] * 3
        body = page.evaluate("document.body.innerText")
        assert "<script>window.__xss=1</script>" in body and '<img src=x onerror="window.__xss_img=1">' in body
        assert page.evaluate("document.querySelectorAll('script').length") == 0
        # every in-page link has a target; a rejection reason's example opens its gallery entry
        assert page.evaluate("[...document.querySelectorAll('a[href^=\"#\"]')].map(a => a.getAttribute('href'))"
                             ".filter(h => !document.getElementById(h.slice(1)))") == []
        link = page.evaluate("document.querySelector('#reasons a[href^=\"#s-\"]').getAttribute('href')")
        page.evaluate(f"location.hash = {json.dumps(link)}")
        target = page.evaluate("[document.querySelector(':target').id, document.querySelector(':target').className,"
                               " document.querySelector(':target').getBoundingClientRect().top]")
        assert target[0] == link[1:] and target[1] == "sample" and abs(target[2]) < 5, target
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(shot, full_page=True)
        full = page.evaluate("document.querySelector('figure a').href")
        errors = page.errors
        assert errors == [], errors
        # the full-size image behind a thumbnail opens, at its original size
        original = browser.open(full)
        size = original.evaluate("[document.images[0].naturalWidth, document.images[0].naturalHeight]")
        with Image.open(Path(unquote(urlparse(full).path))) as im:
            assert size == list(im.size) and max(size) > THUMB_PX
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width == 1200 and im.height > 2000
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100
    print(f"screenshot: {shot}")
