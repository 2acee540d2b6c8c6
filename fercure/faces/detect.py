"""Batched MTCNN face detection.

``FaceDetector`` reuses facenet-pytorch's PNet/RNet/ONet modules and the weights shipped inside that
package, and runs its own pipeline around them, with the same arithmetic as facenet's
``MTCNN.detect`` (same pyramid, thresholds, box regression and NMS rules, so the same faces):

* images are grouped by size; a batch of same-size images goes through each stage together, with
  batched NMS (torchvision) and no Python loop over images or boxes;
* one summed-area table per image replaces every resize: pyramid levels and the RNet/ONet crops are
  exact area averages (what facenet's ``interpolate(mode="area")`` computes) read by gathers,
  instead of one full-image resize per level and one Python-level crop+resize per candidate box;
* the final "intersection over minimum" NMS, a numpy ``while`` loop in facenet, is a tensor
  fixed-point iteration;
* on CPU the conv trunks run on oneDNN tensors, on small tiles of images that stay in cache, spread
  over single-threaded worker threads (see ``_single_thread_pool``);
* a face's result does not depend on which other images share its batch: every net call has one
  fixed shape (the last tile or box chunk is padded), runs single-threaded on CPU, and NMS of
  fractional boxes runs in float64 (see ``_fixed_rows``; ``batched_nms`` shifts each image's boxes
  by image_index × (max + 1), which rounds float32 fractions by a batch-dependent amount). Conv and GEMM
  kernels pick their blocking from the batch size, and a different blocking rounds differently,
  which moved landmarks by ~1e-5 px and changed a crop's pixels between sharded and unsharded runs.

``facenet_detect`` wraps facenet's own ``MTCNN.detect`` (numpy-2 safe) as the reference that tests
and benchmarks/bench_prepare.py compare against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from fercure.device import resolve_device

__all__ = ["Detection", "FaceDetector", "DETECT_PAD", "pad_for_detection", "detect_with_padding", "facenet_detect",
           "resolve_device"]

# facenet-pytorch's pyramid factor and the NMS thresholds of the original MTCNN recipe.
_FACTOR = 0.709
# Pixels per chunk: bounds memory of the pyramid's first level and the summed-area table
# (≈ 8M px ≈ 128 images of 256², 26 of 640×480) while keeping batches big enough to be efficient.
_PIXEL_BUDGET = 8_000_000


@dataclass
class Detection:
    """Faces found in one image, best first.

    boxes: (n,4) float32 x1,y1,x2,y2 in source pixels; scores: (n,) float32;
    landmarks: (n,5,2) float32 left eye, right eye, nose, mouth left, mouth right (MTCNN order).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> "Detection":
        return Detection(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        )


@dataclass(frozen=True)
class _Pixels:
    """What the refinement stages (RNet, ONet) of one batch of same-size images read: its
    summed-area table, the images' width and height, and whether work goes to the worker threads."""

    sat: torch.Tensor
    w: int
    h: int
    parallel: bool


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept HxW grey and HxWx4 RGBA as well as HxWx3, so one odd file does not abort a batch."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    return image


def _pyramid_scales(h: int, w: int, min_face_size: float) -> list[float]:
    """Exactly facenet's scale list: first scale maps min_face_size to PNet's 12 px window."""
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales, scale = [], m
    while minl >= 12:
        scales.append(scale)
        scale *= _FACTOR
        minl *= _FACTOR
    return scales


def _rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Square each box about its centre (side = longer side), as MTCNN feeds square crops."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _bbreg(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    """Apply the regression offsets. facenet measures width as x2 − x1 + 1 in stages 2–3 but x2 − x1
    after PNet; both are kept so boxes match facenet's."""
    w = boxes[:, 2] - boxes[:, 0] + plus_one
    h = boxes[:, 3] - boxes[:, 1] + plus_one
    return boxes[:, :4] + reg[:, :4] * torch.stack([w, h, w, h], dim=1)


def _level_bins(h: int, w: int, scale: float, device) -> tuple[torch.Tensor, ...]:
    """Bin edges of one pyramid level, facenet's size (int(h·scale + 1), int(w·scale + 1)), with
    adaptive_avg_pool2d's integer bins; ``gain`` = 1 / (128 · bin area) for the nets' input scale."""
    def edges(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.arange(n_out, device=device)
        return (i * n_in) // n_out, ((i + 1) * n_in + n_out - 1) // n_out

    ys, ye = edges(h, int(h * scale + 1))
    xs, xe = edges(w, int(w * scale + 1))
    area = ((ye - ys)[:, None] * (xe - xs)[None, :]).to(torch.float32)
    return ys, ye, xs, xe, (0.0078125 / area)[:, :, None]


def _crop_windows(boxes: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """facenet's ``pad``: truncate, clip to the image; returns x0,y0,x1,y1 half-open int64 windows.

    facenet clips (it does not zero-pad), so a box crossing the border yields a stretched crop;
    we do the same so the nets see the same pixels.
    """
    b = boxes.trunc().long()
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = b[:, 2].clamp(max=w)
    y1 = b[:, 3].clamp(max=h)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _area_crops(sat: torch.Tensor, img_idx: torch.Tensor, win: torch.Tensor, size: int) -> torch.Tensor:
    """Crop windows and area-resize them to size×size for all boxes at once.

    ``sat`` is a (B, H+1, W+1, 3) summed-area table. Bin edges follow adaptive_avg_pool2d
    (start = floor(i·L/n), end = ceil((i+1)·L/n)), i.e. what ``interpolate(mode='area')`` computes,
    so each crop equals facenet's per-box ``imresample``. Corners are fetched with one flat
    ``index_select`` of RGB triplets (≈2× faster than 3-tensor advanced indexing). Returns
    (K, 3, size, size) float32 in the nets' input scale ((x − 127.5) / 128).
    """
    i = torch.arange(size, device=sat.device)
    x0, y0, x1, y1 = win.unbind(1)
    lw = (x1 - x0)[:, None]
    lh = (y1 - y0)[:, None]
    xs = x0[:, None] + (i * lw) // size
    xe = x0[:, None] + ((i + 1) * lw + size - 1) // size
    ys = y0[:, None] + (i * lh) // size
    ye = y0[:, None] + ((i + 1) * lh + size - 1) // size
    hp, wp = sat.shape[1], sat.shape[2]
    rows = img_idx[:, None] * hp
    rs, re = (rows + ys) * wp, (rows + ye) * wp                # flat offsets of the bin rows
    flat = sat.view(-1, 3)

    def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (r[:, :, None] + c[:, None, :]).reshape(-1))

    total = corner(re, xe) - corner(rs, xe) - corner(re, xs) + corner(rs, xs)
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).reshape(-1, 1)
    crops = total.to(torch.float32) / area.to(torch.float32)
    crops = crops.view(-1, size, size, 3).permute(0, 3, 1, 2)     # NHWC memory = channels_last
    return (crops - 127.5) * 0.0078125


def _fixed_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` padded with zero rows to exactly ``rows`` (a net input of fixed batch size; the padding's
    outputs are sliced off by the caller)."""
    n = x.shape[0]
    if n == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - n,) + tuple(x.shape[1:]))])


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy per-image NMS with intersection-over-minimum (MTCNN's last step), without a Python loop
    per box.

    Greedy NMS keeps box i iff no *kept* higher-scored box of the same image overlaps it; that
    recursion has one fixed point, reached by iterating the rule on all boxes at once (each pass fixes
    at least the next box in score order; in practice 2–3 passes). Returns kept indices, best first.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b, g = boxes[order], idxs[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    iom = iw * ih / torch.minimum(area[:, None], area[None, :])
    k = b.shape[0]
    earlier = torch.ones(k, k, dtype=torch.bool, device=b.device).triu(1)  # [j, i]: j ranks above i
    sup = (iom > threshold) & (g[:, None] == g[None, :]) & earlier
    keep = torch.ones(k, dtype=torch.bool, device=b.device)
    for _ in range(k):
        new = ~(sup & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


class _OneDNNConv(torch.nn.Module):
    """A Conv2d running on oneDNN tensors (``torch.utils.mkldnn`` does the same through deprecated
    TorchScript modules)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.weight = conv.weight.detach().to_mkldnn()
        self.bias = conv.bias.detach().to_mkldnn()
        self.args = (conv.padding, conv.stride, conv.dilation, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(x, self.weight, self.bias, *self.args)


class _OneDNNPReLU(torch.nn.Module):
    def __init__(self, prelu: torch.nn.PReLU):
        super().__init__()
        self.weight = prelu.weight.detach().to_mkldnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.prelu(x, self.weight)


class _RowwiseLinear(torch.nn.Module):
    """A Linear whose every row is computed by the same kernel, alone (a batched product of 1-row
    matrices). A plain GEMM rounds a row differently depending on where it falls in the kernel's row
    blocks (seen with AVX2 kernels), i.e. on the other boxes in the chunk."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight_t = linear.weight.detach().t()
        self.bias = linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return torch.baddbmm(self.bias.expand(b, 1, -1), x.unsqueeze(1),
                             self.weight_t.expand(b, -1, -1)).squeeze(1)


class _Nets:
    """facenet-pytorch's PNet/RNet/ONet (their bundled weights) with forwards fitted to the device.

    On CPU the conv/PReLU/max-pool trunks run on oneDNN ("mkldnn") tensors, whose blocked layout
    avoids a reorder per layer: PNet ran ~1.4× faster than channels_last and ~2× faster than
    NCHW at the same tile size (set FERCURE_NO_MKLDNN=1 to fall back to channels_last). Elsewhere (CUDA) the stock layers
    run. Outputs equal facenet's forwards up to float rounding.
    """

    def __init__(self, device: torch.device):
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet  # weights ship inside the package

        self.pnet, self.rnet, self.onet = PNet().eval(), RNet().eval(), ONet().eval()
        for net in (self.pnet, self.rnet, self.onet):
            net.requires_grad_(False).to(device)
            for name, child in list(net.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(net, name, _RowwiseLinear(child))
        self.mkldnn = (device.type == "cpu" and torch.backends.mkldnn.is_available()
                       and not os.environ.get("FERCURE_NO_MKLDNN"))
        if self.mkldnn:
            for net in (self.pnet, self.rnet, self.onet):
                for name, child in list(net.named_children()):
                    # convs and the PReLUs that follow a conv (RNet's prelu4 follows a Linear)
                    if isinstance(child, torch.nn.Conv2d):
                        setattr(net, name, _OneDNNConv(child))
                    elif isinstance(child, torch.nn.PReLU) and hasattr(net, "conv" + name[5:]):
                        setattr(net, name, _OneDNNPReLU(child))
        # Without oneDNN on CPU channels_last still halves conv/max-pool time.
        self.fmt = torch.channels_last if device.type == "cpu" and not self.mkldnn else torch.contiguous_format

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to_mkldnn() if self.mkldnn else x.contiguous(memory_format=self.fmt)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.to_dense() if self.mkldnn else x

    def p(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PNet: (B,3,h,w) → box regression (B,4,h',w') and face probability (B,h',w')."""
        n = self.pnet
        x = F.max_pool2d(n.prelu1(n.conv1(self._in(x))), 2, 2, ceil_mode=True)
        x = n.prelu3(n.conv3(n.prelu2(n.conv2(x))))
        reg, logits = self._out(n.conv4_2(x)), self._out(n.conv4_1(x))
        return reg, torch.softmax(logits, 1)[:, 1]

    def _trunk(self, n, x: torch.Tensor, pools: int) -> torch.Tensor:
        x = F.max_pool2d(n.prelu1(n.conv1(self._in(x))), 3, 2, ceil_mode=True)
        x = F.max_pool2d(n.prelu2(n.conv2(x)), 3, 2, ceil_mode=True)
        x = n.prelu3(n.conv3(x))
        if pools == 3:
            x = n.prelu4(n.conv4(F.max_pool2d(x, 2, 2, ceil_mode=True)))
        # facenet flattens in (W, H, C) order
        return self._out(x).permute(0, 3, 2, 1).reshape(x.shape[0], -1)

    def r(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RNet: (K,3,24,24) → regression (K,4), face probability (K,)."""
        n = self.rnet
        x = n.prelu4(n.dense4(self._trunk(n, x, 2)))
        return n.dense5_2(x), torch.softmax(n.dense5_1(x), 1)[:, 1]

    def o(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ONet: (K,3,48,48) → regression (K,4), landmarks (K,10), face probability (K,)."""
        n = self.onet
        x = n.prelu5(n.dense5(self._trunk(n, x, 3)))
        return n.dense6_2(x), n.dense6_3(x), torch.softmax(n.dense6_1(x), 1)[:, 1]


def _single_thread_pool(n: int):
    """A pool of n threads whose torch ops each run single-threaded.

    MTCNN makes many small ops, and each multi-threaded op ends at a barrier that waits for its
    slowest thread. On idle cores that is on par with one thread per tile; on 2 cores shared with
    other jobs it ran ~10× slower than this pool (and facenet's batched detect ~3× slower). torch.set_num_threads sets the calling thread's
    OpenMP thread count plus a process-wide default that a thread copies when it first uses torch;
    each worker initialises, sets 1 for itself, then the default is put back, so the caller's
    threads are unaffected.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def init() -> None:
        torch.get_num_threads()   # run torch's lazy per-thread init first, or it would undo the 1
        torch.set_num_threads(1)

    barrier = threading.Barrier(n + 1)
    orig = torch.get_num_threads()
    pool = ThreadPoolExecutor(n, initializer=init, thread_name_prefix="fercure-mtcnn")
    for _ in range(n):          # start every worker now (the pool starts them lazily)
        pool.submit(barrier.wait)
    barrier.wait()
    torch.set_num_threads(orig)
    return pool


class FaceDetector:
    """MTCNN face detector for lists of images of any sizes.

    Images are grouped by size and run in batches (≤ ``batch_size`` images and ≤ ~8M pixels per
    batch). Defaults are facenet-pytorch's (min face 20 px, thresholds 0.6/0.7/0.7, factor 0.709).
    ``device`` may be "cpu", "cuda", "cuda:1" or "auto".
    """

    def __init__(self, device: str = "cpu", batch_size: int = 64, min_face_size: int = 20,
                 thresholds=(0.6, 0.7, 0.7)):
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nets = _Nets(self.device)
        # CPU with several threads: tiles and box chunks go to single-threaded workers.
        cpu = self.device.type == "cpu"
        self._workers = torch.get_num_threads() if cpu else 1
        # CPU: ~256k px of images (4 of 256²) or 32 boxes at a time keeps the SAT and activations
        # in cache: 2-3× faster than whole-batch tensors, 1.7× faster than 1 image (too many
        # small ops); measured on 2 idle cores against 1-16 images and 32-128 boxes.
        # GPUs want the whole batch in one call.
        self._tile_px = 1 << 18 if cpu else 1 << 62
        self._net_chunk = 32 if cpu else 4096
        self._pool = None
        self._pool_pid = None

    def close(self) -> None:
        """Stop the worker threads (they also end with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _get_pool(self):
        if self._workers < 2:
            return None
        if self._pool is None or self._pool_pid != os.getpid():   # a forked child has no threads
            self._pool = _single_thread_pool(self._workers)
            self._pool_pid = os.getpid()
        return self._pool

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """One ``Detection`` per image (n = 0 when no face), boxes sorted by score descending."""
        images = [_as_rgb(im) for im in images]
        out: list[Detection | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        jobs = []
        for (h, w), idx in groups.items():
            per = max(1, min(self.batch_size, _PIXEL_BUDGET // max(1, h * w)))
            jobs += [idx[s:s + per] for s in range(0, len(idx), per)]

        def run(chunk: list[int], parallel: bool) -> list[Detection]:
            with torch.inference_mode():
                return self._detect_batch(np.stack([images[i] for i in chunk]), parallel)

        # Enough batches for every worker (many sizes, e.g. photos from the web): one batch per
        # worker. Few batches: one at a time, each spread over the workers tile by tile.
        pool = self._get_pool() if len(jobs) >= max(2, self._workers) else None
        if pool is not None:
            results = pool.map(lambda chunk: run(chunk, False), jobs)
        else:
            results = (run(chunk, True) for chunk in jobs)
        for chunk, dets in zip(jobs, results):
            for i, det in zip(chunk, dets):
                out[i] = det
        return out  # type: ignore[return-value]

    def _detect_batch(self, batch: np.ndarray, parallel: bool = True) -> list[Detection]:
        """Run the three MTCNN stages on a (B,H,W,3) uint8 batch of same-size images (in inference
        mode); ``parallel``: spread tiles and box chunks over the worker threads."""
        bsz, h, w = batch.shape[:3]
        t0, t1, t2 = self.thresholds
        u8 = torch.from_numpy(batch)                               # (B,H,W,3) uint8
        if self.device.type == "cuda":   # upload from pinned memory, overlapping the copy
            u8 = u8.pin_memory().to(self.device, non_blocking=True)
        else:
            u8 = u8.to(self.device)
        scales = _pyramid_scales(h, w, self.min_face_size)
        if not scales:                                             # smaller than one PNet window
            return [Detection.empty() for _ in range(bsz)]

        # One summed-area table (SAT) serves every resize: each pyramid level and every RNet/ONet
        # crop is an exact area average (adaptive_avg_pool2d's integer bins, i.e. facenet's
        # interpolate(mode="area")) read from it by gathers, ~3× cheaper than resizing from the
        # image once per level. int32 is exact while 255·H·W < 2³¹ (≈ 8.4 Mpx); else int64.
        acc = torch.int32 if 255 * h * w < 2**31 else torch.int64
        sat = torch.empty((bsz, h + 1, w + 1, 3), dtype=acc, device=self.device)
        sat[:, 0] = 0
        sat[:, :, 0] = 0
        levels = [_level_bins(h, w, scale, self.device) for scale in scales]

        # Stage 1: PNet over the pyramid. Tiles of images (CPU: ~256k px, GPU: the whole batch)
        # are summed, resized and scored while their pixels are in cache.
        # The tile size depends on the image size only (not on how many images this batch holds),
        # and a short last tile is padded: PNet always runs on the same shape.
        tile = self._tile_images(h, w)
        spans = [(s, min(bsz, s + tile)) for s in range(0, bsz, tile)]
        per_tile = self._map(lambda se: self._pnet_tile(u8, sat, se[0], se[1], levels, tile), spans, parallel)
        probs_s = list(zip(*[[p for p, _ in t] for t in per_tile]))
        reg_s = list(zip(*[[r for _, r in t] for t in per_tile]))

        all_boxes, all_inds = [], []
        for k, scale in enumerate(scales):
            score = torch.cat(probs_s[k])                          # (B,h',w')
            mask = score >= t0
            nz = mask.nonzero()                                    # (k,3): image, y, x
            if nz.shape[0] == 0:
                continue
            sc = score[mask]
            r = torch.cat(reg_s[k]).permute(0, 2, 3, 1)[mask]     # (k,4)
            xy = nz[:, 1:].flip(1).to(torch.float32)
            bx = torch.cat([((2 * xy + 1) / scale).floor(), ((2 * xy + 12) / scale).floor()], dim=1)
            keep = batched_nms(bx, sc, nz[:, 0], 0.5)
            all_boxes.append(torch.cat([bx[keep], sc[keep, None], r[keep]], dim=1))
            all_inds.append(nz[keep, 0])
        if not all_boxes:
            return [Detection.empty() for _ in range(bsz)]
        cand = torch.cat(all_boxes)
        inds = torch.cat(all_inds)
        keep = batched_nms(cand[:, :4], cand[:, 4], inds, 0.7)
        cand, inds = cand[keep], inds[keep]
        boxes = _rerec(_bbreg(cand[:, :4], cand[:, 5:9], plus_one=False))

        # Stage 2: RNet on 24×24 crops.
        px = _Pixels(sat, w, h, parallel)
        boxes, inds, score, (reg,) = self._refine(px, boxes, inds, self.nets.r, 24, t1)
        if boxes.shape[0] == 0:
            return [Detection.empty() for _ in range(bsz)]
        # float64: the per-image shift of fractional boxes is exact (see the module docstring); input order
        keep = batched_nms(boxes.double(), score.double(), inds, 0.7).sort().values
        boxes = _rerec(_bbreg(boxes[keep], reg[keep]))
        inds = inds[keep]

        # Stage 3: ONet on 48×48 crops → score, box regression, landmarks.
        boxes, inds, score, (reg, pts) = self._refine(px, boxes, inds, self.nets.o, 48, t2)
        if boxes.shape[0] == 0:
            return [Detection.empty() for _ in range(bsz)]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        lm = torch.stack([bw * pts[:, :5] + boxes[:, :1] - 1, bh * pts[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = _bbreg(boxes, reg)
        keep = _nms_min(boxes, score, inds, 0.7)                   # best first
        return _split(boxes[keep], score[keep], lm[keep], inds[keep], bsz)

    def _tile_images(self, h: int, w: int) -> int:
        """Images per PNet call for h×w images: a function of the size and the settings only."""
        return max(1, min(self.batch_size, self._tile_px // (h * w), _PIXEL_BUDGET // (h * w)))

    def _pnet_tile(self, u8, sat, s, e, levels, n_img):
        """SAT rows s:e, then PNet on every pyramid level of those images (padded to ``n_img``
        images): [(prob, reg)] per level."""
        part = sat[s:e]
        inner = part[:, 1:, 1:]
        inner.copy_(u8[s:e])
        inner.cumsum_(1)
        inner.cumsum_(2)
        out = []
        for ys, ye, xs, xe, gain in levels:
            rows = part.index_select(1, ye) - part.index_select(1, ys)     # (T,h',W+1,3)
            box = (rows.index_select(2, xe) - rows.index_select(2, xs)).to(torch.float32)
            x = box.mul_(gain).sub_(127.5 * 0.0078125)                   # (mean − 127.5) / 128
            reg, prob = self.nets.p(_fixed_rows(x.permute(0, 3, 1, 2), n_img))
            out.append((prob[: e - s], reg[: e - s]))
        return out

    def _map(self, fn, items, parallel: bool):
        """``[fn(x) for x in items]`` on the single-threaded workers (in this thread when it is one
        of them, ``parallel=False``, or when there are none). Even one item goes to a worker: a
        multi-threaded kernel may split its sums differently, and results must not depend on
        whether a batch had work for one thread or several."""
        if not parallel or not items or self._get_pool() is None:
            return [fn(x) for x in items]

        def run(x):
            with torch.inference_mode():   # thread-local: workers must enter it themselves
                return fn(x)

        return list(self._get_pool().map(run, items))

    def _refine(self, px: _Pixels, boxes, inds, net, size: int, thresh: float):
        """Crop ``boxes`` of ``px``'s images to ``size``², run ``net`` in chunks, keep those
        scoring above ``thresh``.

        Returns (boxes, image indices, scores, other outputs of ``net`` before the score)."""
        sat = px.sat
        win = _crop_windows(boxes, px.w, px.h)
        ok = (win[:, 2] > win[:, 0]) & (win[:, 3] > win[:, 1])   # facenet skips empty crops too
        boxes, inds, win = boxes[ok], inds[ok], win[ok]
        c = self._net_chunk

        def run(s: int):   # every chunk padded to c boxes: one shape, whatever the batch holds
            n = min(c, boxes.shape[0] - s)
            return tuple(o[:n] for o in net(_fixed_rows(_area_crops(sat, inds[s:s + c], win[s:s + c], size), c)))

        outs = self._map(run, list(range(0, boxes.shape[0], c)), px.parallel)
        if not outs:
            n_extra = 1 if size == 24 else 2
            return boxes, inds, boxes.new_zeros(0), tuple(boxes.new_zeros((0, 10)) for _ in range(n_extra))
        out = [torch.cat(o) for o in zip(*outs)]
        score = out[-1]
        p = score > thresh
        return boxes[p], inds[p], score[p], tuple(o[p] for o in out[:-1])


def _split(boxes, scores, landmarks, inds, bsz) -> list[Detection]:
    """Scatter the flat, best-first results back to one Detection per image (stable sort keeps order)."""
    inds = inds.cpu().numpy()
    order = np.argsort(inds, kind="stable")
    boxes = boxes.cpu().numpy().astype(np.float32)[order]
    scores = scores.cpu().numpy().astype(np.float32)[order]
    landmarks = landmarks.cpu().numpy().astype(np.float32)[order]
    cuts = np.searchsorted(inds[order], np.arange(1, bsz))
    return [Detection(b, s, l) for b, s, l in zip(np.split(boxes, cuts), np.split(scores, cuts), np.split(landmarks, cuts))]


DETECT_PAD = 0.25
"""Border added around an image the detector missed, as a share of its longer side."""


def pad_for_detection(image: np.ndarray, frac: float = DETECT_PAD) -> tuple[np.ndarray, int]:
    """``image`` with a border of ``frac`` × its longer side in its own mean colour, and the border
    width. A face that fills its frame (FER2013's 48×48 crops) gives MTCNN no context around the
    face and its boxes run past the border; with room around it the same face is found. A flat
    border invents no structure (reflecting would mirror half a face next to the face)."""
    image = _as_rgb(image)
    pad = max(1, int(round(frac * max(image.shape[:2]))))
    mean = np.round(image.reshape(-1, 3).mean(0)).astype(np.uint8)
    out = np.empty((image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, 3), np.uint8)
    out[:] = mean
    out[pad:pad + image.shape[0], pad:pad + image.shape[1]] = image
    return out, pad


def detect_with_padding(detector: "FaceDetector", images: Sequence[np.ndarray], min_score: float = 0.9,
                        frac: float = DETECT_PAD, max_side: int | None = None,
                        budget_px: int = 64 * 512 * 512) -> tuple[list[Detection], np.ndarray]:
    """Detect, then look again with a border (``pad_for_detection``) at every image where no face
    reached ``min_score``; the padded look wins when its best score is higher. Returns the
    detections in the images' own coordinates and a bool per image: found on the padded image.

    The retry is for pre-cropped faces, which are small: an image whose padded copy would be longer
    than ``max_side`` (the detector's size bound) is not retried, so the bound holds. Padded copies
    are made a group at a time, at most ``budget_px`` pixels per group (one image at least)."""
    dets = detector.detect(images)
    padded_hit = np.zeros(len(dets), dtype=bool)

    def padded_side(im: np.ndarray) -> int:
        return max(im.shape[:2]) + 2 * max(1, int(round(frac * max(im.shape[:2]))))

    retry = [i for i, d in enumerate(dets) if not (len(d) and float(d.scores.max()) >= min_score)
             and (max_side is None or padded_side(images[i]) <= max_side)]
    groups, cur, px = [], [], 0
    for i in retry:
        side = padded_side(images[i])
        if cur and px + side * side > budget_px:
            groups.append(cur)
            cur, px = [], 0
        cur.append(i)
        px += side * side
    if cur:
        groups.append(cur)
    for idx in groups:
        padded = [pad_for_detection(images[i], frac) for i in idx]
        offsets = [off for _, off in padded]
        again = detector.detect([im for im, _ in padded])
        del padded
        for i, d, off in zip(idx, again, offsets):
            if len(d) and (len(dets[i]) == 0 or float(d.scores.max()) > float(dets[i].scores.max())):
                dets[i] = Detection(d.boxes - np.float32(off), d.scores, d.landmarks - np.float32(off))
                padded_hit[i] = True
    return dets, padded_hit


def facenet_detect(mtcnn, images: Sequence[np.ndarray]) -> list[Detection]:
    """facenet-pytorch's own ``MTCNN.detect`` on a list of same-size images, as ``Detection``s.

    The reference implementation. Under numpy 2 facenet returns object arrays (``None`` where no
    face), so each entry is cast to float32 here; boxes are re-sorted by score.
    """
    if len(images) == 0:
        return []
    boxes, probs, points = mtcnn.detect([_as_rgb(im) for im in images], landmarks=True)
    dets = []
    for b, p, l in zip(boxes, probs, points):
        if b is None:
            dets.append(Detection.empty())
            continue
        b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
        p = np.asarray(p, dtype=np.float32).reshape(-1)
        l = np.asarray(l, dtype=np.float32).reshape(-1, 5, 2)
        o = np.argsort(-p, kind="stable")
        dets.append(Detection(b[o], p[o], l[o]))
    return dets
