"""Build fairseq wav manifests (train.tsv, valid.tsv) from a folder of audio files.

The output is exactly the format of fairseq's examples/wav2vec/wav2vec_manifest.py: a first line
with the absolute audio root, then ``relative/path<TAB>num_samples`` per file. On top of it:
a deterministic order and split, duration filters, an explicit report of every file left out and
why, and (``sample_rate``) a cache of files resampled with soxr and mixed down to mono.

The cache design: a manifest has one root, so with ``sample_rate`` the root is always the cache
folder. Files that need converting are written there as float32 wav (``<stem>.wav``); files that
are already at the rate and mono are symlinked there under their own name. The relative layout of
the audio folder is kept. Every cache folder holds a marker file, and the file search skips any
folder that has one, so a cache inside the audio folder is never mistaken for input.
"""

import collections
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from audio_ssl_ext.data.manifest import ManifestError, write_manifest
from audio_ssl_ext.durable import OutputLock, atomic_write_text, publish, raise_if_disk_full, remove_quietly, temp_path

# --ext values and the libsndfile major format that decodes each (mp3 needs libsndfile >= 1.1).
SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
DEFAULT_EXTENSIONS = tuple(SOUNDFILE_FORMATS)
# float32 keeps the resampler's output as it is: no requantisation, and no clipping of the
# overshoot a band-limited resampler produces near full scale (PCM_16 would clip or wrap it).
# It costs twice the disk of PCM_16; the training path reads float32 anyway.
CACHE_SUBTYPE = "FLOAT"
# soxr's "HQ" (20-bit precision, 95% bandwidth) is its high-quality default.
RESAMPLE_QUALITY = "HQ"
CACHE_MARKER = ".audio_ssl_ext_cache"
REPORT_NAME = "manifest_report.txt"
BLOCK_FRAMES = 1 << 18  # conversion streams in blocks: memory stays flat for hour-long files
WAV_MAX_BYTES = 0xFFFF0000  # a RIFF/WAV header cannot describe more; larger caches use RF64
AudioInfo = sf._SoundFileInfo  # what soundfile.info returns (header only)


class SourceDecodeError(RuntimeError):
    """A source whose header reads but whose audio data does not decode (e.g. a truncated flac)."""


class NoUsableAudioError(ManifestError):
    """Every file was left out (or none was found): no manifest is written."""

    def __init__(self, message: str, report: "ManifestReport"):
        super().__init__(message)
        self.report = report  # what was found and why each file was left out


@dataclass
class ManifestOptions:
    valid_percent: float = 0.01  # share of files in valid.tsv, as fairseq's wav2vec_manifest.py
    seed: int = 42  # seeds the choice of valid files (fairseq's default seed)
    extensions: Sequence[str] = DEFAULT_EXTENSIONS
    min_seconds: Optional[float] = None
    max_seconds: Optional[float] = None
    sample_rate: Optional[int] = None  # None: list files as they are, no cache
    cache_dir: Optional[str] = None  # default: OUT_DIR/cache_<sample_rate>
    progress: bool = True


@dataclass
class LeftOut:
    path: str  # absolute path of the source file
    reason: str


@dataclass
class ManifestEntry:
    source: str  # absolute path of the source file
    name: str  # path relative to the manifest root (the audio folder or the cache)
    num_samples: int  # at the manifest's rate: the cache's when converted
    seconds: float


@dataclass
class ManifestReport:
    audio_dir: str
    out_dir: str
    root: str = ""
    found: int = 0
    found_by_extension: Dict[str, int] = field(default_factory=dict)
    train: List[ManifestEntry] = field(default_factory=list)
    valid: List[ManifestEntry] = field(default_factory=list)
    left_out: List[LeftOut] = field(default_factory=list)
    sample_rates: Dict[int, int] = field(default_factory=dict)  # source rate -> files
    channels: Dict[int, int] = field(default_factory=dict)  # source channel count -> files
    sample_rate: Optional[int] = None
    cache_dir: Optional[str] = None
    cache_counts: Dict[str, int] = field(default_factory=dict)  # converted / up to date / linked
    warnings: List[str] = field(default_factory=list)

    def summary_lines(self) -> List[str]:
        lines = [f"audio folder: {self.audio_dir}", f"found: {_files(self.found)}" + _by_ext(self)]
        lines.append(f"manifest root: {self.root or '(none)'}")
        for split, entries in (("train", self.train), ("valid", self.valid)):
            duration = format_duration(sum(e.seconds for e in entries))
            lines.append(f"{split}.tsv: {_files(len(entries))}, {duration}")
        lines.append("sample rates of the listed sources: " + _counts(self.sample_rates, " Hz"))
        lines.append("channels of the listed sources: " + _counts(self.channels, ""))
        if self.sample_rate is not None:
            lines.append(
                f"cache ({self.sample_rate} Hz mono, float32 wav): {self.cache_dir}: "
                + ", ".join(f"{k} {v}" for k, v in self.cache_counts.items())
            )
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines.append(f"left out: {_files(len(self.left_out))}")
        for reason, count in _reason_counts(self.left_out):
            lines.append(f"  {count} x {reason}")
        return lines

    def text(self) -> str:
        lines = self.summary_lines()
        if self.left_out:
            lines.append("")
            lines.append("files left out (path<TAB>reason):")
            lines += [f"{item.path}\t{item.reason}" for item in self.left_out]
        return "\n".join(lines) + "\n"


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _by_ext(report: ManifestReport) -> str:
    if not report.found_by_extension:
        return ""
    return " (" + ", ".join(f".{k}: {v}" for k, v in sorted(report.found_by_extension.items())) + ")"


def _counts(counter: Dict[int, int], unit: str) -> str:
    if not counter:
        return "none"
    return ", ".join(f"{key}{unit} ({_files(n)})" for key, n in sorted(counter.items()))


def _reason_counts(left_out: List[LeftOut]) -> List[Tuple[str, int]]:
    # Group by the kind of reason (the text before the first colon), not the per-file detail.
    kinds = collections.Counter(item.reason.split(":")[0] for item in left_out)
    return sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))


def parse_extensions(text: str) -> Tuple[str, ...]:
    """'wav, .FLAC' -> ('wav', 'flac'); unknown extensions are an error that lists the choices."""
    extensions = tuple(dict.fromkeys(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip()))
    unknown = [e for e in extensions if e not in SOUNDFILE_FORMATS]
    if not extensions or unknown:
        raise ValueError(
            f"--ext {text!r}: supported extensions are {', '.join(SOUNDFILE_FORMATS)} (comma list)"
        )
    return extensions


def find_audio_files(audio_dir: str, extensions: Sequence[str]) -> List[str]:
    """Absolute paths of the audio files under ``audio_dir``, sorted by their relative path.

    Searches recursively (following symlinked folders once each) and matches extensions without
    regard to case; folders holding a cache marker are skipped.
    """
    wanted = {"." + e.lower() for e in extensions}
    found = []
    visited = set()
    for folder, subfolders, names in os.walk(audio_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited or CACHE_MARKER in names:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()
        found += [os.path.join(folder, n) for n in names if os.path.splitext(n)[1].lower() in wanted]
    return sorted(found, key=lambda p: os.path.relpath(p, audio_dir))


def split_train_valid(num_files: int, valid_percent: float, seed: int) -> List[bool]:
    """Which files go to valid: an exact count, chosen by a seeded generator.

    fairseq flips a coin per file, so its valid size varies; here it is round(n * valid_percent),
    at least one file when valid_percent > 0 and at most n - 1, so train is never empty.
    """
    if not 0 <= valid_percent < 1:
        raise ValueError(f"valid_percent must be in [0, 1), got {valid_percent}")
    num_valid = 0
    if valid_percent > 0 and num_files > 1:
        num_valid = min(num_files - 1, max(1, round(num_files * valid_percent)))
    chosen = set(random.Random(seed).sample(range(num_files), num_valid))
    return [i in chosen for i in range(num_files)]


def unsupported_format_reason(path: str) -> Optional[str]:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    major = SOUNDFILE_FORMATS.get(ext)
    if major is None or major in sf.available_formats():
        return None
    hint = " (mp3 needs libsndfile >= 1.1)" if ext == "mp3" else ""
    version = sf.__libsndfile_version__
    return f"unsupported format: the installed libsndfile {version} cannot read .{ext}{hint}"


def probe(path: str) -> Tuple[Optional[AudioInfo], Optional[str]]:
    """soundfile.info (header only, no decoding), or the reason the file cannot be used."""
    reason = unsupported_format_reason(path)
    if reason:
        return None, reason
    if not os.path.isfile(path):
        return None, "unreadable: not a file (a broken link?)"
    if os.path.getsize(path) == 0:
        return None, "unreadable: empty file (0 bytes)"
    try:
        info = sf.info(path)
    except Exception as err:  # LibsndfileError, RuntimeError, ...: all mean "cannot read"
        return None, f"unreadable: {err}"
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        return None, f"unreadable: no audio ({info.frames} samples, {info.samplerate} Hz)"
    return info, None


def duration_reason(
    seconds: float, min_seconds: Optional[float], max_seconds: Optional[float]
) -> Optional[str]:
    if min_seconds is not None and seconds < min_seconds:
        return f"too short: {seconds:.3f} s < --min-seconds {min_seconds:g}"
    if max_seconds is not None and seconds > max_seconds:
        return f"too long: {seconds:.3f} s > --max-seconds {max_seconds:g}"
    return None


def converted_length(num_samples: int, source_rate: int, target_rate: int) -> float:
    return num_samples * target_rate / source_rate


def cache_is_up_to_date(source: str, cached: str, info: AudioInfo, sample_rate: int) -> bool:
    """A converted file is reused when it carries the source's mtime (set when it was written)
    and has the target rate, one channel and the length the source implies."""
    if os.path.islink(cached) or not os.path.isfile(cached):
        return False
    if os.stat(cached).st_mtime_ns != os.stat(source).st_mtime_ns:
        return False
    try:
        done = sf.info(cached)
    except Exception:
        return False
    expected = converted_length(info.frames, info.samplerate, sample_rate)
    return done.samplerate == sample_rate and done.channels == 1 and abs(done.frames - expected) <= 1


def _mono_blocks(source: str) -> Iterator[np.ndarray]:
    # Read errors become SourceDecodeError so that they leave the file out, while errors writing
    # the cache (disk full, permissions) stop the run.
    try:
        with sf.SoundFile(source) as f:
            for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                yield block.mean(axis=1, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SourceDecodeError(str(err)) from err


def convert_to_cache(source: str, cached: str, info: AudioInfo, sample_rate: int) -> int:
    """Mix ``source`` down to mono (mean of channels), resample it with soxr and write it as
    float32 wav at ``cached``, streaming; returns the samples written.

    Written under a temporary name unique to this run, fsynced and renamed, so an interrupted run
    leaves no truncated cache file that a rerun could take for finished; the source's mtime is
    copied for the up-to-date check.
    """
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    partial = temp_path(cached)
    expected = converted_length(info.frames, info.samplerate, sample_rate)
    container = "RF64" if expected * 4 + 1024 > WAV_MAX_BYTES else "WAV"
    resampler = None
    if info.samplerate != sample_rate:
        resampler = soxr.ResampleStream(
            info.samplerate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )
    written = 0
    try:
        with sf.SoundFile(
            partial, "w", samplerate=sample_rate, channels=1, subtype=CACHE_SUBTYPE, format=container
        ) as out:
            for block in _mono_blocks(source):
                if resampler is not None:
                    block = resampler.resample_chunk(block, last=False)
                out.write(block)
                written += len(block)
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                out.write(tail)
                written += len(tail)
        stat = os.stat(source)
        os.utime(partial, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        publish(partial, cached)
    except OSError as err:
        raise_if_disk_full(err, cached)
        raise
    finally:
        remove_quietly(partial)
    return written


def link_into_cache(source: str, cached: str) -> None:
    """Symlink a file that needs no conversion (kept when the right link is already there)."""
    target = os.path.realpath(source)
    if os.path.islink(cached) and os.readlink(cached) == target:
        return
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    if os.path.lexists(cached):
        os.remove(cached)  # a stale conversion or a link to elsewhere
    os.symlink(target, cached)


def prepare_cache_dir(cache_dir: str, sample_rate: int) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    marker = os.path.join(cache_dir, CACHE_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(
                f"Cache of audio_ssl_ext's make_manifest.py: {sample_rate} Hz mono. Conversions are "
                "float32 wav, files needing none are symlinks. Safe to delete; rerun to rebuild.\n"
            )


def needs_conversion(info: AudioInfo, sample_rate: int) -> bool:
    return info.samplerate != sample_rate or info.channels != 1


def cache_name(name: str, info: AudioInfo, sample_rate: int) -> str:
    """Conversions are wav files named after the source's stem; links keep the source's name."""
    return os.path.splitext(name)[0] + ".wav" if needs_conversion(info, sample_rate) else name


def cache_entry(
    source: str,
    cached_name: str,
    info: AudioInfo,
    cache_dir: str,
    sample_rate: int,
    counts: collections.Counter,
) -> int:
    """Put one usable file in the cache under ``cached_name``; returns its samples there."""
    cached = os.path.join(cache_dir, cached_name)
    if not needs_conversion(info, sample_rate):
        link_into_cache(source, cached)
        counts["linked"] += 1
        return info.frames
    if cache_is_up_to_date(source, cached, info, sample_rate):
        counts["up to date"] += 1
        return sf.info(cached).frames
    if os.path.lexists(cached):
        os.remove(cached)  # never write through a stale symlink into a source file
    num_samples = convert_to_cache(source, cached, info, sample_rate)
    counts["converted"] += 1
    return num_samples


def check_source(
    path: str, name: str, options: ManifestOptions
) -> Tuple[Optional[AudioInfo], Optional[str]]:
    """The file's header info, or why it is left out (name, readability, duration filters)."""
    if any(c in name for c in "\t\n\r"):
        return None, "unusable name: a tab or line break cannot be written in a manifest"
    info, reason = probe(path)
    if reason is None:
        seconds = info.frames / info.samplerate
        reason = duration_reason(seconds, options.min_seconds, options.max_seconds)
    return info, reason


def collect_entries(
    audio_root: str, paths: List[str], options: ManifestOptions, report: ManifestReport
) -> List[ManifestEntry]:
    """Probe, filter and (with a sample rate) cache every file; left-out files go to the report."""
    rates, channels = collections.Counter(), collections.Counter()
    cache_counts = collections.Counter({"converted": 0, "up to date": 0, "linked": 0})
    taken: Dict[str, str] = {}  # name in the manifest -> the source that has it
    entries = []
    for path in tqdm(paths, desc="audio files", unit="file", disable=not options.progress):
        name = os.path.relpath(path, audio_root)
        info, reason = check_source(path, name, options)
        num_samples = info.frames if info else 0
        if reason is None and options.sample_rate is not None:
            name = cache_name(name, info, options.sample_rate)
            if name in taken:
                reason = f"name clash: its cache file {name} is already taken by {taken[name]}"
            else:
                try:
                    num_samples = cache_entry(
                        path, name, info, report.cache_dir, options.sample_rate, cache_counts
                    )
                except SourceDecodeError as err:
                    reason = f"unreadable: decoding failed ({err})"
                if reason is None and num_samples == 0:
                    reason = "too short: no samples left after resampling"
        if reason is not None:
            report.left_out.append(LeftOut(path, reason))
            continue
        taken[name] = path
        rates[info.samplerate] += 1
        channels[info.channels] += 1
        entries.append(ManifestEntry(path, name, num_samples, info.frames / info.samplerate))
    report.sample_rates, report.channels = dict(rates), dict(channels)
    if options.sample_rate is not None:
        report.cache_counts = dict(cache_counts)
    return entries


def build_manifests(
    audio_dir: str, out_dir: str, options: Optional[ManifestOptions] = None
) -> ManifestReport:
    """Write OUT_DIR/train.tsv, OUT_DIR/valid.tsv and OUT_DIR/manifest_report.txt.

    Raises NoUsableAudioError (after writing the report) when no file is usable; the .tsv files
    are then not touched. The output folder (and the cache) are locked for the run: a second run
    into them is refused, naming the first.
    """
    options = options or ManifestOptions()
    if not os.path.isdir(audio_dir):
        raise ManifestError(f"{audio_dir}: audio folder not found")
    os.makedirs(out_dir, exist_ok=True)
    with contextlib.ExitStack() as locks:
        locks.enter_context(OutputLock(out_dir))
        return _build_manifests(audio_dir, out_dir, options, locks)


def _build_manifests(audio_dir: str, out_dir: str, options: ManifestOptions, locks) -> ManifestReport:
    split_train_valid(0, options.valid_percent, options.seed)  # validates valid_percent up front
    audio_root = os.path.realpath(audio_dir)
    os.makedirs(out_dir, exist_ok=True)
    report = ManifestReport(audio_root, os.path.realpath(out_dir), sample_rate=options.sample_rate)
    if options.sample_rate is not None:
        default_cache = os.path.join(out_dir, f"cache_{options.sample_rate}")
        report.cache_dir = os.path.realpath(options.cache_dir or default_cache)
        if os.path.commonpath([report.cache_dir, audio_root]) == report.cache_dir:
            # The search skips cache folders, so the audio would vanish from its own manifest.
            raise ManifestError(f"cache folder {report.cache_dir} is, or contains, the audio folder")
        prepare_cache_dir(report.cache_dir, options.sample_rate)
        locks.enter_context(OutputLock(report.cache_dir))  # --cache-dir may be shared by two output folders

    paths = find_audio_files(audio_root, options.extensions)
    report.found = len(paths)
    extensions = (os.path.splitext(p)[1].lower().lstrip(".") for p in paths)
    report.found_by_extension = dict(collections.Counter(extensions))
    entries = collect_entries(audio_root, paths, options, report)
    report.root = report.cache_dir if options.sample_rate is not None else audio_root
    if options.sample_rate is None and len(report.sample_rates) > 1:
        report.warnings.append(
            "mixed sample rates: training refuses files at another rate than the task's; rerun with "
            "--sample-rate SR to resample them into a cache"
        )
    report_path = os.path.join(out_dir, REPORT_NAME)
    if not entries:
        report.root = ""
        write_report(report, report_path)
        raise NoUsableAudioError(
            f"no usable audio file under {audio_root} ({report.found} found with extension "
            f"{', '.join(options.extensions)}; {len(report.left_out)} left out, see {report_path}); "
            "no manifest written",
            report,
        )

    is_valid = split_train_valid(len(entries), options.valid_percent, options.seed)
    report.train = [e for e, v in zip(entries, is_valid) if not v]
    report.valid = [e for e, v in zip(entries, is_valid) if v]
    if options.valid_percent > 0 and not report.valid:
        report.warnings.append("only one usable file: valid.tsv is empty")
    for split, chosen in (("train", report.train), ("valid", report.valid)):
        names, sizes = [e.name for e in chosen], [e.num_samples for e in chosen]
        write_manifest(os.path.join(out_dir, f"{split}.tsv"), report.root, names, sizes)
    write_report(report, report_path)
    return report


def write_report(report: ManifestReport, path: str) -> None:
    atomic_write_text(path, report.text())
