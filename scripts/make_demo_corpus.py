#!/usr/bin/env python
"""Synthesize the labelled demo corpus (numpy only): wavs plus clip- and frame-level labels.

    python scripts/make_demo_corpus.py OUT_DIR [--num-clips 96 --clip-seconds 4 --sample-rate 16000
                                                --label-rate 50 --seed 0]

The files and label formats are described in audio_ssl_ext/tools/demo_corpus.py.
"""

import argparse
import os
import sys
import time

from audio_ssl_ext.tools.demo_corpus import (
    CLIP_LABELS,
    EVENTS,
    FRAME_LABELS,
    LABELS_JSON,
    DemoCorpusError,
    make_demo_corpus,
    read_label_info,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out_dir",
        help="folder for the wavs and label files (created; a previous demo corpus there is replaced)",
    )
    parser.add_argument(
        "--num-clips", type=int, default=96, help="clips, balanced over the 4 classes (default 96)"
    )
    parser.add_argument(
        "--clip-seconds", type=float, default=4.0, help="length of every clip (default 4)"
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    parser.add_argument(
        "--label-rate",
        type=int,
        default=50,
        help="frame labels per second; must divide the sample rate (default 50)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="everything is deterministic from it (default 0)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    try:
        out_dir = make_demo_corpus(
            args.out_dir,
            num_clips=args.num_clips,
            clip_seconds=args.clip_seconds,
            sample_rate=args.sample_rate,
            label_rate=args.label_rate,
            seed=args.seed,
            progress=True,
        )
    except DemoCorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = read_label_info(out_dir)
    minutes = info["num_clips"] * info["clip_seconds"] / 60.0
    print(
        f"wrote {info['num_clips']} wavs ({minutes:.1f} min at {info['sample_rate']} Hz, 16-bit) to "
        f"{os.path.abspath(out_dir)} in {time.perf_counter() - began:.1f} s"
    )
    print(f"  {CLIP_LABELS}: class per clip ({', '.join(info['clip_classes'])})")
    print(
        f"  {FRAME_LABELS}: MIDI pitch and event id per frame at {info['label_rate']} Hz "
        f"({info['frames_per_clip']} frames per clip)"
    )
    print(f"  {EVENTS}: onset, offset, type and notes of every event")
    print(f"  {LABELS_JSON}: rates, class and event names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
