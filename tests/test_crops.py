"""Faces as they were given (issue 17, part 1): pre-cropped faces are kept as given, alignment
fills past the border from the image (never black), and a face that fills its frame is found."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercure.cli import app
from fercure.faces import align
from fercure.faces.detect import FaceDetector, detect_with_padding, pad_for_detection
from fercure.stages import prepare as prep
from fercure.workspace import Workspace, read_table

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "sample_data" / "wild"
# A FER2013 crop whose face fills the frame: MTCNN finds nothing in it as it is.
FRAME_FILLING = "disgust/fer0004737.png"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _black_share(crops: np.ndarray) -> float:
    return float((crops.max(axis=-1) == 0).mean())


# --- align: pure functions ----------------------------------------------------------------


def test_outside_fraction_of_a_zoomed_out_template():
    size = 112
    lm = align.reference_landmarks(size)
    assert align.outside_fraction(lm, (size, size), size) == 0.0
    # A face twice the template's size about the centre: the crop spans twice the image's side,
    # 3/4 of it outside; half the size: all inside.
    big = (lm - size / 2) * 2 + size / 2
    assert align.outside_fraction(big, (size, size), size) == pytest.approx(0.75, abs=0.02)
    assert align.outside_fraction((lm - size / 2) * 0.5 + size / 2, (size, size), size) == 0.0


def test_align_fills_past_the_border_from_the_image_never_black():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 250, size=(48, 48, 3), dtype=np.uint8)   # no black pixel anywhere
    lm = align.reference_landmarks(48) * 1.3 - 48 * 0.15                # a face filling the frame
    assert align.outside_fraction(lm, image.shape, 64) > 0.3
    filled = align.align_face(image, lm, 64)
    assert _black_share(filled) == 0.0 and filled.min() >= 60
    # the pixels inside the image are the same warp as before
    black = align.align_face(image, lm, 64, fill="black")
    inside = black.max(axis=-1) > 0
    assert _black_share(black) == pytest.approx(align.outside_fraction(lm, image.shape, 64), abs=0.03)
    assert np.abs(filled[inside].astype(int) - black[inside].astype(int)).max() <= 1


def test_as_given_square_follows_the_face_in_a_wide_frame():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, :10] = 200                                   # the "face" at the left edge
    assert align.resize_whole(image, 40).max() == 0       # centred: the face is cut off
    left = align.resize_whole(image, 40, centre=(5.0, 20.0))
    assert (left[:, :10] == 200).all() and (left[:, 10:] == 0).all()
    right = align.resize_whole(image, 40, centre=(99.0, 20.0))  # clamped inside the image
    assert np.array_equal(right, image[:, 60:])
    # a square image is the same whatever the centre
    sq = np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)
    assert np.array_equal(align.resize_whole(sq, 48, centre=(3.0, 40.0)), sq)


def test_choose_crop_rules():
    assert align.choose_crop("auto", 0.0, 0.1) == "align"
    assert align.choose_crop("auto", align.MAX_OUTSIDE + 0.01, 0.1) == "as-given"
    assert align.choose_crop("auto", 0.0, align.FILLS_FRAME) == "as-given"
    assert align.choose_crop("align", 0.9, 1.0) == "align"
    assert align.choose_crop("as-given", 0.0, 0.0) == "as-given"
    with pytest.raises(ValueError):
        align.choose_crop("zoom", 0.0, 0.0)
    assert align.box_coverage([-10, -10, 60, 60], (48, 48)) == 1.0
    assert align.box_coverage([0, 0, 24, 24], (48, 48)) == 0.25


# --- detection with a border --------------------------------------------------------------


def test_a_face_filling_its_frame_is_found_with_a_border(sample_data: Path):
    image = _rgb(sample_data / "images" / FRAME_FILLING)
    det = FaceDetector(device="cpu")
    assert len(det.detect([image])[0]) == 0                 # missed as given
    padded, pad = pad_for_detection(image)
    assert padded.shape == (48 + 2 * pad, 48 + 2 * pad, 3) and pad == 12
    assert np.array_equal(padded[pad:-pad, pad:-pad], image)
    (found,), hit = detect_with_padding(det, [image])
    assert hit.tolist() == [True] and len(found) >= 1 and found.scores[0] >= 0.9
    # landmarks back in the image's own coordinates: the eyes lie inside the 48×48 frame
    eyes = found.landmarks[0, :2]
    assert ((eyes >= 0) & (eyes < 48)).all()


def test_images_without_a_face_stay_without_one():
    det = FaceDetector(device="cpu")
    images = [_rgb(WILD / f"{n}.png") for n in ("coffee", "chelsea", "astronaut")]
    dets, hit = detect_with_padding(det, images)
    assert [len(d) for d in dets[:2]] == [0, 0] and len(dets[2]) == 1 and not hit.any()


# --- prepare ------------------------------------------------------------------------------


@pytest.fixture()
def fer_input(tmp_path: Path, sample_data: Path) -> Path:
    """The small FER sample (12 per class) plus the two wild non-faces."""
    root = tmp_path / "data"
    shutil.copytree(sample_data / "images", root)
    (root / "neutral").mkdir(exist_ok=True)
    for name in ("coffee", "chelsea"):
        shutil.copyfile(WILD / f"{name}.png", root / "neutral" / f"wild_{name}.png")
    return root


def test_prepared_fer_crops_are_kept_as_given_without_black_fill(fer_input: Path, tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    prep.run_prepare(fer_input, ws, device="cpu", image_size=48)
    m = read_table(ws.manifest)
    crops = np.load(ws.store)
    has = m["store_index"] >= 0
    # FER crops: black fill ≤ 2 % of crop pixels (fercure 0.2 aligned them into ~35 % black)
    assert _black_share(crops) <= 0.02
    assert (m.loc[has, "crop_fill"] <= align.MAX_OUTSIDE + 1e-9).all()
    assert set(m.loc[has, "crop_mode"]) <= {"align", "as-given"} and (m.loc[~has, "crop_mode"] == "").all()
    assert (m.loc[has, "crop_mode"] == "as-given").mean() > 0.9
    # the frame-filling face is a face: found, ok, and its crop is the image as given
    row = m[m["source_path"] == FRAME_FILLING].iloc[0]
    assert row["face_status"] == "ok" and row["crop_mode"] == "as-given" and row["face_count"] >= 1
    assert np.array_equal(crops[row["store_index"]], align.resize_whole(_rgb(fer_input / FRAME_FILLING), 48))
    # real non-faces stay no_face
    wild = m[m["source_path"].str.startswith("neutral/wild_")]
    assert len(wild) == 2 and (wild["face_status"] == "no_face").all()
    # the border retry finds 9 of the 17 FER crops MTCNN missed as given (2 rows are the wild ones)
    assert (m["face_status"] == "no_face").sum() - 2 <= 10


def test_forced_crop_modes_and_the_manifest_column(fer_input: Path, tmp_path: Path):
    for mode in ("align", "as-given"):
        ws = Workspace(tmp_path / mode)
        res = CliRunner().invoke(app, ["prepare", str(fer_input), "-w", str(ws.root), "--device", "cpu",
                                       "--image-size", "32", "--crop", mode])
        assert res.exit_code == 0, res.output
        m = read_table(ws.manifest)
        found = m["face_count"] > 0
        assert (m.loc[found, "crop_mode"] == mode).all()
        assert (m.loc[~found & (m["store_index"] >= 0), "crop_mode"] == "as-given").all()  # no face: whole image
        crops = np.load(ws.store)
        if mode == "align":
            # FER faces aligned zoom out past the border: filled from the image, not black
            assert (m.loc[found, "crop_fill"] > 0.25).mean() > 0.3
            assert _black_share(crops) <= 0.02
        else:
            assert (m.loc[found, "crop_fill"] == 0).all()
    res = CliRunner().invoke(app, ["prepare", str(fer_input), "-w", str(tmp_path / "x"), "--crop", "zoom"])
    assert res.exit_code == 2
