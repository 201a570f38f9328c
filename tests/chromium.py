"""A real headless Chromium driven over the DevTools protocol, without a browser-automation package.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages from fd 3 and writes
them to fd 4, each a JSON object terminated by a NUL byte (the transport Playwright and Puppeteer use).
So no websocket client is needed, only the standard library. One page is attached with a flat
session; console messages, uncaught exceptions and log entries of level error are collected.

    with Chromium() as browser:
        page = browser.open(Path("report.html").as_uri(), width=1200)
        page.evaluate("document.title")
        page.screenshot(Path("shot.png"), full_page=True)
        page.errors  # console errors, exceptions, failed loads
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("TWI_CHROMIUM", "/usr/bin/chromium")


class ChromiumError(RuntimeError):
    pass


def _high(fd: int) -> int:
    """The pipe end moved to a close-on-exec descriptor >= 10."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    def __init__(self, binary: str = CHROMIUM, timeout_s: float = 60.0):
        self.binary = binary
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.profile = tempfile.mkdtemp(prefix="twi-chromium-")
        self._next_id = 0
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    # --- process and transport ------------------------------------------------------------
    def __enter__(self) -> Chromium:
        # above fd 9, so that moving them onto fds 3 and 4 in the child cannot overwrite one another
        to_child_r, self._to_child = (_high(fd) for fd in os.pipe())  # we write, Chromium reads on fd 3
        self._from_child, from_child_w = (_high(fd) for fd in os.pipe())  # Chromium writes on fd 4

        def fds() -> None:  # in the child, before exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        args = [
            self.binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}", "about:blank",
        ]
        self._log = open(Path(self.profile) / "chromium.log", "w+b")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     preexec_fn=fds, pass_fds=(3, 4), close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self.call("Browser.getVersion")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                with contextlib.suppress(ChromiumError, OSError):
                    self.call("Browser.close", timeout_s=10)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def _send(self, method: str, params: dict[str, Any] | None, session: str | None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        return self._next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    err = (Path(self.profile) / "chromium.log").read_text(errors="replace")[-2000:]
                    raise ChromiumError(f"Chromium closed the DevTools pipe: {err}")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        msg_id = self._send(method, params, session)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise ChromiumError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, session: str | None, since: int = 0, timeout_s: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        k = since
        while True:
            for ev in self.events[k:]:
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev
            k = len(self.events)
            self.events.append(self._read_message(deadline))

    # --- pages ------------------------------------------------------------------------------
    def open(self, url: str, width: int = 1280, height: int = 900) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        since = len(self.events)
        nav = self.call("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", session, since)
        page.evaluate("document.fonts ? document.fonts.ready.then(() => true) : true", await_promise=True)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        res = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                     "awaitPromise": await_promise}, session=self.session)
        if "exceptionDetails" in res:
            raise ChromiumError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads, CSP violations)."""
        out = []
        for ev in self.browser.events:
            if ev.get("sessionId") != self.session:
                continue
            p = ev.get("params", {})
            if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif ev["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return out

    def screenshot(self, path: Path, full_page: bool = True, max_height: int | None = None) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            h = min(h, max_height) if max_height else h
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        data = self.browser.call("Page.captureScreenshot", params, session=self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
