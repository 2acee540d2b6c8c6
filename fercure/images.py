"""Decode one image file into an upright HxWx3 uint8 RGB array, or say why it cannot be.

``load_rgb`` never raises for a bad file: scraped and crowd-sourced datasets are full of zero-byte
files, HTML error pages saved as ``.jpg``, truncated downloads and odd colour modes, and one bad image
must not abort a run (it becomes ``face_status = "unreadable"`` with ``reason``).

Decisions worth knowing:

* Pixel limit: ``MAX_PIXELS`` = 64 MP. The size is read from the header (``Image.open`` parses only
  the header) and checked *before* any pixel buffer is allocated; PIL's own
  ``DecompressionBombError``/``Warning`` is reported the same way.
* Transparency (RGBA, LA, PA, palette with a transparent index): composited on white. Dropping the
  alpha channel would show whatever colour happens to sit under transparent pixels (often black or
  garbage); a face cut out onto white looks like a normal photo to the detector.
* 16-bit greyscale (``I;16*``): scaled to 8 bit with rounding, ``round(v * 255 / 65535)``. 32-bit
  integer ``I`` images are treated as 16-bit data (clipped to 0..65535) unless every value already
  fits in 0..255. Float ``F`` images: values in 0..1 are scaled by 255, otherwise clipped to 0..255.
* CMYK, YCbCr, LAB, HSV, 1-bit and the rest: Pillow's ``convert("RGB")`` (no ICC colour management).
* Animated GIF/WebP/PNG and multi-page TIFF: the first frame.
* EXIF orientation is applied (as ``ImageOps.exif_transpose`` does); a broken EXIF block is ignored rather
  than making the image unreadable.
* ``max_side``: the image is shrunk (antialiased) so its longer side is at most this, and a JPEG is
  decoded at a reduced size by libjpeg itself (``Image.draft``: 1/2, 1/4 or 1/8), so the full-size
  buffer never exists. ``Decoded.width``/``height`` stay the file's upright size; ``scale_x``/
  ``scale_y`` map returned pixels to it.
* PIL warnings: decoding runs with the caller's warning filters (no global state is touched, so
  threads decode in parallel). If a filter turns a PIL warning into an exception (``-W error``),
  the file is decoded again with warnings ignored, under a lock because ``warnings.catch_warnings``
  mutates process-wide state.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS: int = 64_000_000
"""Largest width*height that load_rgb decodes (64 MP). Faces are 48-224 px; a larger image is
almost certainly a decompression bomb or a mistake, and decoding it would cost gigabytes."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

_WARN_LOCK = threading.Lock()

# Leading bytes of the formats we accept, so a file that starts like a PNG but cannot be parsed is
# reported as a corrupt PNG rather than as "not an image".
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass
class Decoded:
    """Result of ``load_rgb``. ``image`` is None and ``width``/``height`` are 0 when unreadable."""

    image: np.ndarray | None
    status: str  # "ok" | "unreadable"
    reason: str  # "" when ok, else short human text
    width: int
    height: int
    scale_x: float = 1.0  # returned image's columns per column of the file (< 1 when shrunk)
    scale_y: float = 1.0


def _unreadable(reason: str) -> Decoded:
    return Decoded(image=None, status="unreadable", reason=reason, width=0, height=0)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:g} MP"


def _sniff_format(head: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _header_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG/GIF/BMP header, for messages only."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    return None


def _pil_bomb_pixels(message: str) -> str:
    m = re.search(r"\((\d+) pixels\)", message)
    return f"{int(m.group(1)) / 1e6:g} MP" if m else "image size"


def _describe_non_image(head: bytes) -> str:
    """Short guess at what a non-image file is; scraped datasets often hold HTML error pages."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image: an HTML page (a failed download?)"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "not an image: SVG vector graphics are not supported"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        return "not an image: HEIC/AVIF is not supported; convert it to JPEG or PNG"
    if head and all(b in b"\t\n\r" or 32 <= b < 127 for b in head[:512]):
        return "not an image: a text file"
    return "not an image"


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8 RGB (see the module docstring for the choices)."""
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        g = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 255):
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        g = np.clip(a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        if mode == "La":  # premultiplied; Pillow converts La only via LA
            im = im.convert("LA")
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:4]
        # Composite on white: c*a + 255*(1-a), rounded.
        out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    if mode != "RGB":
        im = im.convert("RGB")
    # np.array (not asarray) so the caller owns a writable buffer independent of Pillow's.
    return np.array(im, dtype=np.uint8, copy=True)


def _draft_jpeg(im: Image.Image, max_side: int | None) -> None:
    """Let libjpeg decode at 1/2..1/8 scale, never below ``max_side`` on the longer side (the
    resize below does the rest, antialiased). Saves the full-size buffer and most of the decode."""
    if max_side is None or im.format != "JPEG":
        return
    w, h = im.size
    f = max_side / max(w, h)
    if f < 1:
        im.draft(im.mode, (max(1, int(w * f + 0.999)), max(1, int(h * f + 0.999))))


def shrink(arr: np.ndarray, max_side: int | None) -> np.ndarray:
    """``arr`` resized (antialiased, aspect kept) so its longer side is at most ``max_side``."""
    h, w = arr.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return arr
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}  # what ImageOps.exif_transpose does for each EXIF orientation
_SWAPS_SIDES = {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """The transpose that stands the image upright; None when upright or the EXIF is broken (the
    pixels are kept as stored rather than losing the image)."""
    try:
        return _TRANSPOSE.get(im.getexif().get(0x0112, 1))
    except Warning:
        raise
    except Exception:
        return None


def _shrink_image(im: Image.Image, max_side: int | None) -> Image.Image:
    """Shrink in Pillow, before any conversion, the modes whose resize is what shrinking the RGB
    array would give (8-bit grey/RGB, alpha premultiplied by Pillow): no full-size copy is made."""
    w, h = im.size
    if max_side is None or max(w, h) <= max_side:
        return im
    if im.mode not in ("RGB", "L", "RGBA", "LA") or "transparency" in im.info:
        return im
    f = max_side / max(w, h)
    return im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)


def _open_regular(path: Path):
    """The file opened for reading, or an unreadable Decoded saying why (missing, a folder, a FIFO
    or device, empty, no permission)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _unreadable("file not found (or a broken symbolic link)")
    except PermissionError:
        return _unreadable("permission denied")
    except OSError as e:
        return _unreadable(f"cannot stat file: {e.strerror or e}")
    if stat.S_ISDIR(st.st_mode):
        return _unreadable("is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO would block forever; devices and sockets are not images either.
        return _unreadable("not a regular file")
    if st.st_size == 0:
        return _unreadable("zero-byte file")
    try:
        return open(path, "rb")
    except PermissionError:
        return _unreadable("permission denied")
    except IsADirectoryError:
        return _unreadable("is a directory, not a file")
    except OSError as e:
        if e.errno == errno.EACCES:
            return _unreadable("permission denied")
        return _unreadable(f"cannot open file: {e.strerror or e}")


def _decode(path: Path, max_pixels: int, max_side: int | None = None) -> Decoded:
    """Decode with the caller's warning filters. Re-raises ``Warning`` subclasses that a filter
    escalated to exceptions, so ``load_rgb`` can retry with warnings ignored."""
    f = _open_regular(path)
    if isinstance(f, Decoded):
        return f
    with f:
        try:
            head = f.read(4096)
            f.seek(0)
        except OSError as e:
            return _unreadable(f"cannot read file: {e.strerror or e}")
        fmt_guess = _sniff_format(head)
        fmt = fmt_guess or "image"
        try:
            try:
                im = Image.open(f)
            except Image.UnidentifiedImageError:
                if fmt_guess:
                    return _unreadable(f"truncated or corrupt {fmt_guess}: header cannot be parsed")
                return _unreadable(_describe_non_image(head))
            fmt = im.format or fmt
            w, h = im.size
            if w <= 0 or h <= 0:
                return _unreadable(f"truncated or corrupt {fmt}: invalid size {w}x{h}")
            if w * h > max_pixels:
                # Checked from the header, before load(): nothing has been allocated yet.
                return _unreadable(
                    f"decompression bomb: {w}x{h} exceeds {_megapixels(max_pixels)}"
                )
            im.seek(0)  # first frame of animations / multi-page files
            _draft_jpeg(im, max_side)
            im.load()
            turn = _orientation(im)
            im = _shrink_image(im, max_side)  # before transposing: the transpose copies
            if turn is not None:
                im = im.transpose(turn)
            arr = shrink(_to_rgb(im), max_side)  # other modes: shrunk once converted
            full_w, full_h = (h, w) if turn in _SWAPS_SIDES else (w, h)
        except Warning:
            raise  # an escalated warning: load_rgb retries with warnings ignored
        except Image.DecompressionBombError as e:
            # PIL refused it in Image.open (over twice its own limit) before we saw the size.
            size = _header_size(head)
            what = f"{size[0]}x{size[1]}" if size else _pil_bomb_pixels(str(e))
            return _unreadable(f"decompression bomb: {what} exceeds {_megapixels(max_pixels)}")
        except MemoryError:
            return _unreadable(f"out of memory decoding {fmt}")
        except ValueError as e:
            if "mode" in str(e) or "conversion" in str(e):
                return _unreadable(f"unsupported colour mode: {e}")
            return _unreadable(f"truncated or corrupt {fmt}: {e}")
        except Exception as e:  # Pillow raises OSError, SyntaxError, EOFError, struct.error, ...
            msg = str(e) or type(e).__name__
            return _unreadable(f"truncated or corrupt {fmt}: {msg}")
    h, w = arr.shape[:2]
    return Decoded(image=arr, status="ok", reason="", width=int(full_w), height=int(full_h),
                   scale_x=w / full_w, scale_y=h / full_h)


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, nothing decoded; None when it cannot be read (the
    decoding step says why). Never opens a FIFO or device (``_open_regular``)."""
    f = _open_regular(path)
    if isinstance(f, Decoded):
        return None
    with f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w, h = Image.open(f).size
        except Exception:  # any header Pillow cannot parse
            return None
    return (int(w), int(h)) if w > 0 and h > 0 else None


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Decoded:
    """Decode ``path`` to an upright HxWx3 uint8 RGB array (first frame, EXIF orientation applied).

    Never raises for a bad file: returns ``Decoded(status="unreadable", reason=...)`` instead.
    Images with more than ``max_pixels`` pixels are refused from their header, without decoding.
    ``max_side``: shrink to at most this longer side (JPEGs partly inside the decoder).
    """
    path = Path(path)
    try:
        return _decode(path, max_pixels, max_side)
    except Warning:
        # The caller's filters escalate warnings (e.g. pytest -W error). Decode again with PIL's
        # warnings ignored; the lock keeps concurrent catch_warnings blocks from corrupting the
        # process-wide filter list.
        pass
    except Exception as e:  # defensive (e.g. a NUL in the path): a bad file never aborts a run
        return _unreadable(f"cannot decode: {e}")
    with _WARN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _decode(path, max_pixels, max_side)
        except Exception as e:  # defensive: a bad file must never abort a run
            return _unreadable(f"cannot decode: {e}")
