"""Frame-level label files (``{split}.{name}``) and their dictionaries (``dict.{name}.txt``).

A label file has one line per manifest entry, in manifest order, of space-separated ids. Two
failure modes are common in fairseq's and MERT's trackers, and both are refused here, loudly:
ids missing from the dictionary (fairseq maps them to ``<unk>`` and training silently learns
nothing) and label sequences whose length does not match the audio at the stated label rate.
fairseq's special symbols as labels and malformed dictionaries are refused too, naming the line.
"""

import os
from dataclasses import dataclass
from typing import List

import numpy as np
from fairseq.data import Dictionary

from audio_ssl_ext.data.manifest import Manifest


class LabelError(ValueError):
    """Label files that do not fit the manifest or the dictionary."""


@dataclass
class LabelSet:
    name: str
    path: str
    dictionary: Dictionary
    label_rate: float  # frames per second
    labels: List[np.ndarray]  # dictionary indices, one array per manifest entry


# fairseq's Dictionary reserves these; a label spelled like one maps to it (a <pad> target then
# drops out of the loss without a word).
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")


def load_dictionary(label_dir: str, name: str) -> Dictionary:
    path = os.path.join(label_dir, f"dict.{name}.txt")
    if not os.path.isfile(path):
        raise LabelError(
            f"{path}: dictionary not found for label set '{name}' "
            f"(scripts/apply_kmeans.py writes it next to the labels)"
        )
    check_dictionary_file(path)
    return Dictionary.load(path)


def check_dictionary_file(path: str) -> None:
    """What fairseq's ``Dictionary.add_from_file`` needs, checked here because its own errors
    name neither the file nor the line: ``symbol count`` per line, counts integers, no symbol
    twice, none of fairseq's special symbols, at least one symbol."""
    seen = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise LabelError(f"{path}: not UTF-8 text ({err}); rewrite it with scripts/apply_kmeans.py") from err
    for number, line in enumerate(lines, start=1):
        parts = line.rstrip().split(" ")
        if parts[-1] == "#fairseq:overwrite":  # fairseq's flag: a deliberate duplicate
            parts = parts[:-1]
        if len(parts) != 2 or not parts[0] or not parts[1].lstrip("-").isdigit():
            raise LabelError(f"{path}, line {number}: expected '<symbol> <count>', got {line!r}")
        symbol = parts[0]
        if symbol in SPECIAL_SYMBOLS:
            raise LabelError(f"{path}, line {number}: {symbol} is one of fairseq's special symbols; rename the label")
        if symbol in seen and not line.rstrip().endswith("#fairseq:overwrite"):
            raise LabelError(f"{path}, line {number}: symbol {symbol!r} again (first on line {seen[symbol]})")
        seen.setdefault(symbol, number)
    if not seen:
        raise LabelError(f"{path}: no symbol (an empty dictionary); rewrite it with scripts/apply_kmeans.py")


def expected_frames(num_samples: int, sample_rate: int, label_rate: float) -> float:
    return num_samples * label_rate / sample_rate


def load_label_set(
    label_dir: str,
    split: str,
    name: str,
    manifest: Manifest,
    sample_rate: int,
    label_rate: float,
    tolerance_seconds: float = 0.1,
) -> LabelSet:
    """Read and check ``{label_dir}/{split}.{name}`` against the manifest and the dictionary.

    The length check allows ``tolerance_seconds`` (fairseq's HubertDataset uses 0.1 s but only
    warns): feature extractors differ by a frame or two at the edges, while a wrong label rate
    (e.g. 100 Hz MFCC labels with ``label_rate: 50``) is off by half the file.
    """
    dictionary = load_dictionary(label_dir, name)
    path = os.path.join(label_dir, f"{split}.{name}")
    if not os.path.isfile(path):
        raise LabelError(f"{path}: label file not found for split '{split}'")
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) != len(manifest):
        raise LabelError(
            f"{path}: {len(lines)} lines, but the manifest {manifest.path} has {len(manifest)} "
            f"entries (one label line per manifest entry, in the same order)"
        )
    symbol_to_index = dictionary.indices
    labels = []
    for number, (line, num_samples) in enumerate(zip(lines, manifest.sizes), start=1):
        symbols = line.split()
        special = [s for s in SPECIAL_SYMBOLS if s in symbols]
        if special:
            raise LabelError(
                f"{path}, line {number}: {special[0]} is one of fairseq's special symbols "
                f"({', '.join(SPECIAL_SYMBOLS)}), not a label; fairseq would treat it as such "
                f"(a <pad> target drops out of the loss): rename it in the labels and the dictionary"
            )
        unknown = [s for s in symbols if s not in symbol_to_index]
        if unknown:
            raise LabelError(
                f"{path}, line {number}: label(s) {sorted(set(unknown))[:5]} are not in "
                f"{os.path.join(label_dir, f'dict.{name}.txt')}"
            )
        expected = expected_frames(num_samples, sample_rate, label_rate)
        if abs(len(symbols) - expected) > tolerance_seconds * label_rate:
            raise LabelError(
                f"{path}, line {number}: {len(symbols)} labels for {num_samples} samples "
                f"({manifest.files[number - 1]}), expected about {expected:.1f} at label_rate "
                f"{label_rate} Hz and sample_rate {sample_rate} Hz: were the labels made at "
                f"another frame rate?"
            )
        labels.append(np.array([symbol_to_index[s] for s in symbols], dtype=np.int64))
    return LabelSet(name, path, dictionary, label_rate, labels)
