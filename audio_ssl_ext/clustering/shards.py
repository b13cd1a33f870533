"""Feature shards in fairseq's format: ``{split}_{rank}_{nshard}.npy`` plus ``.len``.

fairseq's ``examples/hubert/simple_kmeans`` scripts write, per shard, one float32 array of all
frames of its utterances stacked in manifest order, and a text file with the number of frames of
each utterance, one per line. Shard ``rank`` of ``nshard`` holds manifest lines
[round(N * rank / nshard), round(N * (rank + 1) / nshard)), so concatenating the ranks gives the
manifest order back. Users' habits and their existing feature dirs carry over unchanged.

Writing appends (memory stays flat whatever the corpus size) into temporary files unique to the
writer, fsynced and renamed when the shard is complete (``audio_ssl_ext.durable``), so a shard
that exists is a shard that was finished; a lock per shard refuses a second writer. Reading
goes through memory maps and checks what fairseq's scripts assume: the ``.len`` sums to the rows,
the shard is not empty, and features are finite.
"""

import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from audio_ssl_ext.durable import OutputLock, publish, raise_if_disk_full, remove_quietly, temp_path

# The .npy header is written once with room for the final shape and rewritten on close; 128
# bytes hold any 2-D float32 shape (numpy pads headers to a multiple of 64 bytes).
_HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


class ShardError(ValueError):
    """A feature shard that cannot be used as it is (the message names the file)."""


def shard_range(num_items: int, rank: int, nshard: int) -> Tuple[int, int]:
    """Manifest lines [start, end) of shard ``rank`` (fairseq's ``get_shard_range``)."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ValueError(f"need 0 <= rank < nshard, got rank={rank}, nshard={nshard}")
    start = round(num_items / nshard * rank)
    end = round(num_items / nshard * (rank + 1))
    if start >= end:
        raise ValueError(
            f"shard {rank} of {nshard} over {num_items} manifest lines is empty: use fewer shards"
        )
    return start, end


def shard_paths(feat_dir: str, split: str, rank: int, nshard: int) -> Tuple[str, str]:
    stem = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    return f"{stem}.npy", f"{stem}.len"


def shard_exists(feat_dir: str, split: str, rank: int, nshard: int) -> bool:
    return all(os.path.isfile(p) for p in shard_paths(feat_dir, split, rank, nshard))


def _npy_header(rows: int, dim: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    room = _HEADER_BYTES - len(_MAGIC) - 2 - 1  # 2 bytes of header length, 1 newline
    if len(text) > room:
        raise ShardError(f"shape ({rows}, {dim}) does not fit the reserved .npy header")
    text = text.ljust(room) + "\n"
    return _MAGIC + len(text).to_bytes(2, "little") + text.encode("latin1")


class ShardWriter:
    """Appends (frames, dim) float32 blocks to a shard; ``close()`` publishes it.

    Use as a context manager: on an exception the temporary files are removed and nothing named
    like a finished shard is left behind. The shard is locked while it is written (a second
    writer of the same shard is refused, naming the first; other shards of the folder stay free
    for parallel jobs) and its temporary names are unique to the writer.
    """

    def __init__(self, feat_dir: str, split: str, rank: int, nshard: int):
        os.makedirs(feat_dir, exist_ok=True)
        self.npy_path, self.len_path = shard_paths(feat_dir, split, rank, nshard)
        self._npy = self._len = None
        self._npy_tmp, self._len_tmp = temp_path(self.npy_path), temp_path(self.len_path)
        self._lock = OutputLock(feat_dir, f"{split}_{rank}_{nshard}").__enter__()
        try:
            self._npy = open(self._npy_tmp, "wb")
            self._len = open(self._len_tmp, "w")
            self._npy.write(_npy_header(0, 0))
        except OSError as err:
            self.abort()
            raise_if_disk_full(err, self.npy_path)
            raise
        self.rows = 0
        self.dim = None
        self.utterances = 0

    def append(self, features: np.ndarray, source: str) -> None:
        """Add one utterance's frames; ``source`` names it in error messages."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] == 0:
            raise ShardError(f"{source}: expected (frames > 0, dim) features, got shape {features.shape}")
        if self.dim is None:
            self.dim = features.shape[1]
        elif features.shape[1] != self.dim:
            raise ShardError(
                f"{source}: {features.shape[1]}-dim features, earlier utterances of "
                f"{self.npy_path} have {self.dim}"
            )
        if not np.isfinite(features).all():
            bad = np.argwhere(~np.isfinite(features))[0]
            raise ShardError(
                f"{source}: non-finite feature value (NaN or inf) at frame {bad[0]}, dim {bad[1]}; "
                f"nothing written to {self.npy_path}"
            )
        try:
            self._npy.write(np.ascontiguousarray(features, dtype="<f4").tobytes())
            self._len.write(f"{features.shape[0]}\n")
        except OSError as err:
            raise_if_disk_full(err, self.npy_path)
            raise
        self.rows += features.shape[0]
        self.utterances += 1

    def close(self) -> None:
        if self.dim is None:
            self.abort()
            raise ShardError(f"{self.npy_path}: no utterance to write (empty shard)")
        try:
            self._npy.seek(0)
            self._npy.write(_npy_header(self.rows, self.dim))
            self._npy.close()
            self._len.close()
            # The .len first: the .npy's presence means the shard is complete (shard_exists).
            publish(self._len_tmp, self.len_path)
            publish(self._npy_tmp, self.npy_path)
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise_if_disk_full(err, self.npy_path)
            raise
        self._unlock()

    def abort(self) -> None:
        for f in (self._npy, self._len):
            if f is not None:
                f.close()
        for tmp in (self._npy_tmp, self._len_tmp):
            remove_quietly(tmp)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


@dataclass
class Shard:
    """One shard, memory-mapped: ``features`` (rows, dim) float32 and frames per utterance."""

    npy_path: str
    len_path: str
    features: np.ndarray
    lengths: np.ndarray  # int64, frames per utterance
    offsets: np.ndarray  # int64, first row of each utterance

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.lengths)

    def utterance(self, i: int) -> np.ndarray:
        return self.features[self.offsets[i] : self.offsets[i] + self.lengths[i]]


def read_lengths(len_path: str) -> np.ndarray:
    if not os.path.isfile(len_path):
        raise ShardError(f"{len_path}: .len file not found (it lists frames per utterance)")
    lengths = []
    with open(len_path) as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text.isdigit() or int(text) == 0:
                raise ShardError(f"{len_path}, line {number}: expected a positive frame count, got {text!r}")
            lengths.append(int(text))
    if not lengths:
        raise ShardError(f"{len_path}: empty (the shard has no utterances)")
    return np.asarray(lengths, dtype=np.int64)


def read_shard(feat_dir: str, split: str, rank: int, nshard: int) -> Shard:
    """Open a shard through a memory map, after checking it against its ``.len``."""
    npy_path, len_path = shard_paths(feat_dir, split, rank, nshard)
    if not os.path.isfile(npy_path):
        raise ShardError(f"{npy_path}: feature shard not found (scripts/dump_features.py writes it)")
    try:
        features = np.load(npy_path, mmap_mode="r")
    except ValueError as err:  # numpy cannot map an empty or truncated file
        raise ShardError(f"{npy_path}: not a readable .npy array ({err})") from err
    if features.ndim != 2:
        raise ShardError(f"{npy_path}: expected a 2-D (frames, dim) array, got shape {features.shape}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ShardError(f"{npy_path}: empty shard (shape {features.shape})")
    if features.dtype != np.float32:
        raise ShardError(f"{npy_path}: expected float32 features, got {features.dtype}")
    lengths = read_lengths(len_path)
    if int(lengths.sum()) != features.shape[0]:
        raise ShardError(
            f"{len_path}: frame counts sum to {int(lengths.sum())}, but {npy_path} has "
            f"{features.shape[0]} rows (the two files are from different runs?)"
        )
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Shard(npy_path, len_path, features, lengths, offsets)


def read_shards(feat_dir: str, split: str, nshard: int) -> List[Shard]:
    shards = [read_shard(feat_dir, split, rank, nshard) for rank in range(nshard)]
    dims = {s.dim for s in shards}
    if len(dims) > 1:
        raise ShardError(f"{feat_dir}: shards of {split} have different dims {sorted(dims)}")
    return shards


def check_finite(features: np.ndarray, where: str, first_row: int = 0) -> None:
    """Raise naming ``where`` and the row when ``features`` holds NaN or inf."""
    finite = np.isfinite(features)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ShardError(
            f"{where}: non-finite feature value (NaN or inf) at row {first_row + int(row)}, dim {int(col)}"
        )


def iter_utterances(shards: Sequence[Shard]) -> Iterator[Tuple[Shard, int, np.ndarray]]:
    """(shard, index in shard, frames) for every utterance, in manifest order."""
    for shard in shards:
        for i in range(len(shard)):
            yield shard, i, shard.utterance(i)


def sample_rows(
    shards: Sequence[Shard],
    percent: float = -1.0,
    max_frames: int = -1,
    seed: int = 0,
    read_block_rows: int = 65536,
) -> np.ndarray:
    """A float32 (n, dim) sample of the shards' frames, read through the memory maps.

    ``percent`` in (0, 1] takes that fraction of the utterances (fairseq's ``--percent``; -1: all);
    ``max_frames`` > 0 then caps the sample at that many frames, drawn uniformly without
    replacement. Only the sampled rows are read and only their indices are held, so memory is
    bounded by the sample. Rows come back in shard order (k-means does not care). Raises on
    NaN/inf, naming the shard and row.
    """
    rng = np.random.default_rng(seed)
    chosen = [_chosen_utterances(shard, percent, rng) for shard in shards]
    totals = [int(shard.lengths[c].sum()) for shard, c in zip(shards, chosen)]
    grand_total = sum(totals)
    if max_frames > 0 and grand_total > max_frames:
        keep = np.sort(rng.choice(grand_total, max_frames, replace=False))
        bounds = np.cumsum([0] + totals)
        rows_per_shard = [
            _positions_to_rows(shard, c, keep[(keep >= lo) & (keep < hi)] - lo)
            for shard, c, lo, hi in zip(shards, chosen, bounds[:-1], bounds[1:])
        ]
    else:
        rows_per_shard = [_ranges_to_rows(shard.offsets[c], shard.lengths[c]) for shard, c in zip(shards, chosen)]
    out = np.empty((sum(len(r) for r in rows_per_shard), shards[0].dim), dtype=np.float32)
    filled = 0
    for shard, rows in zip(shards, rows_per_shard):
        for begin in range(0, len(rows), read_block_rows):
            block_rows = rows[begin : begin + read_block_rows]
            block = _read_rows(shard.features, block_rows)
            if not np.isfinite(block).all():
                _raise_non_finite(shard, block, block_rows)
            out[filled : filled + len(block)] = block
            filled += len(block)
    return out


def check_percent(percent: float) -> None:
    """fairseq's ``--percent``: a share in (0, 1], or -1 for all (checked before any shard is read)."""
    if not (0 < percent <= 1 or percent == -1):
        raise ShardError(f"--percent {percent:g}: the share of utterances must be in (0, 1], or -1 for all")


def _chosen_utterances(shard: Shard, percent: float, rng: np.random.Generator) -> np.ndarray:
    check_percent(percent)
    if percent == -1 or percent == 1:
        return np.arange(len(shard))
    count = max(1, int(np.ceil(len(shard) * percent)))
    return np.sort(rng.choice(len(shard), count, replace=False))


def _positions_to_rows(shard: Shard, utterances: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sorted positions within the concatenated frames of ``utterances`` -> rows of the shard."""
    lengths = shard.lengths[utterances]
    ends = np.cumsum(lengths)
    which = np.searchsorted(ends, positions, side="right")
    return shard.offsets[utterances][which] + positions - (ends[which] - lengths[which])


def _raise_non_finite(shard: Shard, block: np.ndarray, block_rows: np.ndarray) -> None:
    row, col = np.argwhere(~np.isfinite(block))[0]
    raise ShardError(
        f"{shard.npy_path}: non-finite feature value (NaN or inf) at row {int(block_rows[row])}, dim {int(col)}"
    )


def _ranges_to_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [start, start + length) for each pair, vectorised."""
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    rows = np.ones(total, dtype=np.int64)
    rows[0] = starts[0]
    rows[ends[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(rows)


def _read_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a memory map; contiguous runs are sliced (one read) rather than fancy-indexed."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return np.asarray(features[rows[0] : rows[-1] + 1], dtype=np.float32)
    return np.asarray(features[rows], dtype=np.float32)

