#!/usr/bin/env python3
"""Write fairseq wav manifests (train.tsv, valid.tsv) for a folder of audio files.

    scripts/make_manifest.py AUDIO_DIR OUT_DIR [--sample-rate 16000] [--valid-percent 0.01] ...

The format and the cache are documented in manifests/README.md. Every file left out is listed,
with the reason, on stdout and in OUT_DIR/manifest_report.txt. Exit status 0 when the manifests
were written, 1 when no usable file was found (or the input is wrong).
"""

import argparse
import os
import sys

from audio_ssl_ext.data.make_manifest import (
    DEFAULT_EXTENSIONS,
    REPORT_NAME,
    ManifestError,
    ManifestOptions,
    NoUsableAudioError,
    build_manifests,
    parse_extensions,
)
from audio_ssl_ext.durable import DurableError


def non_negative_seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text}")
    return value


def positive_rate(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"sample rate must be > 0, got {text}")
    return value


def valid_share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a share, not a percentage), got {text}")
    return value


def extension_list(text: str):
    try:
        return parse_extensions(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("audio_dir", metavar="AUDIO_DIR", help="folder searched recursively for audio files")
    add("out_dir", metavar="OUT_DIR", help="where train.tsv, valid.tsv and the report go")
    add("--valid-percent", type=valid_share, default=0.01, metavar="P",
        help="share of files (0-1) in valid.tsv, as fairseq's wav2vec_manifest.py: round(n*P), "
        "at least 1 when P > 0; 0 writes a valid.tsv with only the root line (default 0.01)")
    add("--seed", type=int, default=42, metavar="N", help="seed of the valid split (default 42)")
    add("--ext", type=extension_list, default=DEFAULT_EXTENSIONS, metavar="LIST",
        help=f"comma list of extensions, any case (default {','.join(DEFAULT_EXTENSIONS)})")
    add("--min-seconds", type=non_negative_seconds, metavar="S", help="leave out shorter files")
    add("--max-seconds", type=non_negative_seconds, metavar="S", help="leave out longer files")
    add("--sample-rate", type=positive_rate, metavar="SR",
        help="resample (soxr) and mix down to mono into a cache; the manifest root is the cache")
    add("--cache-dir", metavar="DIR", help="cache for --sample-rate (default OUT_DIR/cache_<SR>)")
    add("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.cache_dir and args.sample_rate is None:
        parser.error("--cache-dir needs --sample-rate")
    if None not in (args.min_seconds, args.max_seconds) and args.min_seconds > args.max_seconds:
        parser.error(f"--min-seconds {args.min_seconds:g} > --max-seconds {args.max_seconds:g}")
    options = ManifestOptions(
        valid_percent=args.valid_percent,
        seed=args.seed,
        extensions=args.ext,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        sample_rate=args.sample_rate,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    try:
        report = build_manifests(args.audio_dir, args.out_dir, options)
    except NoUsableAudioError as err:
        print(err.report.text(), end="")
        print(f"make_manifest: error: {err}", file=sys.stderr)
        return 1
    except (ManifestError, DurableError) as err:
        print(f"make_manifest: error: {err}", file=sys.stderr)
        return 1
    print(report.text(), end="")
    for split in ("train", "valid"):
        print(f"wrote {os.path.join(args.out_dir, split + '.tsv')}")
    print(f"wrote {os.path.join(args.out_dir, REPORT_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
