"""How good are the pseudo-labels: usage, entropy, and agreement with reference frame labels.

The measures are HuBERT's (Hsu et al., 2021, section "analysis of the clustering"), with frame
reference labels (pitch, events, phones) in place of phones. With z the cluster id and y the
reference label of a frame, and p their joint distribution over all frames:

- ``purity`` = E_z[max_y p(y|z)] (HuBERT's "phone purity"): the frame accuracy of mapping each
  cluster to its most frequent reference label;
- ``cluster_purity`` = E_y[max_z p(z|y)]: how concentrated each reference label is in one cluster;
- ``pnmi`` = I(y; z) / H(y) (phone-normalised mutual information): the fraction of the reference
  labels' uncertainty that the cluster id removes; 0 for unrelated labels, 1 when y is a function
  of z.

Usage: the histogram of cluster ids, its entropy in bits (log2 K when all clusters are equally
used) and the number of clusters used at all; a collapsed clustering shows up here first.
"""

import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from audio_ssl_ext.data.labels import LabelError
from audio_ssl_ext.data.manifest import Manifest


def histogram(labels: Sequence[np.ndarray], n_clusters: int) -> np.ndarray:
    counts = np.zeros(n_clusters, dtype=np.int64)
    for sequence in labels:
        counts += np.bincount(sequence, minlength=n_clusters)[:n_clusters]
    return counts


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def joint_counts(labels: np.ndarray, references: np.ndarray):
    """Contingency table: rows = reference labels, columns = cluster ids (both compacted)."""
    if labels.shape != references.shape:
        raise ValueError(f"{labels.shape} cluster ids vs {references.shape} reference labels")
    _, z = np.unique(labels, return_inverse=True)
    _, y = np.unique(references, return_inverse=True)
    table = np.zeros((y.max() + 1, z.max() + 1), dtype=np.int64)
    np.add.at(table, (y, z), 1)
    return table


def pnmi(table: np.ndarray) -> float:
    """I(y; z) / H(y) of a (reference, cluster) count table; 0 when H(y) = 0."""
    p = table / table.sum()
    py, pz = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nonzero = p > 0
    mutual = float((p[nonzero] * np.log(p[nonzero] / (py @ pz)[nonzero])).sum())
    h_y = float(-(py[py > 0] * np.log(py[py > 0])).sum())
    return mutual / h_y if h_y > 0 else 0.0


def purity(table: np.ndarray) -> float:
    """E_z[max_y p(y|z)] = sum_z max_y p(y, z)."""
    return float(table.max(0).sum() / table.sum())


def cluster_purity(table: np.ndarray) -> float:
    """E_y[max_z p(z|y)] = sum_y max_z p(y, z)."""
    return float(table.max(1).sum() / table.sum())


@dataclass
class QualityReport:
    frames: int
    n_clusters: int
    used_clusters: int
    entropy_bits: float
    max_entropy_bits: float
    pnmi: Optional[float] = None
    purity: Optional[float] = None
    cluster_purity: Optional[float] = None
    reference_labels: Optional[int] = None  # distinct reference labels

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def format(self) -> str:
        text = (
            f"frames={self.frames} clusters used={self.used_clusters}/{self.n_clusters} "
            f"entropy={self.entropy_bits:.3f} bits (max {self.max_entropy_bits:.3f})"
        )
        if self.pnmi is not None:
            text += (
                f" | vs {self.reference_labels} reference labels: PNMI={self.pnmi:.4f} "
                f"purity={self.purity:.4f} cluster_purity={self.cluster_purity:.4f}"
            )
        return text


def cluster_quality(
    labels: Sequence[np.ndarray], n_clusters: int, references: Optional[Sequence[np.ndarray]] = None
) -> QualityReport:
    """Usage statistics of ``labels`` (one int array per utterance), and agreement with
    ``references`` (aligned arrays of the same lengths) when given."""
    counts = histogram(labels, n_clusters)
    report = QualityReport(
        frames=int(counts.sum()),
        n_clusters=n_clusters,
        used_clusters=int((counts > 0).sum()),
        entropy_bits=entropy_bits(counts),
        max_entropy_bits=float(np.log2(n_clusters)),
    )
    if references is not None:
        table = joint_counts(np.concatenate(list(labels)), np.concatenate(list(references)))
        report.pnmi = pnmi(table)
        report.purity = purity(table)
        report.cluster_purity = cluster_purity(table)
        report.reference_labels = table.shape[0]
    return report


# ---------------------------------------------------------------------------------------------
# Reading labels and aligning references
# ---------------------------------------------------------------------------------------------


def read_label_lines(path: str, manifest: Optional[Manifest] = None) -> List[np.ndarray]:
    """A label file (one line of integer ids per utterance) as int64 arrays; with ``manifest``,
    its line count must match."""
    if not os.path.isfile(path):
        raise LabelError(f"{path}: label file not found")
    sequences = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                sequences.append(np.array([int(v) for v in line.split()], dtype=np.int64))
            except ValueError as err:
                raise LabelError(f"{path}, line {number}: labels must be integers ({err})") from err
    if manifest is not None and len(sequences) != len(manifest):
        raise LabelError(
            f"{path}: {len(sequences)} lines, but the manifest {manifest.path} has {len(manifest)} entries"
        )
    return sequences


def frame_labels_at_rate(
    labels: np.ndarray, label_rate: float, frame_rate: float, num_frames: int
) -> np.ndarray:
    """Labels for ``num_frames`` frames at ``frame_rate``: the label frame holding each frame's centre.

    Frame j at ``frame_rate`` is taken to span [j, j + 1) / frame_rate seconds; centres past
    the last label take the last label (a model's last frame may overhang the labelled part).
    """
    # (j + 0.5) / frame_rate * label_rate, ordered so that integer rates divide exactly.
    index = ((2 * np.arange(num_frames) + 1) * label_rate / (2 * frame_rate)).astype(np.int64)
    index = np.minimum(index, len(labels) - 1)
    return labels[index]


def align_references(
    labels: Sequence[np.ndarray],
    label_rate: float,
    references: Sequence[np.ndarray],
    reference_rate: float,
    names: Sequence[str],
    tolerance_seconds: float = 0.2,
) -> List[np.ndarray]:
    """Reference labels at the pseudo-labels' frames: the reference frame holding each frame's
    centre. Utterances whose two label sequences differ in duration by more than
    ``tolerance_seconds`` are refused (``names`` says which)."""
    aligned = []
    for sequence, reference, name in zip(labels, references, names):
        gap = abs(len(sequence) / label_rate - len(reference) / reference_rate)
        if gap > tolerance_seconds:
            raise LabelError(
                f"{name}: {len(sequence)} labels at {label_rate:g} Hz ({len(sequence) / label_rate:.2f} s) vs "
                f"{len(reference)} reference labels at {reference_rate:g} Hz "
                f"({len(reference) / reference_rate:.2f} s): wrong rate given?"
            )
        aligned.append(frame_labels_at_rate(reference, reference_rate, label_rate, len(sequence)))
    return aligned


@dataclass
class ReferenceLabels:
    """Frame labels to score pseudo-labels against: {path relative to the manifest root: int
    labels} at ``rate`` frames per second (the demo corpus' pitch or event labels, for example)."""

    name: str  # what they are ("pitch"), for the report
    by_file: Dict[str, np.ndarray]
    rate: float
    where: str  # where they came from, for error messages


def references_in_manifest_order(by_file: Dict[str, np.ndarray], manifest: Manifest, where: str) -> List[np.ndarray]:
    """Reference labels keyed by the manifest's relative paths (the demo corpus' format) -> list."""
    missing = [f for f in manifest.files if f not in by_file]
    if missing:
        raise LabelError(f"{where}: no reference labels for {len(missing)} manifest files, e.g. {missing[0]}")
    return [by_file[f] for f in manifest.files]
