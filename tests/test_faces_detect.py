"""detect.py: the batched MTCNN on real images with the bundled weights (no mocks)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import small_sample_paths
from fercure.faces.detect import Detection, FaceDetector, _nms_min, facenet_detect

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "sample_data" / "wild"


def _load(name: str) -> np.ndarray:
    return np.asarray(Image.open(WILD / name).convert("RGB"))


def _fer(n: int, border: int = 48) -> list[np.ndarray]:
    """FER 48×48 crops upscaled to 160 px with a border: the benchmark's input shape."""
    out = []
    for f in small_sample_paths()[:n]:
        g = np.asarray(Image.open(f).convert("L").resize((160, 160), Image.Resampling.BILINEAR))
        out.append(np.repeat(np.pad(g, border, mode="edge")[:, :, None], 3, axis=2))
    return out


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def wild() -> dict[str, np.ndarray]:
    return {n: _load(f"{n}.png") for n in ("astronaut", "chelsea", "coffee")}


def _check_shapes(d: Detection):
    n = len(d.scores)
    assert d.boxes.shape == (n, 4) and d.boxes.dtype == np.float32
    assert d.scores.shape == (n,) and d.scores.dtype == np.float32
    assert d.landmarks.shape == (n, 5, 2) and d.landmarks.dtype == np.float32
    assert (np.diff(d.scores) <= 0).all()


def test_astronaut_one_face_cat_and_coffee_none(detector, wild):
    dets = detector.detect([wild["astronaut"], wild["chelsea"], wild["coffee"]])
    assert [len(d.scores) for d in dets] == [1, 0, 0]
    for d in dets:
        _check_shapes(d)
    d = dets[0]
    h, w = wild["astronaut"].shape[:2]
    x1, y1, x2, y2 = d.boxes[0] / [w, h, w, h]
    # Eileen Collins' face: upper middle of the picture, about a fifth of its width
    assert 0.30 < x1 < 0.40 and 0.08 < y1 < 0.16 and 0.48 < x2 < 0.58 and 0.30 < y2 < 0.40
    assert d.scores[0] > 0.99
    lm = d.landmarks[0]
    assert (lm[:, 0] > d.boxes[0, 0]).all() and (lm[:, 0] < d.boxes[0, 2]).all()
    assert (lm[:, 1] > d.boxes[0, 1]).all() and (lm[:, 1] < d.boxes[0, 3]).all()
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]          # left before right
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()         # eyes above nose above mouth


def test_matches_facenet_reference(detector, wild):
    """Same boxes, scores and landmarks as facenet-pytorch's own MTCNN.detect."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device="cpu", select_largest=False)
    groups = [[wild["astronaut"]], [wild["chelsea"]], [wild["coffee"]], _fer(12)]
    for images in groups:
        ref = facenet_detect(mtcnn, images)
        got = detector.detect(images)
        assert [len(d) for d in got] == [len(d) for d in ref]
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)
    # FER-style faces are mostly found (guards against both pipelines silently finding nothing)
    assert np.mean([len(d) > 0 for d in got]) > 0.7


def test_mixed_sizes_keep_input_order_and_batching_does_not_matter(wild):
    images = [wild["coffee"], wild["astronaut"], *_fer(5), wild["chelsea"], wild["astronaut"][:, ::-1]]
    one = FaceDetector(batch_size=1).detect(images)
    many = FaceDetector(batch_size=64).detect(images)
    assert len(one) == len(images) == len(many)
    assert len(one[0]) == 0 and len(one[1]) == 1 and len(one[7]) == 0 and len(one[8]) == 1
    # the mirrored astronaut is found where the mirror puts her
    w = images[1].shape[1]
    np.testing.assert_allclose(one[8].boxes[0, [0, 2]], w - one[1].boxes[0, [2, 0]], atol=8)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_two_faces_sorted_by_score_and_odd_inputs(detector, wild):
    a = wild["astronaut"]
    pair = np.concatenate([a, a[:, ::-1]], axis=1)
    d = detector.detect([pair])[0]
    _check_shapes(d)
    assert len(d) == 2
    centres = (d.boxes[:, 0] + d.boxes[:, 2]) / 2
    assert sorted(centres < a.shape[1]) == [False, True]              # one face in each half
    grey = np.asarray(Image.fromarray(a).convert("L"))                # HxW is accepted
    assert len(detector.detect([grey])[0]) == 1
    assert detector.detect([]) == []
    odd = [np.zeros((30, 30, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)]
    assert [len(x) for x in detector.detect(odd)] == [0, 0, 0]        # blank / tiny / empty: no crash


def test_nms_min_is_greedy_per_image():
    import torch

    # three nested boxes in image 0 (each inside the previous → IoM 1), one far box, and a copy
    # of the first box in image 1 which must survive (different image)
    boxes = torch.tensor([[0, 0, 100, 100], [10, 10, 50, 50], [20, 20, 30, 30],
                          [200, 200, 260, 260], [0, 0, 100, 100]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.9, 0.95, 0.7, 0.5])
    idx = torch.tensor([0, 0, 0, 0, 1])
    keep = _nms_min(boxes, scores, idx, 0.7).tolist()
    assert keep == [2, 3, 4]
    # chain: 0 suppresses 1, so 1 no longer suppresses 2 (greedy, not "any overlap")
    boxes = torch.tensor([[0, 0, 10, 10], [0, 5, 10, 15], [0, 10, 10, 20]], dtype=torch.float32)
    keep = _nms_min(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.4).tolist()
    assert keep == [0, 2]


@pytest.mark.parametrize("style", ["channels_last", "gpu_style"])
def test_other_execution_paths_give_the_same_faces(monkeypatch, detector, wild, style):
    """The channels_last path (torch without oneDNN) and the GPU-style path (whole batch in one
    tile, NCHW, no worker threads: the code CUDA runs, exercised here on CPU) match the default."""
    import torch

    monkeypatch.setenv("FERCURE_NO_MKLDNN", "1")
    other = FaceDetector(device="cpu", batch_size=8)
    assert not other.nets.mkldnn
    if style == "gpu_style":
        other.nets.fmt = torch.contiguous_format
        other._tile_px, other._net_chunk, other._workers = 1 << 62, 4096, 1
    images = [wild["astronaut"], *_fer(6)]
    for a, b in zip(other.detect(images), detector.detect(images)):
        assert len(a) == len(b)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)


def _same(a: Detection, b: Detection) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.landmarks, b.landmarks))


def test_a_face_does_not_depend_on_its_batch_mates():
    """The same image in other batch compositions (alone, other neighbours, another position,
    another batch size) gives bit-identical boxes, scores and landmarks: sharded, resumed and
    re-used prepare runs must write the same crops. Kernels that pick their blocking from the batch
    size once moved landmarks by ~1e-5 px, which changed a crop's sharpness across shards."""
    images = [np.asarray(Image.open(f).convert("RGB")) for f in small_sample_paths()[:32]]
    ref = FaceDetector(batch_size=64).detect(images)
    assert sum(len(d) > 0 for d in ref) >= 20          # real faces, so landmarks are compared
    compositions = [
        (FaceDetector(batch_size=64), list(range(32))[::-1]),
        (FaceDetector(batch_size=5), [3, 17, 8, 29, 0, 11, 21]),
        (FaceDetector(batch_size=64), [30, 1, 2, 31]),
    ]
    for det, order in compositions:
        for i, d in zip(order, det.detect([images[i] for i in order])):
            assert _same(ref[i], d), f"image {i} changed with its batch-mates"
    alone = FaceDetector(batch_size=64)
    for i in range(0, 32, 4):
        assert _same(ref[i], alone.detect([images[i]])[0]), f"image {i} alone differs"
