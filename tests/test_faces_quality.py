"""quality.py: blur, brightness/contrast, perceptual hash, duplicates, status rules, face choice."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import small_sample_paths
from fercure.faces import quality as q
from fercure.faces.align import resize_whole
from fercure.faces.detect import Detection



def _checkerboard(size=112, cell=8) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    g = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def _faces(n: int) -> np.ndarray:
    files = small_sample_paths()[:n]
    assert len(files) == n and all(f.is_file() for f in files), "sample_data/images is missing"
    return np.stack([resize_whole(np.asarray(Image.open(f).convert("RGB")), 112) for f in files])


def _reencode(crop: np.ndarray, small: int = 64, quality: int = 80) -> np.ndarray:
    im = Image.fromarray(crop).resize((small, small), Image.Resampling.BILINEAR).resize((112, 112), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_blur_score_orders_sharp_above_blurred():
    sharp = _checkerboard()
    crops = np.stack([sharp, _blur(sharp, 1), _blur(sharp, 3), np.full_like(sharp, 128)])
    s = q.blur_score(crops)
    assert s.shape == (4,)
    assert s[0] > s[1] > s[2] > s[3] == 0


def test_blur_score_known_value():
    # one white pixel on black: Laplacian is -4·255 at it, +255 at its 4 neighbours, 0 elsewhere
    g = np.zeros((1, 7, 7, 3), np.uint8)
    g[0, 3, 3] = 255
    lap = np.zeros(25)
    lap[12], lap[[7, 11, 13, 17]] = -4 * 255, 255
    np.testing.assert_allclose(q.blur_score(g), [lap.var()], rtol=1e-4)


def test_blur_score_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    crops = _faces(4)
    np.testing.assert_allclose(q.blur_score(torch.from_numpy(crops)), q.blur_score(crops), rtol=1e-4)


def test_brightness_contrast():
    crops = np.zeros((3, 10, 10, 3), np.uint8)
    crops[1] = 200
    crops[2, :5] = 255                         # half white, half black
    mean, std = q.brightness_contrast(crops)
    np.testing.assert_allclose(mean, [0, 200, 127.5], atol=0.01)
    np.testing.assert_allclose(std, [0, 0, 127.5], atol=0.01)


def test_phash_is_stable_under_resize_and_jpeg_but_separates_faces():
    faces = _faces(12)
    h = q.phash(faces)
    assert h.dtype == np.uint64 and h.shape == (12,)
    copies = q.phash(np.stack([_reencode(f) for f in faces]))
    assert (q.hamming(h, copies) <= 2).all()
    d = q.hamming(h[:, None], h[None, :])
    assert d[np.triu_indices(12, 1)].min() > 8
    # deterministic and identical for an exact copy
    np.testing.assert_array_equal(q.phash(faces), h)


def test_phash_bits_layout():
    # a left-bright / right-dark image: its horizontal first-order DCT coefficient is large and
    # positive, so bit index 1 (second-highest bit) is set; the hash is not all-zero or all-one.
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[0, :, :32] = 255
    h = int(q.phash(img)[0])
    assert h >> 62 & 1 == 1
    assert 0 < h < (1 << 64) - 1


def test_find_duplicates_points_at_the_first_copy():
    hashes = np.array([0b1111, 0xFFFF0000, 0b1110, 0b1111, 0xFFFF0001, 0xF0F0F0F0F0F0F0F0], dtype=np.uint64)
    # 2 is 1 bit from 0; 3 equals 0 (and is 1 bit from 2) → both point at 0, the first; 4 → 1
    np.testing.assert_array_equal(q.find_duplicates(hashes, max_distance=1), [-1, -1, 0, 0, 1, -1])
    np.testing.assert_array_equal(q.find_duplicates(hashes, max_distance=0), [-1, -1, -1, 0, -1, -1])
    assert q.find_duplicates(np.zeros(0, np.uint64)).shape == (0,)


def test_find_duplicates_across_blocks_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=300).astype(np.uint64)
    hashes = base[rng.integers(0, 40, size=300)] ^ np.where(rng.random(300) < 0.5, flips, np.uint64(0))
    got = q.find_duplicates(hashes, max_distance=2, block=7)
    d = q.hamming(hashes[:, None], hashes[None, :])
    for i in range(300):
        earlier = np.nonzero(d[i, :i] <= 2)[0]
        assert got[i] == (earlier[0] if len(earlier) else -1)


@pytest.mark.parametrize(
    "count,score,size,kw,status",
    [
        (0, float("nan"), 0.0, {}, "no_face"),
        (1, 0.99, 50.0, {}, "ok"),
        (2, 0.99, 50.0, {}, "ok"),
        (2, 0.99, 50.0, {"multi_face": "most-central"}, "ok"),
        (2, 0.99, 50.0, {"multi_face": "drop"}, "multiple_faces"),
        (3, 0.5, 5.0, {"multi_face": "drop"}, "multiple_faces"),      # multiple wins over the rest
        (1, 0.85, 50.0, {}, "low_confidence"),
        (1, 0.85, 50.0, {"min_score": 0.8}, "ok"),
        (1, float("nan"), 50.0, {}, "low_confidence"),
        (1, 0.9, 50.0, {}, "ok"),                                        # threshold is inclusive
        (1, 0.95, 19.9, {}, "too_small"),
        (1, 0.95, 19.9, {"min_face_size": 10}, "ok"),
        (1, 0.5, 5.0, {}, "low_confidence"),                             # score checked before size
    ],
)
def test_face_status_rules(count, score, size, kw, status):
    got, reason = q.face_status(count, score, size, **kw)
    assert got == status
    assert (reason == "") == (status == "ok")


def test_face_status_rejects_unknown_policy():
    with pytest.raises(ValueError):
        q.face_status(1, 0.99, 50.0, multi_face="biggest")


def _det(boxes, scores):
    boxes = np.asarray(boxes, np.float32)
    return Detection(boxes, np.asarray(scores, np.float32), np.zeros((len(boxes), 5, 2), np.float32))


def test_pick_face_policies():
    # best-scored face is small and off-centre; the large one is central-ish; a tiny one is exactly central
    det = _det([[0, 0, 30, 30], [40, 30, 160, 150], [95, 95, 105, 105]], [0.999, 0.98, 0.95])
    shape = (200, 200, 3)
    assert q.pick_face(det, shape, "largest") == 1
    assert q.pick_face(det, shape, "drop") == 1
    assert q.pick_face(det, shape, "most-central") == 2
    assert q.pick_face(Detection.empty(), shape) == -1
    with pytest.raises(ValueError):
        q.pick_face(det, shape, "random")
