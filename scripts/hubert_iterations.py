#!/usr/bin/env python3
"""HuBERT-style pseudo-label iterations end to end, on a manifest dir (train.tsv, valid.tsv).

    scripts/hubert_iterations.py MANIFEST_DIR WORK_DIR [--iterations 2] [--clusters 100 500]
        [--config-name tiny] [--layer L] [--train-override optimization.max_update=100 ...]
        [--demo-corpus demo/corpus]

Iteration 1: MFCC (100 Hz) -> k-means (k=100) -> labels -> fairseq-hydra-train.
Iteration i > 1: layer L of iteration i-1's checkpoint (default: half its depth) -> k-means
(k=500) -> labels -> train. Every stage is skipped when its outputs exist, so a killed run resumes
where it stopped; see audio_ssl_ext/clustering/iterations.py for the layout under WORK_DIR.
"""

import argparse
import logging
import sys

from audio_ssl_ext.clustering.iterations import IterationsConfig, IterationsError, run_iterations
from audio_ssl_ext.clustering.kmeans import KMeansError
from audio_ssl_ext.clustering.shards import ShardError
from audio_ssl_ext.data.audio import AudioInputError
from audio_ssl_ext.data.labels import LabelError
from audio_ssl_ext.features import FRONTEND_NAMES


def main(argv=None) -> int:
    defaults = IterationsConfig(manifest_dir="", work_dir="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--clusters", type=int, nargs="+", default=defaults.clusters,
                        help="k per iteration; the last value repeats (default 100 500)")
    parser.add_argument("--first-feature", choices=FRONTEND_NAMES, default=defaults.first_feature)
    parser.add_argument("--first-frame-rate", type=float, default=defaults.first_frame_rate)
    parser.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    parser.add_argument("--layer", type=int, default=None, help="layer of the previous model (default: half its depth)")
    parser.add_argument("--config-dir", default=defaults.config_dir)
    parser.add_argument("--config-name", default=defaults.config_name)
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra fairseq-hydra-train override, repeatable")
    parser.add_argument("--percent", type=float, default=defaults.percent)
    parser.add_argument("--max-frames", type=int, default=defaults.max_frames)
    parser.add_argument("--niter", type=int, default=defaults.niter)
    parser.add_argument("--n-init", type=int, default=defaults.n_init)
    parser.add_argument("--nredo", type=int, default=defaults.nredo)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--demo-corpus", default=None, help="report PNMI/purity of each iteration's labels against it")
    parser.add_argument("--reference-name", default=defaults.reference_name)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or training output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    cfg = IterationsConfig(
        manifest_dir=args.manifest_dir, work_dir=args.work_dir, iterations=args.iterations, clusters=args.clusters,
        first_feature=args.first_feature, first_frame_rate=args.first_frame_rate, sample_rate=args.sample_rate,
        layer=args.layer, config_dir=args.config_dir, config_name=args.config_name,
        train_overrides=args.train_override, percent=args.percent, max_frames=args.max_frames, niter=args.niter,
        n_init=args.n_init, nredo=args.nredo, seed=args.seed, device=args.device, demo_corpus=args.demo_corpus,
        reference_name=args.reference_name, progress=not args.quiet,
    )
    try:
        checkpoints = run_iterations(cfg)
    except (IterationsError, ShardError, KMeansError, LabelError, AudioInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for i, path in enumerate(checkpoints, start=1):
        print(f"hubert_iterations: iteration {i}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
