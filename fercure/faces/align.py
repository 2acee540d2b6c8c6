"""Five-point similarity alignment of faces (pure numpy + PIL, no file I/O).

Coordinates are pixel-index coordinates (the centre of pixel (col=i, row=j) is (i, j)), the
convention of MTCNN's landmarks and of the ArcFace template; the PIL warp below converts to PIL's
pixel-corner convention so a landmark lands exactly on its template point.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = [
    "ARCFACE_112", "CROP_MODES", "MAX_OUTSIDE", "FILLS_FRAME", "reference_landmarks", "umeyama",
    "alignment", "outside_fraction", "box_coverage", "choose_crop", "align_face", "resize_whole",
]

CROP_MODES = ("auto", "align", "as-given")
MAX_OUTSIDE = 0.05
"""auto keeps a face as given when aligning it would take more than this share of the crop from
outside the image (a pre-cropped face, zoomed out past its border by the template)."""
FILLS_FRAME = 0.4
"""auto keeps a face as given when its box (clipped to the image) covers at least this share of
the frame: the image is a face crop already."""

# ArcFace / InsightFace 112×112 template (left eye, right eye, nose tip, mouth left, mouth right),
# the de-facto standard for 5-point alignment: eyes at ~46% of the height, mouth at ~82%.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def reference_landmarks(size: int = 112) -> np.ndarray:
    """(5,2) float64 canonical landmark positions for a size×size crop: the ArcFace 112 template
    scaled by size/112 (so the face fills the same fraction of the crop at every size)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return ARCFACE_112 * (size / 112.0)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping src → dst.

    Umeyama (1991) specialised to 2-D, where it has a closed form: writing cR = [[a, −b], [b, a]],
    the residual is linear in (a, b, t), so a = Σ s·d / Σ|s|², b = Σ s×d / Σ|s|² on centred points.
    The parametrisation only contains proper rotations, so reflections are excluded by design.
    With ``estimate_scale=False`` the rotation is the angle of (a, b) and the scale is 1.

    Returns the (2,3) matrix M with dst ≈ M[:, :2] @ src + M[:, 2].
    Raises ValueError for mismatched shapes, fewer than 2 points, non-finite values, or when all
    source points coincide (no rotation or scale is determined).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both be (N,2); got {src.shape} and {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError("need at least 2 point pairs")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or inf")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    ss = float((s**2).sum())
    if ss <= 1e-12 * max(1.0, float(np.abs(src).max()) ** 2):
        raise ValueError("source points are degenerate (all at the same position)")
    a = float((s * d).sum())
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum())
    if estimate_scale:
        a, b = a / ss, b / ss
    else:
        norm = np.hypot(a, b)
        a, b = (a / norm, b / norm) if norm > 0 else (1.0, 0.0)
    lin = np.array([[a, -b], [b, a]])
    return np.concatenate([lin, (mu_d - lin @ mu_s)[:, None]], axis=1)


def alignment(landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop → image map of the 5-point alignment: (inv (2,2), inv_t (2,)) with
    source = inv @ crop_xy + inv_t, both in pixel-index coordinates."""
    m = umeyama(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), reference_landmarks(size))
    lin, t = m[:, :2], m[:, 2]
    if abs(np.linalg.det(lin)) < 1e-12:
        raise ValueError("landmarks are degenerate (zero scale)")
    inv = np.linalg.inv(lin)
    return inv, -inv @ t


def _source_points(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(size², 2) source coordinates of every crop pixel centre."""
    inv, inv_t = alignment(landmarks, size)
    j, i = np.mgrid[0:size, 0:size]
    xy = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64)
    return xy @ inv.T + inv_t


def outside_fraction(landmarks: np.ndarray, image_shape, size: int = 112) -> float:
    """Share of the aligned crop's pixels whose source point lies outside the image (what the warp
    must invent: black in fercure ≤ 0.2, replicated border now). A pixel is inside when its centre
    maps within half a pixel of the outermost pixel centres, as bilinear sampling reads it."""
    h, w = image_shape[:2]
    src = _source_points(landmarks, size)
    inside = ((src[:, 0] >= -0.5) & (src[:, 0] <= w - 0.5) & (src[:, 1] >= -0.5) & (src[:, 1] <= h - 0.5))
    return float(1.0 - inside.mean())


def box_coverage(box, image_shape) -> float:
    """Share of the frame the face box covers, the box clipped to the image."""
    h, w = image_shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw = max(0.0, min(x2, w) - max(x1, 0.0))
    bh = max(0.0, min(y2, h) - max(y1, 0.0))
    return bw * bh / float(h * w) if h * w else 0.0


def choose_crop(mode: str, outside: float, coverage: float) -> str:
    """"align" or "as-given" for one detected face. ``auto`` keeps the face as given when the image
    is already a face crop (``coverage`` ≥ FILLS_FRAME) or when aligning would invent more than
    MAX_OUTSIDE of the crop; otherwise it aligns. The forced modes return themselves."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "as-given" if coverage >= FILLS_FRAME or outside > MAX_OUTSIDE else "align"


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    return image


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, fill: str = "edge") -> np.ndarray:
    """Warp ``image`` so its 5 landmarks land on ``reference_landmarks(size)``; (size,size,3) uint8.

    The similarity is fitted source → template, then inverted, and each output pixel samples the
    source bilinearly (PIL AFFINE takes the output → input map). Where the crop reaches past the
    image, ``fill="edge"`` replicates the border pixels (the image is padded by as much as the crop
    needs); ``fill="black"`` leaves black there (fercure ≤ 0.2, kept for the benchmark's baseline).
    """
    if fill not in ("edge", "black"):
        raise ValueError(f"fill must be 'edge' or 'black', got {fill!r}")
    image = _to_rgb(image)
    inv, inv_t = alignment(landmarks, size)
    if fill == "edge":
        h, w = image.shape[:2]
        src = _source_points(landmarks, size)
        # Margin covering every sample (+2 for the bilinear neighbours), capped so a wild
        # transform cannot ask for a huge array; beyond the cap PIL's black would show.
        over = max(0.0, -src[:, 0].min(), -src[:, 1].min(), src[:, 0].max() - (w - 1), src[:, 1].max() - (h - 1))
        pad = int(min(np.ceil(over) + 2, 2 * max(h, w))) if over > 0 else 0
        if pad:
            image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            inv_t = inv_t + pad
    # PIL evaluates the map at pixel centres (x+0.5, y+0.5) and samples at corner coordinates;
    # shift by 0.5 on both sides so the map holds in pixel-index coordinates.
    c = inv_t + 0.5 - inv @ np.array([0.5, 0.5])
    data = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
    out = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, data,
                                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def resize_whole(image: np.ndarray, size: int = 112, centre: tuple[float, float] | None = None) -> np.ndarray:
    """Whole image → (size,size,3) uint8: crop to a square of the shorter side, then resize.

    The "as given" crop: a pre-cropped face, or an image without a face kept whole (FER-style tight
    crops are already face-centred, and cropping keeps the subject as large as it was instead of
    shrinking it with padding). The square is centred on the image, or as near ``centre`` (x, y,
    e.g. the face box's centre) as the image allows, so a face off-centre in a wide frame stays in.
    PIL's resize antialiases when shrinking.
    """
    image = _to_rgb(image)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    if centre is not None:
        cx, cy = (float(v) for v in centre)
        x0 = int(np.clip(round(cx - side / 2), 0, w - side))
        y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    square = image[y0:y0 + side, x0:x0 + side]
    if side == size:
        return np.ascontiguousarray(square)
    out = Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)
