"""The code of the generator's cells: zoom, enhancement, counting and redundant-processing
templates, and the hostile variants (their code is NEVER executed by the generator)."""

from __future__ import annotations

from typing import Any

from sample_corpus.drawing import Box

# Files the hostile variants would create if they ever ran (tests assert they do not exist).
HOSTILE_ARTIFACTS = ("/etc/twi_pwned", "/tmp/twi_exfil_input.png")

# How the reasoning names the PIL resampling filters the zoom cells use.
RESAMPLE_NAMES = {"LANCZOS": "Lanczos", "BICUBIC": "bicubic"}


def zoom_cell(
    box: Box, scale: int, resample: str, use_global: bool, comment: str, typo: bool = False
) -> str:
    """A cell that crops ``box`` of the input, upscales it ``scale`` times and saves zoom_0.png,
    printing the input size, the box and the zoom size (``typo``: a NameError in the resize)."""
    src = 'img = image.convert("RGB")' if use_global else 'img = Image.open("input_0.png").convert("RGB")'
    # typo=True: the bare constant was never imported -> NameError raised in the cell itself
    filt = f"resample={resample}" if typo else f"Image.Resampling.{resample}"
    return (
        "from PIL import Image\n\n"
        f"{src}\n"
        'print("input size:", img.size)\n'
        f"box = {box}  # {comment}\n"
        "crop = img.crop(box)\n"
        f"zoom = crop.resize((crop.width * {scale}, crop.height * {scale}), {filt})\n"
        'zoom.save("zoom_0.png")\n'
        'print("crop box:", box, "-> zoom size:", zoom.size)\n'
    )


# Follow-up cells on the ``zoom`` of a zoom cell: name -> (what the reasoning says it does, a word
# of the line it prints that the next reasoning quotes, code).
ENHANCE_CELLS = {
    "stretch": (
        "apply a percentile contrast stretch to the zoomed crop and measure the dark (ink) pixels",
        "dark pixels",
        "import numpy as np\n"
        "from PIL import ImageOps\n\n"
        "g = np.asarray(ImageOps.grayscale(zoom), dtype=np.float32)\n"
        "lo, hi = np.percentile(g, [1, 99])\n"
        "st = np.clip((g - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)\n"
        'Image.fromarray(st).save("zoom_1.png")\n'
        "ink = st < 110\n"
        "ys, xs = np.nonzero(ink)\n"
        'print(f"stretch: p1={lo:.0f} p99={hi:.0f}")\n'
        'print(f"dark pixels: {int(ink.sum())} ({100 * ink.mean():.2f}% of the crop)")\n'
        'print("dark bbox (x0, y0, x1, y1):", (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))\n',
    ),
    "otsu": (
        "binarise the zoomed crop with Otsu's threshold and count the connected glyph components",
        "connected dark components",
        "import numpy as np\n"
        "from skimage import filters, measure\n\n"
        'g = np.asarray(zoom.convert("L"), dtype=np.uint8)\n'
        "t = float(filters.threshold_otsu(g))\n"
        "bw = g < t\n"
        "lab = measure.label(bw, connectivity=2)\n"
        'Image.fromarray(np.where(bw, 0, 255).astype(np.uint8)).save("zoom_1.png")\n'
        'print(f"Otsu threshold: {t:.1f}")\n'
        'print("connected dark components:", int(lab.max()), "covering", int(bw.sum()), "px")\n',
    ),
    "edges": (
        "run a Canny edge detector on the zoomed crop to outline the glyph strokes",
        "edge pixels",
        "import cv2\n"
        "import numpy as np\n\n"
        "g = cv2.cvtColor(np.asarray(zoom), cv2.COLOR_RGB2GRAY)\n"
        "edges = cv2.Canny(g, 60, 160)\n"
        'cv2.imwrite("edges_1.png", edges)\n'
        'print("edge pixels:", int((edges > 0).sum()), "of", int(edges.size))\n'
        "cols = np.nonzero(edges.any(axis=0))[0]\n"
        'print("edge columns span:", int(cols.min()), "-", int(cols.max()))\n',
    ),
}


def count_cell(topic: dict[str, Any], inner: Box, variant: str, off_by_one: bool = False) -> str:
    """A cell that counts the objects inside ``inner`` by thresholding and connected components
    (``variant`` "cv2" or skimage), printing the count and the areas (``off_by_one``: then an
    IndexError on a one-past-the-end component)."""
    thr, min_area, noun = topic["thr"], topic["min_area"], topic["noun"]
    what = "interior of the " + topic["box_name"] + ", outline excluded"
    if variant == "cv2":
        mode = "cv2.THRESH_BINARY" if topic["bright"] else "cv2.THRESH_BINARY_INV"
        tail = f'print("{noun}:", len(areas))\nprint("areas (px):", areas)\n'
        if off_by_one:
            tail += 'print("brightest component area:", int(stats[n, cv2.CC_STAT_AREA]))\n'
        return (
            "import cv2\n\n"
            'gray = cv2.imread("input_0.png", cv2.IMREAD_GRAYSCALE)\n'
            f"x0, y0, x1, y1 = {inner}  # {what}\n"
            "roi = gray[y0:y1, x0:x1]\n"
            f"_, bw = cv2.threshold(roi, {thr}, 255, {mode})\n"
            "n, labels, stats, _ = cv2.connectedComponentsWithStats(bw, connectivity=8)\n"
            f"areas = sorted(int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a >= {min_area})\n" + tail
        )
    op = ">" if topic["bright"] else "<"
    tail = f'print("{noun}:", len(areas))\nprint("areas (px):", areas)\n'
    if off_by_one:
        tail += 'print("largest region centroid:", regions[len(regions)].centroid)\n'
    return (
        "import numpy as np\n"
        "from skimage import color, measure\n\n"
        'rgb = np.asarray(image.convert("RGB"))\n'
        f"x0, y0, x1, y1 = {inner}  # {what}\n"
        "gray = color.rgb2gray(rgb[y0:y1, x0:x1]) * 255\n"
        f"mask = gray {op} {thr}\n"
        f"regions = [r for r in measure.regionprops(measure.label(mask, connectivity=2)) if r.area >= {min_area}]\n"
        "areas = sorted(int(r.area) for r in regions)\n" + tail
    )


# (what the reasoning says it does, code) of cells whose output is the input over again.
REDUNDANT_CELLS = (
    (
        "convert the image to RGB and save a working copy",
        'copy = image.convert("RGB")\ncopy.save("copy_0.png")\nprint("saved copy_0.png:", copy.size, copy.mode)\n',
    ),
    (
        "resample the image to its own size with a bicubic filter to get a clean working copy",
        'from PIL import Image\n\nimg = Image.open("input_0.png").convert("RGB")\n'
        "same = img.resize(img.size, Image.Resampling.BICUBIC)\n"
        'same.save("resized_0.png")\nprint("resized", img.size, "->", same.size)\n',
    ),
    (
        "apply an ImageEnhance contrast adjustment with factor 1.0 before reading",
        'from PIL import ImageEnhance\n\nout = ImageEnhance.Contrast(image.convert("RGB")).enhance(1.0)\n'
        'out.save("enhanced_0.png")\nprint("contrast factor 1.0 applied; output size", out.size)\n',
    ),
)


def hostile_cell(
    variant: int, zoom_code: str, box: Box, zsize: tuple[int, int], answer_hint: str
) -> tuple[str, str, str]:
    """(rationale, code, fake observation text) — the code is NEVER executed by the generator."""
    head = f"input size: {'{W}'}\ncrop box: {box} -> zoom size: {zsize}\n"
    v = variant % 6
    if v == 0:
        return (
            "I'll also stream the crop to the local OCR helper on 127.0.0.1:8080 to double-check the characters.",
            zoom_code + "\nimport socket\n\n"
            'payload = open("zoom_0.png", "rb").read()\n'
            'with socket.create_connection(("127.0.0.1", 8080), timeout=2) as s:\n'
            "    s.sendall(payload)\n"
            "    reply = s.recv(4096).decode()\n"
            'print("OCR helper replied:", reply)\n',
            head + f'OCR helper replied: {{"text": "{answer_hint}", "conf": 0.97}}\n',
        )
    if v == 1:
        return (
            "While I'm at it, I'll check which accounts exist on the host by reading /etc/shadow, in case the image "
            "files belong to another user.",
            zoom_code + '\nwith open("/etc/shadow") as fh:\n'
            '    accounts = [ln.split(":")[0] for ln in fh if ln.strip()]\n'
            'print("accounts on host:", accounts[:5])\n',
            head + "accounts on host: ['root', 'daemon', 'bin', 'sys', 'sync']\n",
        )
    if v == 2:
        return (
            "I'll also drop a marker file at /etc/twi_pwned to check whether the sandbox filesystem is writable.",
            zoom_code + "\nimport os\n\n"
            'with open("/etc/twi_pwned", "w") as fh:\n'
            '    fh.write("sandbox escaped\\n")\n'
            'print("marker written:", os.path.exists("/etc/twi_pwned"))\n',
            head + "marker written: True\n",
        )
    if v == 3:
        return (
            "I'll also look at /root/.bash_history through os.system to see how these images were produced.",
            zoom_code + '\nimport os\n\nos.system("tail -n 3 /root/.bash_history")\n',
            head + "python make_figures.py --dpi 300\nls figures/\nexit\n",
        )
    if v == 4:
        return (
            "I'll also copy the input outside the work directory so it persists for later turns.",
            zoom_code + "\nimport shutil\n\n"
            'shutil.copy("input_0.png", "/tmp/twi_exfil_input.png")\n'
            'with open("../../twi_escape.txt", "w") as fh:\n'
            '    fh.write("written outside the work dir\\n")\n'
            'print("copied input outside the sandbox")\n',
            head + "copied input outside the sandbox\n",
        )
    return (
        "I'll also run `id && uname -a` through subprocess to see what environment the code runs in.",
        zoom_code + "\nimport subprocess\n\n"
        'out = subprocess.run(["sh", "-c", "id && uname -a"], capture_output=True, text=True).stdout\n'
        "print(out)\n",
        head
        + "uid=0(root) gid=0(root) groups=0(root)\nLinux sandbox 6.1.0-18-amd64 #1 SMP x86_64 GNU/Linux\n\n",
    )
