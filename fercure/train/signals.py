"""Per-sample detection signals from a run, and the run's self-checks (pure functions on arrays).

- ``holdout_mask``: a stratified probe the first model never trains on (model strength).
- ``plant_flips``: labels flipped on purpose (known errors inside the run: the self-check, and the
  positives the signal fusion is fitted on).
- ``forgetting_events``: how often a sample went from predicted-right to predicted-wrong.
- ``knn_label_distribution``: label vote of a sample's nearest neighbours in the learned embedding
  (deep kNN / SimiFeat-style), a detection signal and a source of suggested labels.
- ``fit_logistic`` / ``fusion_features``: a small L2 logistic regression over the free signals,
  fitted on planted flips vs the rest.
- ``estimate_error_share``: how many labels are wrong, from where the planted flips score.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fercure.groups import Neighbours



FUSION_FEATURES = ("mean_p_given", "std_p_given", "aum", "knn_agreement", "class_adjusted", "forgetting")


def holdout_mask(labels: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Stratified boolean mask of about ``share`` of each class (at least 1 of a class with ≥ 4
    samples; none when share is 0)."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    if share <= 0:
        return mask
    rng = np.random.default_rng(seed + 17)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(share * len(idx)))
        if k == 0 and len(idx) >= 4:
            k = 1
        mask[rng.permutation(idx)[:k]] = True
    return mask


def plant_flips(labels: np.ndarray, rate: float, num_classes: int, *, exclude: np.ndarray | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip about ``rate`` of each class's labels. The new class is drawn in proportion to the
    class sizes (annotators' slips favour frequent classes), never the sample's own class.

    Returns (new labels, planted mask)."""
    labels = np.asarray(labels, dtype=np.int64)
    out, planted = labels.copy(), np.zeros(len(labels), dtype=bool)
    if rate <= 0 or num_classes < 2:
        return out, planted
    rng = np.random.default_rng(seed + 31)
    prior = np.bincount(labels, minlength=num_classes).astype(float) + 1.0
    allowed = np.ones(len(labels), bool) if exclude is None else ~np.asarray(exclude, bool)
    for c in range(num_classes):
        idx = np.flatnonzero((labels == c) & allowed)
        k = int(round(rate * len(idx)))
        if k == 0:
            continue
        pick = rng.permutation(idx)[:k]
        w = prior.copy()
        w[c] = 0.0
        out[pick] = rng.choice(num_classes, size=k, p=w / w.sum())
        planted[pick] = True
    return out, planted


def forgetting_events(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(E,N) per-epoch predictions, (N,) labels → forgetting events per sample (Toneva et al. 2019):
    epochs where the sample was predicted right before and wrong now. A sample never predicted
    right counts E (never learned ranks as more suspect than any forgetting)."""
    correct = np.asarray(predicted) == np.asarray(labels)[None, :]
    if correct.shape[0] == 0:
        return np.zeros(correct.shape[1])
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(float)
    return np.where(correct.any(axis=0), events, float(correct.shape[0]))


def _canonical(val: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of candidate (similarity, index) pairs, by similarity descending and, among equal
    similarities, by index ascending (a stable sort over index-sorted candidates), so ties are
    broken the same way whatever the chunking or the device."""
    by_index = idx.argsort(dim=1)
    val, idx = val.gather(1, by_index), idx.gather(1, by_index)
    order = val.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return val.gather(1, order), idx.gather(1, order)


def _block_topk(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q,K) similarities → the k best per row with the tie rule of ``_canonical``. topk picks
    arbitrarily among values equal to the k-th; a tie crosses the cut only where the (k+1)-th
    value equals the k-th, and only those rows are sorted whole (rare with real embeddings, so
    the cost stays one topk and no extra pass over the block)."""
    kk = min(k + 1, sim.shape[1])
    val, idx = sim.topk(kk, dim=1)
    if kk > k:
        tied = val[:, k] == val[:, k - 1]
        val, idx = val[:, :k], idx[:, :k]
        if bool(tied.any()):
            rows = tied.nonzero().squeeze(1)
            order = sim[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
            val[rows], idx[rows] = sim[rows].gather(1, order), order
    return _canonical(val, idx, k)


@torch.no_grad()
def knn_neighbours(e: torch.Tensor, k: int, queries: torch.Tensor, chunk: int = 2048,
                   key_block: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours by dot product of the (normalised) rows ``e`` (N,D) for the
    rows ``queries``, each excluding itself. Returns (similarity, index), each (len(queries), k),
    best first, ties to the smaller index. Memory: one chunk × key_block similarity block and
    the running top-k, never N × N."""
    n = e.shape[0]
    out_v = torch.empty(len(queries), k, dtype=e.dtype, device=e.device)
    out_i = torch.empty(len(queries), k, dtype=torch.long, device=e.device)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        eq = e[q]
        best_v = best_i = None
        for b in range(0, n, key_block):
            kb = min(key_block, n - b)
            sim = eq @ e[b:b + kb].T
            mine = (q >= b) & (q < b + kb)  # a query is not its own neighbour
            sim[mine.nonzero().squeeze(1), q[mine] - b] = -2.0
            v, i = _block_topk(sim, min(k, kb))
            del sim  # before the next block is made: one block alive at a time
            i = i + b
            if best_v is None:
                best_v, best_i = v, i
            else:  # earlier blocks hold smaller indices: first in the merge keeps the tie rule
                best_v, best_i = _canonical(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), k)
        out_v[s:s + len(q)], out_i[s:s + len(q)] = best_v, best_i
    return out_v, out_i


def knn_device(device: str | torch.device | None = None) -> torch.device:
    """Where the kNN runs: the given device (the training device; a bare 'cuda' is the rank's
    GPU), else — None or 'auto' — the rank's GPU when there is one and the process group, if any,
    is NCCL's (a gloo group of CPU ranks gathers CPU tensors)."""
    import torch.distributed as dist

    from fercure.train import distributed as dd
    world = dd.current()
    if device is not None and str(device) != "auto":
        return dd.rank_device(torch.device(device), world)
    gpu = torch.cuda.is_available() and (not world.distributed or dist.get_backend() == "nccl")
    return dd.rank_device(torch.device("cuda" if gpu else "cpu"), world)


def knn_label_distribution(embedding: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 10,
                           chunk: int = 2048, *, key_block: int = 65536,
                           device: str | torch.device | None = None) -> np.ndarray:
    """(N,D) embeddings, (N,) labels → (N,C) similarity-weighted label vote of each sample's k
    nearest neighbours by cosine (itself excluded; ties to the smaller index). Rows sum to 1.

    Exact search in blocks on the device (memory O(N·D + chunk·key_block + N·k)); under data
    parallelism each rank searches its share of the query chunks and the votes are gathered,
    so the N² work is done once in all, not once per rank."""
    return knn_label_distributions(embedding, [labels], num_classes, k, chunk, key_block=key_block,
                                   device=device)[0]


def knn_label_distributions(embedding: np.ndarray, label_sets, num_classes: int, k: int = 10,
                            chunk: int = 2048, *, key_block: int = 65536,
                            device: str | torch.device | None = None) -> list[np.ndarray]:
    """``knn_label_distribution`` for several labellings of the same samples: the neighbours (the
    N² part) are searched once, each labelling only votes."""
    return knn_votes_and_neighbours(embedding, label_sets, num_classes, k, chunk, key_block=key_block,
                                    device=device)[0]


@torch.no_grad()
def knn_votes_and_neighbours(embedding: np.ndarray, label_sets, num_classes: int, k: int = 10,
                             chunk: int = 2048, *, key_block: int = 65536,
                             device: str | torch.device | None = None) -> tuple[list[np.ndarray], Neighbours]:
    """``knn_label_distributions`` and the neighbours it searched (every sample's, on every rank):
    the run keeps them for the audit's group cards and the report's similar faces."""
    from fercure.train import distributed as dd

    world = dd.current()
    dev = knn_device(device)
    e = F.normalize(torch.as_tensor(np.asarray(embedding), dtype=torch.float32).to(dev), dim=1)
    n = e.shape[0]
    k = max(1, min(k, n - 1))
    starts = list(range(0, n, chunk))[world.rank::world.size]  # this rank's query chunks
    queries = torch.cat([torch.arange(s, min(s + chunk, n), device=dev) for s in starts]) if starts \
        else torch.zeros(0, dtype=torch.long, device=dev)
    val, nb = knn_neighbours(e, k, queries, chunk=chunk, key_block=key_block)
    w = val.clamp_min(0.0) + 1e-6
    votes = {}
    for j, labels in enumerate(label_sets):
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(dev)
        votes[f"v{j}"] = torch.zeros(len(queries), num_classes, device=dev).scatter_add_(1, y[nb], w)
    found = {"sim": val, "index": nb}
    if world.distributed:
        owner = dd.chunk_owner(n, chunk, world, dev)
        votes = dd.gather_rows(votes, owner, world)
        found = dd.gather_rows(found, owner, world)
    neighbours = Neighbours(index=found["index"].cpu().numpy().astype(np.int64),
                            similarity=found["sim"].cpu().numpy().astype(np.float32))
    return ([(v / v.sum(dim=1, keepdim=True)).cpu().numpy() for v in (votes[f"v{j}"] for j in range(len(votes)))],
            neighbours)


def class_adjusted(score: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """score minus the mean score of the sample's labelled class (confident learning's per-class
    threshold idea): hard classes are not flagged just for being hard."""
    score, labels = np.asarray(score, float), np.asarray(labels)
    means = np.array([np.nanmean(score[labels == c]) if (labels == c).any() else 0.0
                      for c in range(num_classes)])
    return score - means[labels]


def fusion_features(sig: dict[str, np.ndarray]) -> np.ndarray:
    """(N,F) matrix of FUSION_FEATURES from a dict of per-sample signals."""
    return np.stack([np.asarray(sig[f], dtype=float) for f in FUSION_FEATURES], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Returns (weights, bias, feature mean, feature std); ``predict_logit`` applies them."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1]), mu, sd


def predict_logit(x: np.ndarray, weights: np.ndarray, bias: float, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, float) - mu) / sd) @ weights + bias


def estimate_error_share(score: np.ndarray, planted: np.ndarray, quantile: float = 0.5) -> float:
    """Share of wrong labels among the unplanted samples, from where the planted flips score.

    Below the ``quantile`` of the planted flips' scores lie that share of all wrong labels, if
    real errors score like planted ones; clean samples down there are assumed rare. So the share
    ≈ (unplanted samples below that score) / (quantile · unplanted samples). Both assumptions are
    checked against FER+ votes in the benchmark; the value is clipped to [0, 0.5]."""
    score, planted = np.asarray(score, float), np.asarray(planted, bool)
    ok = np.isfinite(score)
    ps, rest = score[planted & ok], score[~planted & ok]
    if len(ps) < 5 or len(rest) == 0:
        return float("nan")
    cut = np.quantile(ps, quantile)
    return float(np.clip((rest <= cut).mean() / quantile, 0.0, 0.5))
