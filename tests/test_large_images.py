"""Large images: the detector sees at most DETECT_MAX_SIDE, a chunk holds a bounded window of
decoded images, and boxes land in the file's pixels (issue 12)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fercure.images as images
from fercure.faces.detect import Detection
from fercure.prepare import facepass
from fercure.stages import prepare as prep
from fercure.workspace import Workspace, read_table


def _solid(path: Path, size: tuple[int, int], colour=(180, 120, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _record_detect(monkeypatch, fake: bool) -> list[tuple[int, ...]]:
    """Record the shape of every image handed to the detector; ``fake``: answer with one face box
    at (400,200)-(800,600) in the detector's pixels instead of running MTCNN."""
    shapes: list[tuple[int, ...]] = []
    real = facepass.FaceDetector.detect

    def detect(self, imgs):
        shapes.extend(np.asarray(im).shape for im in imgs)
        if not fake:
            return real(self, imgs)
        lm = np.array([[[520, 350], [680, 350], [600, 420], [540, 500], [660, 500]]], np.float32)
        return [Detection(np.array([[400, 200, 800, 600]], np.float32), np.array([0.99], np.float32), lm)
                for _ in imgs]

    monkeypatch.setattr(facepass.FaceDetector, "detect", detect)
    return shapes


def test_detector_sees_a_bounded_image_and_the_crop_is_the_usual_size(tmp_path: Path, monkeypatch):
    root = tmp_path / "in"
    _solid(root / "a" / "big.png", (6000, 4000))
    Image.new("RGB", (6000, 4000), (90, 160, 60)).save(root / "a" / "big.jpg", quality=85)
    _solid(root / "b" / "small.png", (120, 90))
    shapes = _record_detect(monkeypatch, fake=False)
    prep.run_prepare(root, tmp_path / "ws", device="cpu", image_size=32)
    # 3 looks, plus the border retry of the small image, which shows no face; the large ones are
    # not retried (a padded copy would break the size bound)
    assert len(shapes) == 4
    assert sorted(s[:2] for s in shapes)[:2] == [(90, 120), (150, 180)]
    assert max(max(s[:2]) for s in shapes) <= facepass.DETECT_MAX_SIDE
    assert sorted(s[:2] for s in shapes)[-1] == (1067, 1600)
    manifest = read_table(Workspace(tmp_path / "ws").manifest).set_index("source_path")
    # the manifest keeps the file's size; every image got a 32 px crop (whole image, no face)
    assert manifest.loc["a/big.png", ["width", "height"]].tolist() == [6000, 4000]
    assert manifest.loc["a/big.jpg", ["width", "height"]].tolist() == [6000, 4000]
    crops = np.load(Workspace(tmp_path / "ws").store)
    assert crops.shape == (3, 32, 32, 3)
    big = crops[manifest.loc["a/big.jpg", "store_index"]].astype(int)
    assert np.abs(big - [90, 160, 60]).max() <= 3


def test_boxes_are_mapped_back_to_the_file_and_the_crop_comes_from_the_detection_image(
        tmp_path: Path, monkeypatch):
    root = tmp_path / "in"
    _solid(root / "a" / "big.png", (6000, 4000))
    _solid(root / "b" / "small.png", (1200, 800))  # not shrunk: detector pixels are file pixels
    _record_detect(monkeypatch, fake=True)
    prep.run_prepare(root, tmp_path / "ws", device="cpu", image_size=48, min_score=0.5)
    manifest = read_table(Workspace(tmp_path / "ws").manifest).set_index("source_path")
    sx, sy = 1600 / 6000, 1067 / 4000
    np.testing.assert_allclose(manifest.loc["a/big.png", "bbox"], [400 / sx, 200 / sy, 800 / sx, 600 / sy], rtol=1e-5)
    np.testing.assert_allclose(manifest.loc["a/big.png", "landmarks"][:2], [520 / sx, 350 / sy], rtol=1e-5)
    assert abs(manifest.loc["a/big.png", "face_size"] - min(400 / sx, 400 / sy)) < 1e-2
    np.testing.assert_allclose(manifest.loc["b/small.png", "bbox"], [400, 200, 800, 600])
    assert (manifest["detection_status"] == "ok").all()  # (same colour: one is a duplicate)
    crops = np.load(Workspace(tmp_path / "ws").store)
    assert crops.shape == (2, 48, 48, 3)


def _track_live(monkeypatch, target, name: str, counts: dict, key: str, wanted, argument=False) -> None:
    """Wrap ``target.name`` so the images it returns (``argument``: it is given) that satisfy
    ``wanted`` are counted while alive; counts[key + '_max'] is the most alive at once."""
    real = getattr(target, name)
    lock = threading.Lock()

    def gone() -> None:
        with lock:
            counts[key] -= 1

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        arr = args[0] if argument else getattr(result, "image", result)
        if arr is not None and wanted(arr):
            with lock:
                counts[key] += 1
                counts[key + "_max"] = max(counts[key + "_max"], counts[key])
            weakref.finalize(arr, gone)
        return result

    monkeypatch.setattr(target, name, wrapper)


def test_a_chunk_of_large_images_is_decoded_in_a_bounded_window(tmp_path: Path, monkeypatch):
    root = tmp_path / "in"
    for i in range(10):
        _solid(root / ("a" if i % 2 else "b") / f"img{i}.png", (3000, 2000), (20 * i, 100, 50))
    one = 1600 * 1067 * 3
    monkeypatch.setattr(facepass, "DECODE_BUDGET", 2 * one)  # a window of 2 detection-size images
    counts = {"full": 0, "full_max": 0, "small": 0, "small_max": 0}
    # full-size images are what Pillow decoded, handed to _shrink_image; the window's are what
    # load_rgb returns
    _track_live(monkeypatch, images, "_shrink_image", counts, "full", lambda im: max(im.size) > 1600,
                argument=True)
    _track_live(monkeypatch, facepass, "load_rgb", counts, "small", lambda a: max(a.shape[:2]) <= 1600)
    batches = []
    monkeypatch.setattr(facepass.FaceDetector, "detect",
                        lambda self, imgs: batches.append(len(imgs)) or [Detection.empty() for _ in imgs])
    summary = prep.run_prepare(root, tmp_path / "ws", device="cpu", image_size=32, workers=2)
    assert summary.n_with_crop == 10
    assert counts["full_max"] >= 1 and counts["small_max"] >= 2      # the tracking saw them
    assert counts["full_max"] <= 2                                   # one per decoding thread
    assert counts["small_max"] <= 2                                  # the window, not the chunk of 10
    assert batches == [2] * 5


def test_a_jpeg_is_reduced_inside_the_decoder(tmp_path: Path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(path, quality=85)
    seen = []
    real = images._shrink_image
    monkeypatch.setattr(images, "_shrink_image", lambda im, side: seen.append(im.size) or real(im, side))
    d = images.load_rgb(path, max_side=1600)
    # draft picks libjpeg's 1/2 scale (1/4 would be under 1600): no 6000×4000 buffer is made
    assert seen == [(3000, 2000)]
    assert d.image.shape == (1067, 1600, 3) and (d.width, d.height) == (6000, 4000)
    assert abs(d.scale_x - 1600 / 6000) < 1e-9 and abs(d.scale_y - 1067 / 4000) < 1e-9


def test_a_rotated_jpeg_keeps_its_upright_size(tmp_path: Path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to stand upright: 4000 wide, 6000 high
    Image.new("RGB", (6000, 4000), (200, 200, 200)).save(path, exif=exif.tobytes())
    d = images.load_rgb(path, max_side=1600)
    assert d.image.shape == (1600, 1067, 3)
    assert (d.width, d.height) == (4000, 6000)
    small = images.load_rgb(path)  # without max_side: the full upright image, as before
    assert small.image.shape == (6000, 4000, 3) and small.scale_x == 1.0


def _palette_with_transparency(size):
    im = Image.new("P", size, 1)
    im.putpalette([0, 0, 0, 40, 80, 120] + [0] * 762)
    im.info["transparency"] = 0
    return im


@pytest.mark.parametrize("make, expected", [
    (lambda s: Image.new("RGBA", s, (200, 0, 0, 128)), (227, 127, 127)),   # composited on white
    (lambda s: Image.new("LA", s, (100, 255)), (100, 100, 100)),
    (lambda s: Image.new("L", s, 77), (77, 77, 77)),
    (lambda s: Image.new("I;16", s, 40000), (156, 156, 156)),              # converted, then shrunk
    (_palette_with_transparency, (40, 80, 120)),
])
def test_every_mode_is_shrunk_to_the_same_colours(tmp_path: Path, make, expected):
    path = tmp_path / "big.png"
    make((3200, 2000)).save(path)
    d = images.load_rgb(path, max_side=1600)
    assert d.image.shape == (1000, 1600, 3) and (d.width, d.height) == (3200, 2000)
    assert np.abs(d.image[500, 800].astype(int) - expected).max() <= 1
    assert np.array_equal(d.image[500, 800], images.load_rgb(path).image[500, 800])
