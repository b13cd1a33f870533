"""k-means for pseudo-labels: greedy k-means++ seeding (vectorised) then faiss Lloyd iterations.

fairseq's recipe (``simple_kmeans/learn_kmeans.py``) runs sklearn's MiniBatchKMeans: 20 k-means++
seedings (on 30k-frame samples, upcast to float64), then up to 100 passes of
mini-batch updates. Here the seeding is sklearn's *greedy* k-means++ (each step draws ``2 + ln k``
candidates by D^2 weighting and keeps the one that lowers the potential most), written as a few
tensor operations per step (torch, float32, on centred data so the norms stay small) on a sample
of the frames. A few seedings (``n_init``) are ranked by their potential, and the best
(``nredo``) get Lloyd iterations in faiss, the last ones over every training frame; the lowest
inertia wins. Centroids are saved as a plain
``.npy`` with a JSON of how they were made, so they load anywhere numpy does; fairseq's joblib
k-means files are refused (a pickle runs its maker's code when loaded); the error says how to
convert one."""

import functools
import json
import logging
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional, Tuple

import numpy as np
import torch

# faiss's loader reports at DEBUG/INFO which instruction-set build it tries, and a missing AVX2
# build (the usual case of the pip wheel) reads like an error. Its warnings and errors still show,
# and a faiss that cannot load at all still raises ImportError.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

from audio_ssl_ext.durable import OutputLock, atomic_write, atomic_write_json  # noqa: E402

logger = logging.getLogger(__name__)


class KMeansError(ValueError):
    """Data or centroids k-means cannot work with (the message names the file or the input)."""


def check_training_data(x: np.ndarray, n_clusters: int, where: str) -> None:
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise KMeansError(f"{where}: expected a non-empty (frames, dim) array, got shape {x.shape}")
    if n_clusters < 1:
        raise KMeansError(f"n_clusters must be at least 1, got {n_clusters}")
    if n_clusters > x.shape[0]:
        raise KMeansError(
            f"{where}: n_clusters={n_clusters} is more than the {x.shape[0]} frames to cluster "
            f"(dump more audio, raise --percent/--max-frames, or lower --n-clusters)"
        )
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise KMeansError(f"{where}: non-finite value (NaN or inf) at frame {row}, dim {col}")
    distinct = count_distinct_rows(x)
    if distinct < n_clusters:
        logger.warning(
            f"{where}: k={n_clusters} clusters but only {distinct} distinct frames among {x.shape[0]}: "
            f"at least {n_clusters - distinct} clusters will label nothing (lower --n-clusters, or "
            f"dump more varied audio)"
        )


def count_distinct_rows(x: np.ndarray) -> int:
    """Distinct rows of ``x``, counted by a random projection in float64: equal rows project
    equally, and distinct ones coincide with probability ~0, without sorting (n, d) rows."""
    projection = np.random.default_rng(0).standard_normal(x.shape[1])
    block = 65536  # float64 copies of a block, not of the whole sample
    projected = np.concatenate([x[i : i + block].astype(np.float64) @ projection for i in range(0, len(x), block)])
    return len(np.unique(projected))


def use_faiss_gpu() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------


def kmeans_plusplus(
    x: torch.Tensor,
    n_clusters: int,
    generator: torch.Generator,
    n_local_trials: Optional[int] = None,
    runs: Optional[int] = None,
) -> torch.Tensor:
    """Greedy k-means++ (sklearn's ``_kmeans_plusplus``) with all candidates of a step at once.

    ``x``: (n, d) float32 on any device; returns (n_clusters, d) rows of ``x``, or with ``runs``
    (runs, n_clusters, d): independent seedings stepped together, so that one pass over ``x`` per
    step serves them all (a step is a matrix product with a few columns: at 768 dims it is bound
    by reading ``x``, not by arithmetic). Centre the data before calling (``learn_kmeans`` does):
    distances are expanded as |x|^2 - 2 x.c + |c|^2 in float32, which is exact enough when the
    norms are those of centred data.
    """
    n = x.shape[0]
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    batch = runs or 1
    squared_norms = (x * x).sum(1)
    every_run = torch.arange(batch, device=x.device)

    def distances_to(rows: torch.Tensor) -> torch.Tensor:  # (len(rows), n)
        d = torch.addmm(squared_norms[None, :], x[rows], x.T, alpha=-2.0)
        return d.add_(squared_norms[rows][:, None]).clamp_min_(0.0)

    chosen = torch.empty(batch, n_clusters, dtype=torch.long, device=x.device)
    chosen[:, 0] = torch.randint(n, (batch,), generator=generator).to(x.device)
    closest = distances_to(chosen[:, 0])  # (runs, n)
    for c in range(1, n_clusters):
        # D^2 sampling by inverting the cumulative potential (float64: its sum spans n terms).
        cumulative = torch.cumsum(closest.double(), 1)
        draws = torch.rand(batch, trials, generator=generator, dtype=torch.float64).to(x.device) * cumulative[:, -1:]
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)  # (runs, trials)
        candidate_closest = torch.minimum(
            closest[:, None, :], distances_to(candidates.reshape(-1)).view(batch, trials, n)
        )
        best = candidate_closest.double().sum(2).argmin(1)
        chosen[:, c] = candidates[every_run, best]
        closest = candidate_closest[every_run, best]
    return x[chosen] if runs else x[chosen[0]]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class KMeansInfo:
    """How the centroids were made; saved next to them as JSON."""

    n_clusters: int
    dim: int
    niter: int
    n_init: int
    nredo: int
    seed: int
    training_frames: int
    seeding_frames: int
    inertia_per_frame: float  # mean squared distance to the nearest centroid, training frames
    seconds: float
    method: str = "greedy k-means++ (vectorised) + faiss Lloyd"
    source: dict = field(default_factory=dict)  # what the features were (set by the caller)


# Lloyd iterations first run on faiss's default sample of 256 frames per centroid (cheap, and
# the centroids move most then); the last ones on every training frame, which is what the
# inertia is measured on.
SAMPLED_POINTS_PER_CENTROID = 256
FULL_DATA_ITERATIONS = 5


def _faiss_lloyd(x: np.ndarray, init: np.ndarray, niter: int, seed: int, gpu: bool, points_per_centroid: int):
    km = faiss.Kmeans(
        x.shape[1],
        init.shape[0],
        niter=niter,
        seed=seed,
        gpu=gpu,
        max_points_per_centroid=points_per_centroid,
        min_points_per_centroid=1,  # our own check refuses k > n; faiss would only warn
        verbose=False,
    )
    km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return km.centroids.copy()


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, seed: int, gpu: bool) -> np.ndarray:
    """``niter`` Lloyd iterations from ``init`` with faiss (empty clusters are re-split): all but
    the last ``FULL_DATA_ITERATIONS`` on a sample of 256 frames per centroid, those on all."""
    full = min(niter, FULL_DATA_ITERATIONS)
    centroids = init
    if niter > full:
        centroids = _faiss_lloyd(x, centroids, niter - full, seed, gpu, SAMPLED_POINTS_PER_CENTROID)
    if full > 0:
        centroids = _faiss_lloyd(x, centroids, full, seed, gpu, len(x))
    return centroids


def learn_kmeans(
    x: np.ndarray,
    n_clusters: int,
    niter: int = 20,
    n_init: int = 3,
    nredo: int = 1,
    seed: int = 0,
    seeding_frames: Optional[int] = None,
    gpu: Optional[bool] = None,
    where: str = "features",
) -> "KMeansModel":
    """Cluster (n, d) float32 frames.

    ``n_init`` greedy k-means++ seedings, stepped together on one random sample of
    ``seeding_frames`` frames (default 100 per cluster), are ranked by their potential on it
    (sklearn's ``n_init``: cheap, and most of the quality); the ``nredo`` best then get ``niter``
    Lloyd iterations on all frames (faiss's ``nredo``), and the lowest inertia wins.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_training_data(x, n_clusters, where)
    if n_init < 1 or not 1 <= nredo <= n_init or niter < 0:
        raise KMeansError(f"need n_init >= 1, 1 <= nredo <= n_init, niter >= 0; got {n_init}, {nredo}, {niter}")
    gpu = use_faiss_gpu() if gpu is None else gpu
    device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
    seeding_frames = seeding_frames or 100 * n_clusters
    started = time.perf_counter()
    mean = x.mean(0, dtype=np.float64).astype(np.float32)
    centred = x - mean  # smaller norms for the float32 distance expansion; same clustering
    generator = torch.Generator().manual_seed(seed)
    rows = _seeding_rows(len(x), seeding_frames, generator)
    sample = centred if rows is None else centred[rows]
    inits = kmeans_plusplus(torch.from_numpy(sample).to(device), n_clusters, generator, runs=n_init).cpu().numpy()
    seedings = [(float(assign(sample, init, gpu)[1].sum(dtype=np.float64)) / len(sample), init) for init in inits]
    seedings.sort(key=lambda pair: pair[0])
    best, best_inertia = None, math.inf
    for redo, (potential, init) in enumerate(seedings[:nredo]):
        centroids = lloyd(centred, init, niter, seed + redo, gpu) if niter > 0 else init
        inertia = float(assign(centred, centroids, gpu)[1].sum(dtype=np.float64))
        logger.info(
            f"k-means run {redo + 1}/{nredo}: seeding potential {potential:.6g} per frame, "
            f"after {niter} Lloyd iterations {inertia / len(x):.6g}"
        )
        if inertia < best_inertia:
            best, best_inertia = centroids, inertia
    info = KMeansInfo(
        n_clusters=n_clusters,
        dim=x.shape[1],
        niter=niter,
        n_init=n_init,
        nredo=nredo,
        seed=seed,
        training_frames=len(x),
        seeding_frames=min(len(x), seeding_frames),
        inertia_per_frame=best_inertia / len(x),
        seconds=time.perf_counter() - started,
    )
    return KMeansModel(best + mean, info)


def _seeding_rows(n: int, seeding_frames: int, generator: torch.Generator) -> Optional[np.ndarray]:
    if seeding_frames <= 0 or n <= seeding_frames:
        return None
    return torch.randperm(n, generator=generator)[:seeding_frames].sort().values.numpy()


# ---------------------------------------------------------------------------------------------
# Assignment and the saved model
# ---------------------------------------------------------------------------------------------


def assign(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row: (labels int64, squared distances float32)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64), np.maximum(distances[:, 0], 0.0)


# Frames per chunk of nearest_centroids: the chunk's (rows, K) distances stay in the core's cache
# (1024 x 100 float32 is 400 KB), which is where sklearn's predict gets its speed; faiss's flat
# search was 0.85x sklearn's predict at 39 dims (scripts/kmeans_bench.py).
CHUNK_FRAMES = 1024


def _nearest_in_rows(x, out, start, stop, weights, bias, mean) -> None:
    """Labels of x[start:stop] into out, chunk by chunk: argmin of -2 x.c + |c|^2 (|x|^2 is the
    same for every centroid). With ``bias`` None, |c|^2 is the last row of ``weights`` and each
    chunk gets a column of ones (one product instead of a product and an add over the distances)."""
    dim = x.shape[1]
    buffer = np.empty((CHUNK_FRAMES, weights.shape[1]), dtype=np.float32)
    rows = np.ones((CHUNK_FRAMES, weights.shape[0]), dtype=np.float32)
    for a in range(start, stop, CHUNK_FRAMES):
        b = min(a + CHUNK_FRAMES, stop)
        distances, chunk = buffer[: b - a], rows[: b - a]
        np.subtract(x[a:b], mean, out=chunk[:, :dim])  # centred: the products stay small (precision)
        np.dot(chunk, weights, out=distances)
        if bias is not None:
            distances += bias
        out[a:b] = distances.argmin(axis=1)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, threads: Optional[int] = None) -> np.ndarray:
    """Index of each row's L2-nearest centroid (int64), on the CPU: 1024-frame chunks, a
    single-threaded BLAS product each, split over ``threads`` Python threads (default: faiss's
    OpenMP threads, i.e. OMP_NUM_THREADS); numpy's product and argmin release the GIL."""
    x = np.asarray(x, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    mean = centroids.mean(axis=0)
    centred = centroids - mean
    weights = -2.0 * centred.T  # (D, K)
    bias = (centred * centred).sum(axis=1)
    # Folding |c|^2 into the product costs a copy of each chunk (D per row) and saves a pass over
    # its distances (K per row): it pays when D < K (39-dim MFCCs and 100 clusters, not 768-dim layers).
    folded = x.shape[1] < len(centroids)
    if folded:
        weights, bias = np.vstack([weights, bias[None]]), None
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int64)
    if len(x) == 0:
        return labels
    threads = max(1, min(threads or faiss.omp_get_max_threads(), math.ceil(len(x) / CHUNK_FRAMES)))
    bounds = [len(x) * i // threads // CHUNK_FRAMES * CHUNK_FRAMES for i in range(threads)] + [len(x)]
    parts = [(bounds[i], bounds[i + 1]) for i in range(threads) if bounds[i] < bounds[i + 1]]
    with _blas_controller().limit(limits=1, user_api="blas"):
        jobs = [_thread_pool().submit(_nearest_in_rows, x, labels, a, b, weights, bias, mean) for a, b in parts[1:]]
        _nearest_in_rows(x, labels, *parts[0], weights, bias, mean)
        for job in jobs:
            job.result()
    return labels


@functools.lru_cache(maxsize=None)
def _thread_pool():
    """Made once: a pool per call cost 0.4 ms, 4% of a 65536-frame block's search."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="nearest_centroids")


@functools.lru_cache(maxsize=None)
def _blas_controller():
    """Made once: threadpool_limits() scans the loaded libraries on every call (0.2 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


# Frames per predict call (pseudo_labels groups utterances into such blocks) and per faiss GPU
# search: memory stays bounded on a long manifest's shards.
PREDICT_BLOCK_FRAMES = 1 << 16


class KMeansModel:
    """Centroids (K, D) float32 and how they were made; ``predict`` labels frames."""

    def __init__(self, centroids: np.ndarray, info: Optional[KMeansInfo] = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.info = info
        self._index = None

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def predict(self, x: np.ndarray, where: str = "features") -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise KMeansError(f"{where}: features of shape {x.shape}, the centroids are {self.dim}-dim")
        if not use_faiss_gpu():
            return nearest_centroids(x, self.centroids)
        if self._index is None:
            self._index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(self.dim))
            self._index.add(self.centroids)
        labels = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), PREDICT_BLOCK_FRAMES):
            block = np.ascontiguousarray(x[start : start + PREDICT_BLOCK_FRAMES], dtype=np.float32)
            labels[start : start + len(block)] = self._index.search(block, 1)[1][:, 0]
        return labels

    def inertia(self, x: np.ndarray) -> float:
        """Sum of squared distances to the nearest centroid (sklearn's ``inertia_``)."""
        return float(assign(x, self.centroids)[1].sum(dtype=np.float64))

    def save(self, path: str) -> str:
        """Write ``path`` (.npy centroids) and ``path`` with .json (the info); returns the JSON path."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        json_path = info_path(path)
        with OutputLock(directory, os.path.basename(path)):
            atomic_write_json(json_path, asdict(self.info) if self.info else {})
            # The centroids last: their presence means the save finished.
            atomic_write(path, lambda f: np.save(f, self.centroids))
        return json_path

    @classmethod
    def load(cls, path: str) -> "KMeansModel":
        """Our ``.npy`` centroids and their ``.json``, checked. Pickles (fairseq's joblib k-means
        files) are refused: loading one runs whatever code its maker put in it."""
        if not os.path.isfile(path):
            raise KMeansError(f"{path}: k-means file not found (scripts/learn_kmeans.py writes it)")
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        if not is_npy:
            raise KMeansError(
                f"{path}: not a numpy .npy file (a joblib/pickle k-means from fairseq's learn_kmeans.py?); "
                f"pickles are not loaded, since loading one runs its maker's code. Convert a file you trust "
                f"once: python -c \"import joblib, numpy; numpy.save('km.npy', "
                f"joblib.load('{os.path.basename(path)}').cluster_centers_.astype('float32'))\", "
                f"or learn it again with scripts/learn_kmeans.py"
            )
        try:
            centroids = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            raise KMeansError(
                f"{path}: truncated or damaged .npy ({err}); learn it again with scripts/learn_kmeans.py"
            ) from err
        if centroids.ndim != 2 or centroids.shape[0] == 0:
            raise KMeansError(f"{path}: expected (n_clusters, dim) centroids, got shape {centroids.shape}")
        if not np.issubdtype(centroids.dtype, np.floating):
            raise KMeansError(f"{path}: expected float centroids, got {centroids.dtype}")
        if not np.isfinite(centroids).all():
            raise KMeansError(f"{path}: centroids hold NaN or inf")
        return cls(centroids, _load_info(info_path(path), centroids.shape))


def info_path(centroids_path: str) -> str:
    stem = centroids_path[:-4] if centroids_path.endswith(".npy") else centroids_path
    return stem + ".json"


def _load_info(path: str, shape) -> Optional[KMeansInfo]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise KMeansError(f"{path}: not readable JSON ({err}); learn the k-means again") from err
    if saved == {}:  # centroids saved without info
        return None
    if not isinstance(saved, dict):
        raise KMeansError(f"{path}: expected a JSON object of KMeansInfo fields")
    known = {f.name for f in fields(KMeansInfo)}
    extra, missing = sorted(set(saved) - known), sorted(
        f.name for f in fields(KMeansInfo) if f.default is MISSING and f.default_factory is MISSING and f.name not in saved
    )
    if extra or missing:
        raise KMeansError(
            f"{path}: " + "; ".join(
                ([f"unknown key(s) {extra}"] if extra else []) + ([f"missing key(s) {missing}"] if missing else [])
            ) + f" (the fields are {sorted(known)}): fix the file or learn the k-means again"
        )
    info = KMeansInfo(**saved)
    if (info.n_clusters, info.dim) != tuple(shape):
        raise KMeansError(
            f"{path}: describes {info.n_clusters} x {info.dim} centroids, the .npy next to it holds "
            f"{shape[0]} x {shape[1]}: the two files are from different runs; learn the k-means again"
        )
    return info
