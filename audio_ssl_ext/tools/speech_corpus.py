"""Multi-speaker speech from Debian packages, offline: a pretraining corpus and two probe tasks.

Speakers (``SPEAKERS``; the class labels of ``speaker_id``):

- synthetic, flite (package ``flite``): ``flite_kal16``, ``flite_awb``, ``flite_rms``, ``flite_slt``;
- synthetic, festival: ``festival_ked`` (US English male, festvox-kdlpc16k), ``festival_lp`` /
  ``festival_pc`` (Italian female / male, festvox-italp16k / -itapc16k), ``festival_lj`` /
  ``festival_mv`` (Finnish female / male, festvox-suopuhe-lj / -mv), ``festival_dita``,
  ``festival_krb``, ``festival_machac``, ``festival_ph`` (Czech: adult female, child male, two
  adult males; festvox-czech-*). festival's festvox-kallpc16k and festvox-us-slt-hts are the
  same people as flite's kal16 and slt, so they are not used as extra speakers;
- real recordings, tuxpaint-stamps-default: the spoken stamp descriptions in French, Romanian,
  Russian, Catalan, Bulgarian, Spanish, Belarusian, Greek and Danish (``tuxpaint_<lang>``; one
  recording set per language, presumably one speaker each: not verified by listening, and a
  classifier can also tell them apart by language and recording chain).

Every voice reads English text (the non-English festival voices with their own letter-to-sound
rules: foreign-accented, still one speaker each).

What gets built:

- ``build_pretraining_corpus``: ``OUT/wavs/<speaker>/<speaker>_<i>.wav``, ``utterances`` clips of
  ``seconds`` per speaker (16 kHz mono, loudness-normalised), sentences of 4-8 words drawn from
  ``WORDS`` (seeded); tuxpaint speakers: their descriptions strung together. No audio of the
  probe tasks' valid or test splits is in it. ``OUT/utterances.tsv`` lists file, speaker, text.
- ``build_speaker_task``: ``speaker_id``, a closed set (every speaker in every split), 2 s clips;
  split by sentence: the test sentences (tuxpaint: the test stamps) were never heard in train.
- ``build_word_tasks``: ``spoken_word``, 52 classes (``zero``..``nine``, the letters ``a``..``z``
  and 16 short words), split by speaker: train flite kal16 + awb and festival ked, valid flite rms,
  test flite slt; ``spoken_word_real``: the same train and valid, tested on real recordings of
  the same words (tuxpaint's English digits and letters, klettres-data's English letters and
  words; ``RECORDED_WORD_SOURCES``): unseen speakers, a recording chain never seen in training.

Each task's ``task_metadata.json`` also holds the clips per split, per speaker and per label.
Rendering is one synthesizer process per voice and batch (flite: one session cut at its own word
timings, ``eval_tasks.flite_session``; festival: one process that saves every utterance).
Tooling (``scripts/jooci_speech_study.py``, the tests), not imported by the core package.
"""

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from audio_ssl_ext.downstream.hear_tasks import SAMPLE_RATE, SPLITS, Clip, write_hear_task
from audio_ssl_ext.tools.eval_tasks import DIGITS, VOICE_F0, EvalTaskError, flite_session

logger = logging.getLogger(__name__)

TUXPAINT_STAMPS = "/usr/share/tuxpaint/stamps"
KLETTRES_DIR = "/usr/share/klettres"
FESTIVAL_VOICES = "/usr/share/festival/voices"
TARGET_RMS = 0.05  # loudness of every clip over its non-silent frames: level is no speaker cue


@dataclass(frozen=True)
class Speaker:
    name: str  # the class label in speaker_id
    source: str  # flite, festival, tuxpaint, klettres
    voice: str  # flite's -voice, festival's voice command, or the recordings' language code
    language: str  # of the voice (what it reads is English text for every synthesizer)
    description: str
    recorded: bool  # real human speech (True) or a synthesizer
    package: str  # the Debian package that ships it


def _flite(voice: str, description: str) -> Speaker:
    return Speaker(f"flite_{voice}", "flite", voice, "en", description, False, "flite")


def _festival(name: str, command: str, language: str, description: str, package: str) -> Speaker:
    return Speaker(f"festival_{name}", "festival", command, language, description, False, package)


def _tuxpaint(language: str, description: str) -> Speaker:
    return Speaker(f"tuxpaint_{language}", "tuxpaint", language, language, description, True,
                   "tuxpaint-stamps-default")


SPEAKERS: Tuple[Speaker, ...] = (
    _flite("kal16", "US English male (kal; festvox-kallpc16k is the same person)"),
    _flite("awb", "Scottish English male (awb)"),
    _flite("rms", "US English male (rms)"),
    _flite("slt", "US English female (slt, CMU ARCTIC; festvox-us-slt-hts is the same person)"),
    _festival("ked", "voice_ked_diphone", "en", "US English male (ked diphones)", "festvox-kdlpc16k"),
    _festival("lp", "voice_lp_diphone", "it", "Italian female (lp diphones)", "festvox-italp16k"),
    _festival("pc", "voice_pc_diphone", "it", "Italian male (pc diphones)", "festvox-itapc16k"),
    _festival("lj", "voice_suo_fi_lj_diphone", "fi", "Finnish female (lj diphones)", "festvox-suopuhe-lj"),
    _festival("mv", "voice_hy_fi_mv_diphone", "fi", "Finnish male (mv diphones)", "festvox-suopuhe-mv"),
    _festival("dita", "voice_czech_dita", "cs", "Czech adult female (dita)", "festvox-czech-dita"),
    _festival("krb", "voice_czech_krb", "cs", "Czech child male (krb)", "festvox-czech-krb"),
    _festival("machac", "voice_czech_machac", "cs", "Czech adult male (machac)", "festvox-czech-machac"),
    _festival("ph", "voice_czech_ph", "cs", "Czech adult male (ph)", "festvox-czech-ph"),
    _tuxpaint("fr", "French stamp descriptions (real recordings)"),
    _tuxpaint("ro", "Romanian stamp descriptions (real recordings)"),
    _tuxpaint("ru", "Russian stamp descriptions (real recordings)"),
    _tuxpaint("ca", "Catalan stamp descriptions (real recordings)"),
    _tuxpaint("bg", "Bulgarian stamp descriptions (real recordings)"),
    _tuxpaint("es", "Spanish stamp descriptions (real recordings)"),
    _tuxpaint("be", "Belarusian stamp descriptions (real recordings)"),
    _tuxpaint("el", "Greek stamp descriptions (real recordings)"),
    _tuxpaint("da", "Danish stamp descriptions (real recordings)"),
)
SPEAKER_BY_NAME = {s.name: s for s in SPEAKERS}
# festival voice command -> its folder under FESTIVAL_VOICES (to say which package is missing)
FESTIVAL_VOICE_DIRS = {
    "voice_ked_diphone": "english/ked_diphone", "voice_lp_diphone": "italian/lp_diphone",
    "voice_pc_diphone": "italian/pc_diphone", "voice_suo_fi_lj_diphone": "finnish/suo_fi_lj_diphone",
    "voice_hy_fi_mv_diphone": "finnish/hy_fi_mv_diphone", "voice_czech_dita": "czech/czech_dita",
    "voice_czech_krb": "czech/czech_krb", "voice_czech_machac": "czech/czech_machac",
    "voice_czech_ph": "czech/czech_ph",
}

# The sentences' vocabulary: short common English words (every voice reads them).
WORDS = tuple("""
the a one two three four five six seven eight nine ten red green blue yellow black white small big
old new long short dog cat horse bird fish house tree river stone road garden window table chair
door water light fire music morning evening winter summer city mountain boat train car child
woman man friend teacher doctor book letter song picture runs walks sees takes gives finds makes
opens closes holds brings reads writes sings under over near after before behind between into
from with quickly slowly today tomorrow often never always again here there very quite
""".split())

# spoken_word: the classes and what the synthesizers are told to say for each.
LETTER_NAMES = dict(zip("abcdefghijklmnopqrstuvwxyz", (
    "ay", "bee", "see", "dee", "ee", "eff", "gee", "aitch", "eye", "jay", "kay", "el", "em", "en", "oh",
    "pee", "cue", "are", "ess", "tee", "you", "vee", "double you", "ex", "why", "zee")))
SHORT_WORDS = ("car", "dog", "fix", "gas", "gem", "hot", "jet", "key", "me", "my", "no", "pet", "saw",
               "say", "sit", "sky")  # the words klettres-data has in both en and en_GB
WORD_TEXT: Dict[str, str] = {**{d: d for d in DIGITS}, **LETTER_NAMES, **{w: w for w in SHORT_WORDS}}
WORD_SPEAKERS = {"train": ("flite_kal16", "flite_awb", "festival_ked"), "valid": ("flite_rms",),
                 "test": ("flite_slt",)}
WORD_RATES = (0.9, 1.1)  # flite's duration_stretch; x VOICE_F0 steps per flite voice
FESTIVAL_WORD_RATES = (0.85, 1.0, 1.15)  # festival's Duration_Stretch (ked: one pitch)
# Real recordings of spoken_word's classes: source -> [(label, path relative to its package dir)].
RECORDED_WORD_SOURCES: Dict[str, List[Tuple[str, str]]] = {
    "tuxpaint_en": [(d, f"{TUXPAINT_STAMPS}/symbols/math/{i}.ogg") for i, d in enumerate(DIGITS)],
    "tuxpaint_en_GB": [(d, f"{TUXPAINT_STAMPS}/symbols/math/{i}_en_GB.ogg") for i, d in enumerate(DIGITS)]
    + [(c, f"{TUXPAINT_STAMPS}/symbols/alphabets/english/filled/lowercase/{c}_filled_en_GB.ogg") for c in LETTER_NAMES],
    "klettres_en": [(c, f"{KLETTRES_DIR}/en/alpha/{c.upper()}.ogg") for c in LETTER_NAMES]
    + [(w, f"{KLETTRES_DIR}/en/syllab/{w}.ogg") for w in SHORT_WORDS],
    "klettres_en_GB": [(c, f"{KLETTRES_DIR}/en_GB/alpha/{c}.ogg") for c in LETTER_NAMES]
    + [(w, f"{KLETTRES_DIR}/en_GB/syllab/{w}.ogg") for w in SHORT_WORDS],
}
DEBIAN_PACKAGES = ("flite", "festival", "festival-czech", "festvox-kdlpc16k", "festvox-italp16k",
                   "festvox-itapc16k", "festvox-suopuhe-lj", "festvox-suopuhe-mv", "festvox-czech-dita",
                   "festvox-czech-krb", "festvox-czech-machac", "festvox-czech-ph",
                   "tuxpaint-stamps-default", "klettres-data")


# ---------------------------------------------------------------------------------------------
# Audio helpers
# ---------------------------------------------------------------------------------------------


def to_sample_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate == SAMPLE_RATE:
        return audio
    import soxr

    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def trim_silence(audio: np.ndarray, top_db: float = 35.0, above_floor_db: float = 12.0,
                 margin_seconds: float = 0.03) -> np.ndarray:
    """Cut leading and trailing frames (10 ms) quieter than ``top_db`` below the loudest one or
    than ``above_floor_db`` over the noise floor (the 10th percentile frame: recordings' hiss),
    whichever is higher, but never frames within 25 dB of the loudest."""
    frame = SAMPLE_RATE // 100
    count = len(audio) // frame
    if count == 0:
        return audio
    energy = (audio[: count * frame].reshape(count, frame) ** 2).mean(axis=1)
    if energy.max() <= 0:
        return audio[:0]
    level = 10 * np.log10(energy / energy.max() + 1e-20)
    # the floor rule never cuts frames within 25 dB of the peak (a file that is all speech)
    active = np.flatnonzero(level > max(-top_db, min(np.percentile(level, 10) + above_floor_db, -25.0)))
    margin = round(margin_seconds * SAMPLE_RATE)
    return audio[max(0, active[0] * frame - margin) : min(len(audio), (active[-1] + 1) * frame + margin)]


def normalize_loudness(audio: np.ndarray, target_rms: float = TARGET_RMS, top_db: float = 35.0) -> np.ndarray:
    """Scale so the frames within ``top_db`` of the loudest have RMS ``target_rms``; peak <= 0.99."""
    frame = SAMPLE_RATE // 100
    count = len(audio) // frame
    if count == 0 or not np.any(audio):
        return audio.astype(np.float32)
    energy = (audio[: count * frame].reshape(count, frame) ** 2).mean(axis=1)
    loud = energy[10 * np.log10(energy / energy.max() + 1e-20) > -top_db]
    out = audio * (target_rms / np.sqrt(loud.mean()))
    peak = np.abs(out).max()
    return (out * (0.99 / peak) if peak > 0.99 else out).astype(np.float32)


def fill_clips(pieces: Iterable[np.ndarray], length: int, gap: int, min_fill: float = 0.5) -> List[np.ndarray]:
    """String ``pieces`` together (``gap`` samples of silence between) into clips of exactly
    ``length`` samples: each clip starts with a new piece and takes pieces until it is full, the
    last one cut. A last clip less than ``min_fill`` full is dropped, otherwise zero-padded."""
    clips, current = [], []
    filled = 0
    for piece in pieces:
        if len(piece) == 0:
            continue
        if current:
            current.append(np.zeros(gap, dtype=np.float32))
            filled += gap
        current.append(piece)
        filled += len(piece)
        if filled >= length:
            clips.append(np.concatenate(current)[:length].astype(np.float32))
            current, filled = [], 0
    if current and filled >= min_fill * length:
        clip = np.zeros(length, dtype=np.float32)
        joined = np.concatenate(current)
        clip[: len(joined)] = joined
        clips.append(clip)
    return clips


def place(audio: np.ndarray, length: int) -> Tuple[np.ndarray, bool]:
    """``audio`` at the start of a zero clip of ``length`` samples; (clip, whether it was cut)."""
    clip = np.zeros(length, dtype=np.float32)
    clip[: min(length, len(audio))] = audio[:length]
    return clip, len(audio) > length


def read_recording(path: str) -> np.ndarray:
    """A packaged recording at 16 kHz mono, silence trimmed, loudness-normalised."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return normalize_loudness(trim_silence(to_sample_rate(audio, rate)))


# ---------------------------------------------------------------------------------------------
# Synthesizers: one process per voice and batch
# ---------------------------------------------------------------------------------------------


def festival_session(texts: Sequence[str], voice: str, duration_stretch: float = 1.0) -> List[np.ndarray]:
    """Say each of ``texts`` as its own utterance in one festival run; 16 kHz audio of each."""
    if shutil.which("festival") is None:
        raise EvalTaskError("festival not found: run `make setup-eval` (apt-get install festival)")
    voice_dir = FESTIVAL_VOICE_DIRS.get(voice)
    if voice_dir and not os.path.isdir(os.path.join(FESTIVAL_VOICES, voice_dir)):
        raise EvalTaskError(f"festival voice {voice} not installed ({FESTIVAL_VOICES}/{voice_dir}): run `make setup-eval`")
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"({voice})", f"(Parameter.set 'Duration_Stretch {duration_stretch})"]
        for i, text in enumerate(texts):
            quoted = text.replace("\\", " ").replace('"', " ")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{tmp}/{i}.wav" \'riff)')
        script = os.path.join(tmp, "session.scm")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        proc = subprocess.run(["festival", "-b", script], capture_output=True, text=True)
        outputs = []
        for i in range(len(texts)):
            path = os.path.join(tmp, f"{i}.wav")
            if proc.returncode != 0 or not os.path.isfile(path):
                raise EvalTaskError(f"festival {voice}: no audio for {texts[i]!r}: {proc.stderr[-2000:]}")
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
            outputs.append(to_sample_rate(audio, rate))
    return outputs


def say(speaker: Speaker, texts: Sequence[str], rate: float = 1.0, f0: Optional[float] = None,
        margin_seconds: float = 0.03) -> List[np.ndarray]:
    """Each of ``texts`` spoken by a synthetic ``speaker`` (one process), silence trimmed,
    loudness-normalised. ``f0``: flite's int_f0_target_mean (default: the voice's middle one)."""
    if speaker.source == "flite":
        f0 = VOICE_F0[speaker.voice][1] if f0 is None else f0
        audio, spans = flite_session(list(texts), speaker.voice, rate, f0)
        margin = round(margin_seconds * SAMPLE_RATE)
        pieces = [audio[max(0, round(a * SAMPLE_RATE) - margin) : round(b * SAMPLE_RATE) + margin] for a, b in spans]
    elif speaker.source == "festival":
        pieces = [trim_silence(a, margin_seconds=margin_seconds) for a in festival_session(texts, speaker.voice, rate)]
    else:
        raise ValueError(f"{speaker.name} is a recording, not a synthesizer")
    return [normalize_loudness(p) for p in pieces]


# ---------------------------------------------------------------------------------------------
# Text and recordings
# ---------------------------------------------------------------------------------------------


def sentences(count: int, rng: np.random.Generator, exclude: Iterable[str] = (), min_words: int = 4,
              max_words: int = 8) -> List[str]:
    """``count`` distinct sentences of ``WORDS`` (none of ``exclude``)."""
    seen, out = set(exclude), []
    while len(out) < count:
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1))))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def tuxpaint_descriptions(language: str) -> Dict[str, str]:
    """stamp (path without the suffix, relative to the stamps folder) -> its spoken description."""
    suffix = f"_desc_{language}.ogg"
    paths = glob.glob(os.path.join(TUXPAINT_STAMPS, "**", f"*{suffix}"), recursive=True)
    if not paths:
        raise EvalTaskError(f"no {suffix} under {TUXPAINT_STAMPS}: run `make setup-eval` (apt-get install tuxpaint-stamps-default)")
    return {os.path.relpath(p, TUXPAINT_STAMPS)[: -len(suffix)]: p for p in paths}


def stamp_splits(languages: Sequence[str], rng: np.random.Generator, shares=(0.6, 0.2, 0.2)) -> Dict[str, List[str]]:
    """The stamps described in every one of ``languages``, shuffled and cut into train/valid/test
    (the speaker_id task's; the corpus leaves out valid and test)."""
    common = sorted(set.intersection(*(set(tuxpaint_descriptions(lang)) for lang in languages)))
    order = [common[i] for i in rng.permutation(len(common))]
    a, b = round(shares[0] * len(order)), round((shares[0] + shares[1]) * len(order))
    return {"train": order[:a], "valid": order[a:b], "test": order[b:]}


# ---------------------------------------------------------------------------------------------
# The pretraining corpus
# ---------------------------------------------------------------------------------------------


def build_pretraining_corpus(out_dir: str, speakers: Sequence[str] = tuple(s.name for s in SPEAKERS),
                             utterances: int = 24, seconds: float = 6.0, seed: int = 0,
                             task_seed: int = 0, progress: bool = True) -> str:
    """``utterances`` clips of ``seconds`` per speaker under ``out_dir/wavs/<speaker>/``; returns
    ``out_dir``. Synthetic speakers read fresh sentences (none of the speaker_id task's, made with
    ``task_seed``); tuxpaint speakers' descriptions exclude the task's valid and test stamps."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    length, gap = round(seconds * SAMPLE_RATE), round(0.25 * SAMPLE_RATE)
    wav_root = os.path.join(out_dir, "wavs")
    if os.path.isdir(wav_root):
        shutil.rmtree(wav_root)
    chosen = [SPEAKER_BY_NAME[name] for name in speakers]
    task_texts = speaker_task_sentences(np.random.default_rng(task_seed))
    per_utterance = max(1, int(seconds / 1.6) + 1)  # sentences of 4-8 words last ~1.5-3 s
    texts = sentences(utterances * per_utterance, rng, exclude=[t for ts in task_texts.values() for t in ts])
    tux = [s.voice for s in SPEAKERS if s.source == "tuxpaint"]
    held_out = set()
    if any(s.source == "tuxpaint" for s in chosen):
        splits = stamp_splits(tux, np.random.default_rng(task_seed))
        held_out = set(splits["valid"]) | set(splits["test"])
    rows = []
    for speaker in tqdm(chosen, desc="pretraining corpus", disable=not progress):
        if speaker.recorded:
            stamps = sorted(set(tuxpaint_descriptions(speaker.voice)) - held_out)
            stamps = [stamps[i] for i in rng.permutation(len(stamps))]
            descriptions = tuxpaint_descriptions(speaker.voice)
            clips = []
            pieces = (read_recording(descriptions[stamp]) for stamp in stamps)

            for clip in fill_clips(pieces, length, gap):
                clips.append((clip, "tuxpaint stamp descriptions"))
                if len(clips) == utterances:
                    break
        else:
            half = len(texts) // 2
            spoken = say(speaker, texts[:half], 0.9) + say(speaker, texts[half:], 1.1)
            clips = [(clip, f"sentences of WORDS, seed {seed}") for clip in fill_clips(spoken, length, gap)]
        if len(clips) < utterances:
            logger.warning("%s: only %d of %d utterances (not enough material)", speaker.name, len(clips), utterances)
        folder = os.path.join(wav_root, speaker.name)
        os.makedirs(folder, exist_ok=True)
        for i, (clip, text) in enumerate(clips[:utterances]):
            path = os.path.join(folder, f"{speaker.name}_{i:04d}.wav")
            sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
            rows.append((os.path.relpath(path, out_dir), speaker.name, int(speaker.recorded), f"{seconds:g}", text))
    with open(os.path.join(out_dir, "utterances.tsv"), "w") as f:
        f.write("file\tspeaker\trecorded\tseconds\ttext\n")
        f.writelines("\t".join(map(str, row)) + "\n" for row in rows)
    with open(os.path.join(out_dir, "speakers.json"), "w") as f:
        json.dump({s.name: asdict(s) for s in chosen}, f, indent=1)
    logger.info("pretraining corpus: %d utterances x %g s from %d speakers in %s", len(rows), seconds, len(chosen), wav_root)
    return out_dir


# ---------------------------------------------------------------------------------------------
# speaker_id
# ---------------------------------------------------------------------------------------------

SPEAKER_CLIPS = {"train": 20, "valid": 6, "test": 6}  # per speaker


def speaker_task_sentences(rng: np.random.Generator, clips: Dict[str, int] = SPEAKER_CLIPS,
                           per_clip: int = 2) -> Dict[str, List[str]]:
    """Disjoint sentence lists per split: every synthetic speaker reads the same ones."""
    texts = sentences(sum(clips.values()) * per_clip, rng)
    out, start = {}, 0
    for split in SPLITS:
        out[split] = texts[start : start + clips[split] * per_clip]
        start += clips[split] * per_clip
    return out


def build_speaker_task(out_dir: str, speakers: Sequence[str] = tuple(s.name for s in SPEAKERS),
                       clips: Dict[str, int] = SPEAKER_CLIPS, clip_seconds: float = 2.0, seed: int = 0,
                       progress: bool = True) -> str:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    length, gap = round(clip_seconds * SAMPLE_RATE), round(0.15 * SAMPLE_RATE)
    texts = speaker_task_sentences(rng, clips)
    chosen = [SPEAKER_BY_NAME[name] for name in speakers]
    tux = [s.voice for s in SPEAKERS if s.source == "tuxpaint"]
    stamps = stamp_splits(tux, rng) if any(s.recorded for s in chosen) else {}
    splits: Dict[str, List[Clip]] = {split: [] for split in SPLITS}
    for speaker in tqdm(chosen, desc="speaker_id", disable=not progress):
        for split in SPLITS:
            if speaker.recorded:
                descriptions = tuxpaint_descriptions(speaker.voice)
                pieces = (read_recording(descriptions[s]) for s in stamps[split])
            else:
                half = len(texts[split]) // 2
                pieces = say(speaker, texts[split][:half], 0.9) + say(speaker, texts[split][half:], 1.1)
            made = []
            for clip in fill_clips(pieces, length, gap):
                made.append(clip)
                if len(made) == clips[split]:
                    break
            if len(made) < clips[split]:
                raise EvalTaskError(f"speaker_id: {speaker.name} has material for {len(made)} {split} clips, not {clips[split]}")
            splits[split] += [Clip(f"{split}_{speaker.name}_{i:03d}.wav", speaker.name, c) for i, c in enumerate(made)]
    task = write_hear_task(out_dir, "speaker_id", splits, clip_seconds)
    add_metadata(task, splits, {"split_by": "sentence (tuxpaint: stamp); every speaker in every split",
                                "speakers": {s.name: asdict(s) for s in chosen}})
    return task


# ---------------------------------------------------------------------------------------------
# spoken_word and spoken_word_real
# ---------------------------------------------------------------------------------------------


def word_clips(speaker: Speaker, words: Sequence[str], split: str, length: int, rates: Sequence[float],
               f0_steps: int, festival_rates: Sequence[float], rng: np.random.Generator) -> List[Clip]:
    """Every word once per setting: flite (rate, pitch) pairs, festival rates."""
    out = []
    settings = ([(r, f0) for r in rates for f0 in VOICE_F0[speaker.voice][:f0_steps]]
                if speaker.source == "flite" else [(r, None) for r in festival_rates])
    for rate, f0 in settings:
        order = [words[i] for i in rng.permutation(len(words))]
        for word, audio in zip(order, say(speaker, [WORD_TEXT[w] for w in order], rate, f0)):
            clip, cut = place(audio, length)
            if cut:
                raise EvalTaskError(f"{speaker.name} rate {rate}: '{word}' lasts {len(audio) / SAMPLE_RATE:.2f} s, longer than the clip")
            tag = f"r{rate:g}" + (f"_f{f0}" if f0 is not None else "")
            out.append(Clip(f"{split}_{speaker.name}_{tag}_{word}.wav", word, clip))
    return out


def recorded_word_clips(words: Sequence[str], length: int, sources: Optional[Sequence[str]] = None) -> List[Clip]:
    out, cut = [], []
    for source in sources or RECORDED_WORD_SOURCES:
        for word, path in RECORDED_WORD_SOURCES[source]:
            if word not in words:
                continue
            if not os.path.isfile(path):
                raise EvalTaskError(f"{path} not found: run `make setup-eval` (tuxpaint-stamps-default, klettres-data)")
            clip, was_cut = place(read_recording(path), length)
            if was_cut:
                cut.append(os.path.basename(path))
            out.append(Clip(f"test_{source}_{word}.wav", word, clip))
    if cut:
        logger.warning("spoken_word_real: %d recordings longer than the clip, cut: %s", len(cut), ", ".join(cut))
    return out


def build_word_tasks(out_dir: str, words: Sequence[str] = tuple(WORD_TEXT), rates: Sequence[float] = WORD_RATES,
                     f0_steps: int = 3, festival_rates: Sequence[float] = FESTIVAL_WORD_RATES,
                     clip_seconds: float = 1.5, seed: int = 0, recorded_sources: Optional[Sequence[str]] = None) -> List[str]:
    """``spoken_word`` (test: flite slt) and ``spoken_word_real`` (test: real recordings)."""
    rng = np.random.default_rng(seed)
    length = round(clip_seconds * SAMPLE_RATE)
    splits: Dict[str, List[Clip]] = {}
    for split, names in WORD_SPEAKERS.items():
        splits[split] = []
        for name in names:
            splits[split] += word_clips(SPEAKER_BY_NAME[name], words, split, length, rates, f0_steps, festival_rates, rng)
    synthetic = write_hear_task(out_dir, "spoken_word", splits, clip_seconds)
    add_metadata(synthetic, splits, {"split_by": "speaker", "speakers_per_split": WORD_SPEAKERS,
                                     "said_as": {w: WORD_TEXT[w] for w in words}})
    real = dict(splits, test=recorded_word_clips(words, length, recorded_sources))
    recorded = write_hear_task(out_dir, "spoken_word_real", real, clip_seconds)
    add_metadata(recorded, real, {
        "split_by": "speaker; test: real recordings (a recording chain never seen in training)",
        "speakers_per_split": dict(WORD_SPEAKERS, test=sorted(recorded_sources or RECORDED_WORD_SOURCES)),
        "said_as": {w: WORD_TEXT[w] for w in words}})
    return [synthetic, recorded]


def add_metadata(task_dir: str, splits: Dict[str, List[Clip]], extra: dict) -> None:
    """Counts per split, per speaker (the second field of every clip name) and per label."""
    path = os.path.join(task_dir, "task_metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    known = sorted([*SPEAKER_BY_NAME, *RECORDED_WORD_SOURCES], key=len, reverse=True)
    per_speaker, per_label = {}, {}
    for split, clips in splits.items():
        per_speaker[split], per_label[split] = {}, {}
        for clip in clips:
            rest = clip.name[len(split) + 1 :]
            speaker = next(name for name in known if rest.startswith(name + "_"))
            per_speaker[split][speaker] = per_speaker[split].get(speaker, 0) + 1
            per_label[split][clip.label] = per_label[split].get(clip.label, 0) + 1
    metadata.update(extra, examples_per_speaker=per_speaker, examples_per_label=per_label)
    with open(path, "w") as f:
        json.dump(metadata, f, indent=1)


def build_speech_tasks(out_dir: str, small: bool = False, seed: int = 0, progress: bool = True) -> List[str]:
    """``speaker_id``, ``spoken_word``, ``spoken_word_real`` under ``out_dir``. ``small``: the
    subset the tests build (5 speakers, 2/1/1 clips each; 6 words, one setting per voice)."""
    os.makedirs(out_dir, exist_ok=True)
    if small:
        speakers = ("flite_kal16", "flite_slt", "festival_ked", "festival_dita", "tuxpaint_fr")
        tasks = [build_speaker_task(out_dir, speakers, {"train": 2, "valid": 1, "test": 1}, seed=seed, progress=progress)]
        tasks += build_word_tasks(out_dir, words=("zero", "seven", "b", "w", "dog", "sky"), rates=(1.0,),
                                  f0_steps=1, festival_rates=(1.0,), seed=seed)
        return tasks
    tasks = [build_speaker_task(out_dir, seed=seed, progress=progress)]
    return tasks + build_word_tasks(out_dir, seed=seed)
