"""Checked audio reading: every failure names the manifest, its line and the file.

fairseq's raw-audio datasets fail obscurely on a bad file, and MERT's dataset substitutes a random
sample; a pretraining run is better stopped with a message that says which line to fix.
"""

import os
from typing import Optional

import numpy as np
import soundfile as sf


class AudioInputError(ValueError):
    """A file named by a manifest cannot be used as it is."""


def describe_source(path: str, manifest: Optional[str] = None, line: Optional[int] = None) -> str:
    if manifest is None:
        return path
    return f"{manifest}, line {line}: {path}"


def read_audio(
    path: str,
    expected_sample_rate: Optional[int] = None,
    manifest: Optional[str] = None,
    line: Optional[int] = None,
    start: int = 0,
    frames: int = -1,
) -> np.ndarray:
    """Read ``frames`` samples from ``start`` as float32 mono (channels are averaged).

    Raises AudioInputError when the file is missing or unreadable, or its sample rate is not
    ``expected_sample_rate`` (no resampling on the training path: ``make_manifest.py
    --sample-rate`` does it once, ahead of time).
    """
    where = describe_source(path, manifest, line)
    if not os.path.isfile(path):
        raise AudioInputError(f"{where}: audio file not found")
    try:
        wav, sample_rate = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioInputError(f"{where}: cannot read audio ({err})") from err
    if expected_sample_rate is not None and sample_rate != expected_sample_rate:
        raise AudioInputError(
            f"{where}: sample rate is {sample_rate} Hz, the task expects {expected_sample_rate} Hz "
            f"(rebuild the manifest with scripts/make_manifest.py --sample-rate {expected_sample_rate})"
        )
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
