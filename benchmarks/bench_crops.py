"""Crops of pre-cropped faces: black fill and the detector's found fraction, before and after.

On FER2013 train crops (48×48 grey, as the dataset ships them), in one run on the same images:

* before  fercure ≤ 0.2: MTCNN on the image as given; a found face aligned into the 5-point
          template with black outside the image (``--crop align`` with black fill); a miss kept whole
* align   ``--crop align`` now: the same alignment, border pixels replicated instead of black,
          misses looked at again with a border (``detect_with_padding``)
* auto    ``--crop auto`` (the default): as ``align``, but a face that already fills its frame, or
          whose alignment would take more than MAX_OUTSIDE of the crop from outside the image,
          is kept as given (a square around the face, resized)

Figures per mode: share of crop pixels filled from outside the image (black before), share of
crop pixels that are black (max channel 0, measured on the crops: includes black in the photos),
share of crops more than 25 % filled / black, the found fraction (a face with score ≥ 0.9, i.e.
what prepare calls ok or too_small; and any face), crop-mode counts, and seconds.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_crops.py --n 3000

Results go to benchmarks/results/crops.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))   # `common` beside this script
sys.path.insert(0, str(REPO))   # fercure without installing

import common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="FER2013 train images, an even stride over the set (default 3000)")
    p.add_argument("--image-size", type=int, default=48, help="crop side, pixels (default 48)")
    p.add_argument("--min-score", type=float, default=0.9, help="face score that counts as found (default 0.9)")
    p.add_argument("--batch-size", type=int, default=64, help="detector batch size (default 64)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus",
                   help="FER2013+FER+ benchmark folder (default ../shared/benchmarks/fer2013-ferplus)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "crops.json",
                   help="results JSON (default benchmarks/results/crops.json)")
    return p.parse_args(argv)


def crop_figures(crops: np.ndarray, fill: np.ndarray) -> dict:
    """Fill and black shares of a set of crops; ``fill`` is each crop's share from outside the image."""
    black = (crops.max(axis=-1) == 0).reshape(len(crops), -1).mean(1)
    return {
        "fill_share": round(float(fill.mean()), 4),
        "black_share": round(float(black.mean()), 4),
        "crops_over_25pct_fill": round(float((fill > 0.25).mean()), 4),
        "crops_over_25pct_black": round(float((black > 0.25).mean()), 4),
    }


def crops_for(mode: str, images, dets, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Crops of every image (a miss kept whole, as --on-no-face keep does), their fill shares and
    the crop-mode counts, for ``mode`` in before / align / auto."""
    from fercure.faces import align, quality

    crops, fill, modes = [], [], {"align": 0, "as-given": 0}
    for im, det in zip(images, dets):
        if len(det) == 0:
            crops.append(align.resize_whole(im, size))
            fill.append(0.0)
            modes["as-given"] += 1
            continue
        k = quality.pick_face(det, im.shape)
        outside = align.outside_fraction(det.landmarks[k], im.shape, size)
        chosen = "align" if mode != "auto" else align.choose_crop(
            "auto", outside, align.box_coverage(det.boxes[k], im.shape))
        modes[chosen] += 1
        if chosen == "as-given":
            b = det.boxes[k]
            crops.append(align.resize_whole(im, size, centre=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)))
            fill.append(0.0)
        else:
            crops.append(align.align_face(im, det.landmarks[k], size, fill="black" if mode == "before" else "edge"))
            fill.append(outside)
    return np.stack(crops), np.asarray(fill), modes


def found(dets, min_score: float) -> dict:
    best = np.array([float(d.scores.max()) if len(d) else 0.0 for d in dets])
    return {"found_fraction": round(float((best >= min_score).mean()), 4),
            "any_face_fraction": round(float(np.mean([len(d) > 0 for d in dets])), 4)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import pandas as pd
    import torch
    from PIL import Image

    from fercure.faces.detect import FaceDetector, detect_with_padding

    labels = pd.read_csv(args.data / "train" / "labels.csv")
    pick = np.linspace(0, len(labels) - 1, min(args.n, len(labels))).round().astype(int)
    paths = [args.data / "train" / p for p in labels["path"].to_numpy()[pick]]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    det = FaceDetector(device="cpu", batch_size=args.batch_size)
    det.detect(images[:args.batch_size])   # warm-up (worker threads, oneDNN kernels) outside the timings

    t = time.perf_counter()
    plain = det.detect(images)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    padded, hit = detect_with_padding(det, images, args.min_score)
    t_padded = time.perf_counter() - t

    out = {"n_images": len(images), "image_size": args.image_size, "min_score": args.min_score,
           "threads": torch.get_num_threads(), "device_name": common.device_name("cpu"), "date": common.today(),
           **common.git_commit(), "command": [sys.executable, *sys.argv], "modes": {}}
    for mode, dets, secs in (("before", plain, t_plain), ("align", padded, t_padded), ("auto", padded, t_padded)):
        crops, fill, modes = crops_for(mode, images, dets, args.image_size)
        out["modes"][mode] = {**found(dets, args.min_score), **crop_figures(crops, fill),
                              "crop_modes": modes, "detect_seconds": round(secs, 1)}
        if mode != "before":
            out["modes"][mode]["found_by_border_retry"] = int(hit.sum())
        print(mode, json.dumps(out["modes"][mode]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
