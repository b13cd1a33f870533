"""A small speaker-ID set in s3prl's voxceleb1 layout, spoken by flite (for the s3prl bridge test)."""

import os
import shutil

import numpy as np
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import SAMPLE_RATE
from audio_ssl_ext.tools.eval_tasks import DIGITS, VOICE_F0, flite_session

SPEAKER_VOICES = ("kal16", "awb", "rms", "slt")


def build_speaker_id_set(root: str, utterances_per_voice: int = 12, seed: int = 0) -> str:
    """Utterances of four-digit strings by flite's four voices, in the layout s3prl's voxceleb1
    downstream reads: ``ROOT/{dev,test}/wav/id1000N/flite/NNNNN.wav`` and ``ROOT/meta.txt`` with
    lines ``SPLIT id1000N/flite/NNNNN.wav`` (1 train, 2 dev, 3 test). Speaker ID is closed-set:
    every speaker appears in every split; per voice, two utterances go to dev and two to test.
    Returns the meta file's path."""
    rng = np.random.default_rng(seed)
    if os.path.isdir(root):
        shutil.rmtree(root)
    lines = []
    for n, voice in enumerate(SPEAKER_VOICES):
        speaker = f"id{10001 + n}"
        sentences = [" ".join(DIGITS[i] for i in rng.integers(0, 10, size=4)) for _ in range(utterances_per_voice)]
        half = utterances_per_voice // 2
        spans = []
        for rate, batch in ((1.0, sentences[:half]), (1.2, sentences[half:])):
            audio, cuts = flite_session(batch, voice, rate, VOICE_F0[voice][1])
            spans += [audio[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for a, b in cuts]
        for k, utterance in enumerate(spans):
            split = 2 if k in (0, half) else 3 if k in (1, half + 1) else 1
            folder = os.path.join(root, "test" if split == 3 else "dev", "wav", speaker, "flite")
            os.makedirs(folder, exist_ok=True)
            sf.write(os.path.join(folder, f"{k:05d}.wav"), utterance, SAMPLE_RATE, subtype="PCM_16")
            lines.append(f"{split} {speaker}/flite/{k:05d}.wav")
    meta = os.path.join(root, "meta.txt")
    with open(meta, "w") as f:
        f.write("\n".join(lines) + "\n")
    return meta
