#!/usr/bin/env python3
"""Our k-means (greedy k-means++ seeding + faiss Lloyd) against fairseq's sklearn recipe.

    scripts/kmeans_bench.py [--threads 2] [--seed 0]

Two cases, the same features for both methods:
  1. 100k frames x 39 dims (MFCC-like: a mixture of 256 diagonal Gaussians whose scales decay
     along the cepstral axis, deltas and delta-deltas smaller still), K=100;
  2. 10k frames x 768 dims (transformer-layer-like: a 256-component mixture in a 96-dim subspace,
     projected to 768 dims, plus isotropic noise), K=100.
fairseq's recipe is examples/hubert/simple_kmeans/learn_kmeans.py: sklearn MiniBatchKMeans with
k-means++, batch 10000, max_iter 100, n_init 20, max_no_improvement 100, reassignment_ratio 0,
tol 0. Ours is audio_ssl_ext.clustering.kmeans.learn_kmeans with its defaults (what
scripts/learn_kmeans.py runs). Per case it prints both wall times, the speedup (sklearn / ours),
the inertia ratio (ours / sklearn, both on all frames, computed the same way) and label
assignment throughput (KMeansModel.predict vs sklearn's predict, median of interleaved repeats);
the last line is
    kmeans_bench: speedup_min=<x> inertia_ratio_max=<y> assign_vs_sklearn_min=<z>
Both run in this process with the same thread limit (--threads, via threadpoolctl, torch and
faiss). OpenMP threads wait passively unless OMP_WAIT_POLICY says otherwise: on a shared machine
spinning threads slow every method several-fold. The load average is printed: timings taken
while other processes run are noisy.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any OpenMP runtime starts

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from audio_ssl_ext.tools.timing import interleaved_pairs  # noqa: E402


def mfcc_like(n: int, seed: int, components: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 2.0))
    z = rng.choice(components, n, p=weights)
    cepstral = np.exp(-np.arange(13) / 6.0) * 10  # coefficient scales decay, as MFCCs' do
    scale = np.concatenate([cepstral, 0.4 * cepstral, 0.15 * cepstral])  # + deltas, delta-deltas
    means = rng.normal(size=(components, 39)) * scale
    stds = rng.uniform(0.3, 0.8, (components, 39)) * scale
    return (means[z] + rng.normal(size=(n, 39)) * stds[z]).astype(np.float32)


def hidden_like(n: int, seed: int, components: int = 256, dim: int = 768, rank: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 2.0))
    z = rng.choice(components, n, p=weights)
    low = rng.normal(size=(components, rank))[z] + rng.normal(size=(n, rank)) * rng.uniform(0.4, 0.9, (components, rank))[z]
    projection = rng.normal(size=(rank, dim)) / np.sqrt(rank)
    return (low @ projection + 0.3 * rng.normal(size=(n, dim)) + rng.normal(size=dim)).astype(np.float32)


def fairseq_recipe(n_clusters: int, seed: int):
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        verbose=0,
        compute_labels=False,
        tol=0.0,
        max_no_improvement=100,
        init_size=None,
        n_init=20,
        reassignment_ratio=0.0,
        random_state=seed,
    )


ASSIGN_REPEATS = 21


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def run_case(name: str, x: np.ndarray, n_clusters: int, seed: int, threads: int) -> tuple:
    from threadpoolctl import threadpool_limits

    from audio_ssl_ext.clustering.kmeans import KMeansModel, learn_kmeans

    print(f"[{name}] {x.shape[0]} frames x {x.shape[1]} dims, K={n_clusters}, load average {os.getloadavg()[0]:.2f}", flush=True)
    with threadpool_limits(threads):
        started = time.perf_counter()
        reference = fairseq_recipe(n_clusters, seed).fit(x)
        sklearn_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours = learn_kmeans(x, n_clusters, seed=seed)
        our_seconds = time.perf_counter() - started
        theirs = KMeansModel(reference.cluster_centers_)
        sklearn_inertia, our_inertia = theirs.inertia(x), ours.inertia(x)
        # one predict of 100k frames takes ~15 ms: the median of interleaved repeats
        seconds = interleaved_pairs(lambda: timed(ours.predict, x), lambda: timed(reference.predict, x), ASSIGN_REPEATS)
        assign_rate, sklearn_assign_rate = (len(x) / float(np.median(s)) for s in zip(*seconds))
    speedup = sklearn_seconds / our_seconds
    ratio = our_inertia / sklearn_inertia
    print(f"[{name}] sklearn (fairseq recipe): {sklearn_seconds:.2f} s, inertia {sklearn_inertia:.6g}", flush=True)
    print(
        f"[{name}] ours (n_init={ours.info.n_init}, nredo={ours.info.nredo}, niter={ours.info.niter}): "
        f"{our_seconds:.2f} s, inertia {our_inertia:.6g}",
        flush=True,
    )
    print(
        f"[{name}] speedup {speedup:.1f}x, inertia ratio {ratio:.4f}, assignment {assign_rate:,.0f} frames/s "
        f"(sklearn predict {sklearn_assign_rate:,.0f} frames/s), load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return speedup, ratio, assign_rate / sklearn_assign_rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads for both methods (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    results = [
        run_case("100k x 39", mfcc_like(100_000, args.seed), 100, args.seed, args.threads),
        run_case("10k x 768", hidden_like(10_000, args.seed), 100, args.seed, args.threads),
    ]
    speedup_min = min(s for s, _, _ in results)
    inertia_ratio_max = max(r for _, r, _ in results)
    assign_min = min(a for _, _, a in results)
    print(f"kmeans_bench: speedup_min={speedup_min:.1f} inertia_ratio_max={inertia_ratio_max:.4f} "
          f"assign_vs_sklearn_min={assign_min:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
