"""Checked audio reading: every failure names the manifest, its line and the file.

fairseq's raw-audio datasets fail obscurely on a bad file, and MERT's dataset substitutes a random
sample; a pretraining run is better stopped with a message that says which line to fix.
"""

import os
from typing import Optional

import numpy as np
import soundfile as sf

# Samples are read as float in [-1, 1]: integer PCM cannot leave that range, a float file can. A
# float file whose samples pass 2.0 (6 dB over full scale) was written without scaling (int16
# values stored as floats reach 32767) or is corrupt; resampling and lossy decoding overshoot full
# scale by far less (the Gibbs overshoot of a clipped signal is about 9%), so real audio passes.
MAX_ABS_SAMPLE = 2.0


class AudioInputError(ValueError):
    """A file named by a manifest cannot be used as it is."""


def describe_source(path: str, manifest: Optional[str] = None, line: Optional[int] = None) -> str:
    if manifest is None:
        return path
    return f"{manifest}, line {line}: {path}"


def _open(path: str, manifest: Optional[str], line: Optional[int], expected_sample_rate: Optional[int],
          expected_length: Optional[int]):
    where = describe_source(path, manifest, line)
    if not os.path.isfile(path):
        raise AudioInputError(f"{where}: audio file not found")
    try:
        audio = sf.SoundFile(path)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioInputError(f"{where}: cannot read audio ({err})") from err
    if expected_sample_rate is not None and audio.samplerate != expected_sample_rate:
        audio.close()
        fix = f"rebuild the manifest with scripts/make_manifest.py --sample-rate {expected_sample_rate}" if manifest else "resample it"
        raise AudioInputError(f"{where}: sample rate is {audio.samplerate} Hz, the task expects {expected_sample_rate} Hz ({fix})")
    if expected_length is not None and audio.frames != expected_length:
        audio.close()
        raise AudioInputError(
            f"{where}: the file has {audio.frames} samples, the manifest says {expected_length} (rebuild the manifest)"
        )
    return audio


def check_samples(wav: np.ndarray, where: str, start: int = 0) -> None:
    """Refuse NaN or inf samples and float samples beyond ``MAX_ABS_SAMPLE``. ``wav`` is (S,) or
    (S, channels); ``start`` is the file offset of its first sample (for the message)."""
    if wav.size == 0:
        return
    per_sample = wav.reshape(len(wav), -1)
    bad = ~np.isfinite(per_sample).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AudioInputError(
            f"{where}: {int(bad.sum())} non-finite samples (NaN or inf), the first at sample {start + first}; "
            f"repair or remove the file"
        )
    peak = float(np.abs(per_sample).max())
    if peak > MAX_ABS_SAMPLE:
        first = int(np.flatnonzero((np.abs(per_sample) > MAX_ABS_SAMPLE).any(axis=1))[0])
        raise AudioInputError(
            f"{where}: samples reach {peak:.4g} (first beyond {MAX_ABS_SAMPLE:g} at sample {start + first}), far "
            f"outside float audio's [-1, 1]: was it written without scaling integer PCM to [-1, 1]? Rescale or remove it"
        )


def read_audio(
    path: str,
    expected_sample_rate: Optional[int] = None,
    manifest: Optional[str] = None,
    line: Optional[int] = None,
    start: int = 0,
    frames: int = -1,
    expected_length: Optional[int] = None,
) -> np.ndarray:
    """Read ``frames`` samples from ``start`` as float32 mono (channels are averaged); only those
    samples are decoded, so a crop of a long file costs the crop.

    Raises AudioInputError when the file is missing or unreadable, its sample rate is not
    ``expected_sample_rate`` (no resampling on the training path: ``make_manifest.py
    --sample-rate`` does it once, ahead of time), its length is not ``expected_length`` (the
    manifest's), or the samples read are not finite or far outside [-1, 1] (``check_samples``).
    """
    where = describe_source(path, manifest, line)
    with _open(path, manifest, line, expected_sample_rate, expected_length) as audio:
        try:
            if start:
                audio.seek(start)
            wav = audio.read(frames, dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioInputError(f"{where}: cannot read audio ({err})") from err
        promised = audio.frames - start if frames < 0 else min(frames, audio.frames - start)
    if len(wav) != promised:  # a truncated MP3 keeps its header's length and decodes short
        raise AudioInputError(
            f"{where}: decoded {len(wav)} samples from sample {start}, the header promises {promised}: "
            f"the file is truncated or corrupt"
        )
    check_samples(wav, where, start)
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
