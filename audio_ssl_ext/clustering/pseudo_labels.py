"""Label files from k-means: ``{label_dir}/{split}.{name}`` and ``dict.{name}.txt``, checked.

The two failures users of fairseq's HuBERT and MERT report most are prevented here, where the
labels are made, rather than discovered after a day of training:

- a missing or partial dictionary (fairseq maps unknown ids to ``<unk>``, and training silently
  learns nothing): the dictionary is always written, with every cluster id;
- labels at another frame rate than the training config's ``label_rate``: frames per utterance
  are checked against the manifest's sample counts at that rate, with the tolerance the
  ``waveform_pretraining`` task applies when it loads them.

Shards are checked against the manifest's content and the k-means' feature source first
(``dump.check_shards``); the label file is written under the lock of ``{split}.{name}``.
"""

import logging
import os
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from audio_ssl_ext.clustering.dump import check_shards
from audio_ssl_ext.clustering.kmeans import PREDICT_BLOCK_FRAMES, KMeansModel
from audio_ssl_ext.clustering.shards import check_finite, read_shards
from audio_ssl_ext.data.labels import LabelError, expected_frames
from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.durable import OutputLock, atomic_write, atomic_write_text

logger = logging.getLogger(__name__)


def dictionary_lines(n_clusters: int) -> List[str]:
    """fairseq Dictionary lines (``symbol count``), one per cluster id, as fairseq's HuBERT recipe."""
    return [f"{i} 1" for i in range(n_clusters)]


def write_dictionary(label_dir: str, name: str, n_clusters: int) -> str:
    """Write ``dict.{name}.txt`` with ids 0..K-1; an existing one must be the same."""
    path = os.path.join(label_dir, f"dict.{name}.txt")
    lines = dictionary_lines(n_clusters)
    if os.path.isfile(path):
        with open(path) as f:
            existing = f.read().splitlines()
        if existing != lines:
            raise LabelError(
                f"{path} exists and lists {len(existing)} symbols, not the ids 0..{n_clusters - 1} of this "
                f"k-means: labels of another clustering are there; use another --name or label dir"
            )
        return path
    os.makedirs(label_dir, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")  # two writers write the same text
    return path


def apply_kmeans(
    feat_dir: str,
    split: str,
    nshard: int,
    km_path: str,
    label_dir: str,
    name: str,
    manifest_path: str,
    label_rate: Optional[float] = None,
    sample_rate: Optional[int] = None,
    tolerance_seconds: float = 0.1,
    progress: bool = True,
) -> str:
    """Label every frame of the split's shards with its nearest centroid.

    Writes ``{label_dir}/{split}.{name}`` (one line of ids per manifest line, manifest order) and
    ``dict.{name}.txt``. ``label_rate`` is the ``task.label_rate`` training will use and
    ``sample_rate`` the audio's; both default to the rates recorded with the shards. Returns the
    label file's path.
    """
    model = KMeansModel.load(km_path)
    shards = read_shards(feat_dir, split, nshard)
    manifest = read_manifest(manifest_path)
    if shards[0].dim != model.dim:
        raise LabelError(f"{feat_dir}: {split} features are {shards[0].dim}-dim, the k-means {km_path} is {model.dim}-dim")
    # The manifest by content (a reordered one has the same count and lengths) and the source
    # (layers or checkpoints of equal width fit the centroids' shape as well).
    kmeans_source = model.info.source if model.info is not None and model.info.source else None
    info = check_shards(feat_dir, split, nshard, manifest_path, kmeans_source, f"the k-means {km_path}")
    dumped_sample_rate, dumped_rate = (int(info["sample_rate"]), float(info["frame_rate"])) if info else (None, None)
    if label_rate is None or sample_rate is None:
        if dumped_rate is None:
            raise LabelError(
                f"{feat_dir}: no {split}_*_{nshard}.json with the rates the features were dumped at: "
                f"pass --label-rate and --sample-rate"
            )
        label_rate = dumped_rate if label_rate is None else label_rate
        sample_rate = dumped_sample_rate if sample_rate is None else sample_rate
    if dumped_rate is not None and abs(dumped_rate - label_rate) > 1e-6:
        raise LabelError(
            f"{feat_dir}: features of {split} were dumped at {dumped_rate:g} frames/s, but the labels are "
            f"meant for label_rate {label_rate:g}: dump at that rate or train with task.label_rate={dumped_rate:g}"
        )
    utterances = sum(len(s) for s in shards)
    if utterances != len(manifest):
        raise LabelError(
            f"{feat_dir}: the {nshard} shard(s) of {split} hold {utterances} utterances (their .len lines), "
            f"but {manifest.path} has {len(manifest)} entries: features dumped from another manifest?"
        )
    path = os.path.join(label_dir, f"{split}.{name}")

    def write(out) -> None:
        entry = 0
        with tqdm(total=utterances, desc=f"labels {split}.{name}", unit="file", disable=not progress) as bar:
            for shard in shards:
                # utterances grouped into blocks of about PREDICT_BLOCK_FRAMES rows, one predict each:
                # one call per utterance spent more time in the call than in the search
                first = 0
                while first < len(shard):
                    last, rows = first, 0
                    while last < len(shard) and (rows == 0 or rows + shard.lengths[last] <= PREDICT_BLOCK_FRAMES):
                        _check_length(shard, last, manifest, entry + last - first, sample_rate, label_rate,
                                      tolerance_seconds)
                        check_finite(shard.utterance(last),
                                     f"{shard.npy_path} (utterance {last + 1}, {shard.len_path} line {last + 1})")
                        rows += shard.lengths[last]
                        last += 1
                    start = shard.offsets[first]
                    labels = model.predict(shard.features[start : start + rows], shard.npy_path)
                    for i in range(first, last):
                        begin = shard.offsets[i] - start
                        out.write(" ".join(map(str, labels[begin : begin + shard.lengths[i]].tolist())) + "\n")
                    entry += last - first
                    bar.update(last - first)
                    first = last

    with OutputLock(label_dir, f"{split}.{name}"):
        write_dictionary(label_dir, name, model.n_clusters)
        atomic_write(path, write, mode="w")
    logger.info(f"wrote {path} ({utterances} lines, {model.n_clusters} clusters at {label_rate:g} Hz)")
    return path


def _check_length(shard, i, manifest, entry, sample_rate, label_rate, tolerance_seconds) -> None:
    frames = int(shard.lengths[i])
    expected = expected_frames(manifest.sizes[entry], sample_rate, label_rate)
    if abs(frames - expected) > tolerance_seconds * label_rate:
        raise LabelError(
            f"{shard.len_path}, line {i + 1}: {frames} frames for {manifest.path}, line "
            f"{manifest.line_numbers[entry]} ({manifest.sizes[entry]} samples), expected about {expected:.1f} "
            f"at label_rate {label_rate:g} Hz and sample_rate {sample_rate} Hz: dumped at another frame rate, "
            f"or from another manifest?"
        )
