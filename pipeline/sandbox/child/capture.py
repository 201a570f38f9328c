"""Per-cell capture in the worker: capped stdout/stderr and the images a cell shows or writes.

Everything the parent receives is PNG: shown images and non-PNG files are re-encoded here, PNG
files pass through byte for byte once their IHDR size checks out (never decoded).
"""

from __future__ import annotations

import io
import os
import stat

from pipeline.sandbox.protocol import PNG_SIGNATURE, STDERR_MARKER, png_dimensions, truncation_note

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
# Images above this many pixels are not kept; the worker lowers it to the parent's
# max_output_pixels (no point encoding what the parent will drop).
MAX_CAPTURE_PIXELS = 64 * 1024 * 1024
MAX_SCANNED_FILES = 20000


def limit_capture_pixels(max_pixels: int) -> None:
    """Keep no image above ``max_pixels`` (the parent's max_output_pixels) either."""
    global MAX_CAPTURE_PIXELS
    MAX_CAPTURE_PIXELS = min(MAX_CAPTURE_PIXELS, max_pixels)


class CappedText:
    """A text stream that keeps the first ``budget`` UTF-8 bytes and counts the rest."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0
        self.buffer = _CappedBinary(self)

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.write_bytes(s.encode("utf-8", "backslashreplace"))
        return len(s)

    def write_bytes(self, b: bytes) -> None:
        room = self.budget - self.kept
        if room > 0:
            self.parts.append(b[:room])
            self.kept += min(room, len(b))
        self.dropped += max(0, len(b) - max(room, 0))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("captured stream has no file descriptor")

    @property
    def closed(self) -> bool:
        return False


class _CappedBinary:
    def __init__(self, owner: CappedText) -> None:
        self._owner = owner

    def write(self, b) -> int:
        data = bytes(b)
        self._owner.write_bytes(data)
        return len(data)

    def flush(self) -> None:
        pass


def compose_output(out: CappedText, err: CappedText, notes: list[str], cap: int) -> str:
    err_bytes = err.getvalue()
    if notes:
        err_bytes += "".join(f"[sandbox] {n}\n" for n in notes).encode("utf-8", "backslashreplace")
    body = out.getvalue()
    if err_bytes or err.dropped:
        body += STDERR_MARKER.encode() + err_bytes
    dropped = out.dropped + err.dropped
    if len(body) > cap:
        dropped += len(body) - cap
        body = body[:cap]
    text = body.decode("utf-8", "ignore")  # only a character cut at the cap can be invalid
    if dropped:
        text += truncation_note(dropped)
    return text


class Captures:
    """Images shown during one cell (plt.show, Figure.show, Image.show, cv2.imshow, display)."""

    def __init__(self, max_images: int, max_bytes: int) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.items: list[tuple[str, bytes]] = []
        self.bytes = 0
        self.notes: list[str] = []

    def room(self) -> bool:
        return len(self.items) < self.max_images

    def add_png(self, stem: str, png: bytes | None) -> None:
        if png is None:
            return
        if not self.room():
            self.notes.append(f"image {stem!r} not kept: more than {self.max_images} images in this cell")
            return
        if self.bytes + len(png) > self.max_bytes:
            self.notes.append(f"image {stem!r} not kept: the cell's image byte budget is exhausted")
            return
        self.items.append((stem, png))
        self.bytes += len(png)

    def add_pil(self, im, stem: str) -> None:
        if self.room():
            self.add_png(stem, png_bytes(im, stem, self.notes))
        else:
            self.add_png(stem, b"")  # records the note

    def add_figure(self, fig, stem: str = "figure") -> None:
        if not self.room():
            self.add_png(stem, b"")
            return
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        with Image.open(buf) as im:
            self.add_png(stem, png_bytes(im, stem, self.notes))


def png_bytes(im, stem: str, notes: list[str]) -> bytes | None:
    """Re-encode a PIL image as PNG (the parent only ever sees PNG)."""
    try:
        w, h = im.size
        if w * h > MAX_CAPTURE_PIXELS:
            notes.append(f"image {stem!r} not kept: {w}x{h} exceeds {MAX_CAPTURE_PIXELS} pixels")
            return None
        im.load()
        if im.mode not in PNG_MODES:
            has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - a broken image is reported, not fatal
        notes.append(f"image {stem!r} not kept: {type(exc).__name__}: {exc}")
        return None


def ndarray_to_pil(arr, bgr: bool):
    import numpy as np
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and bgr and a.shape[2] in (3, 4):
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    return Image.fromarray(np.ascontiguousarray(a))


def snapshot_images(root: str) -> dict[str, tuple[int, int, int, int]]:
    """Image files under ``root`` (recursively, symlinks not followed) -> (mtime_ns, size, ino, ctime_ns)."""
    seen: dict[str, tuple[int, int, int, int]] = {}
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            count += 1
            if count > MAX_SCANNED_FILES:
                return seen
            if not fname.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, fname)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                seen[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    return seen


def read_image_file(path: str, stem: str, notes: list[str]) -> bytes | None:
    """An image file the cell wrote, as PNG: a PNG file passes through byte for byte once its
    signature and IHDR size check out (never decoded here); other formats are re-encoded."""
    from PIL import Image

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(24)
            if head.startswith(PNG_SIGNATURE):
                size = png_dimensions(head)
                if size is None:
                    notes.append(f"image {stem!r} not kept: malformed PNG header")
                    return None
                if size[0] * size[1] > MAX_CAPTURE_PIXELS:
                    w, h = size
                    notes.append(f"image {stem!r} not kept: {w}x{h} exceeds {MAX_CAPTURE_PIXELS} pixels")
                    return None
                return head + fh.read()
            fh.seek(0)
            with Image.open(fh) as im:
                return png_bytes(im, stem, notes)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"image {stem!r} not kept: {type(exc).__name__}: {exc}")
        return None


def safe_stem(text: str) -> str:
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in text)[:80].strip(".")
    return stem or "image"

