"""Side-by-side timing for the benchmark scripts (train_bench, mwmha_bench, kmeans_bench)."""

from typing import Callable, List, Tuple, TypeVar

T = TypeVar("T")


def interleaved_pairs(ours: Callable[[], T], other: Callable[[], T], pairs: int, warmup: int = 0,
                      progress: Callable = iter) -> List[Tuple[T, T]]:
    """``pairs`` x (ours(), other()), run back to back; each callable returns its own timing.

    Which of the two runs first alternates from pair to pair: the first run of a pair inherits the
    caches and the allocator state the other left, so a fixed order biases the ratio. ``progress``
    wraps the pair range (e.g. a tqdm)."""
    for _ in range(warmup):
        ours(), other()
    timings = []
    for pair in progress(range(pairs)):
        if pair % 2 == 0:
            a, b = ours(), other()
        else:
            b, a = other(), ours()
        timings.append((a, b))
    return timings
