#!/usr/bin/env python3
"""HuBERT-style pseudo-label iterations end to end, on a manifest dir (train.tsv, valid.tsv).

    scripts/hubert_iterations.py MANIFEST_DIR WORK_DIR --config-dir examples/musichubert
        [--config-name tiny] [--iterations 2] [--clusters 100 500] [--layer L]
        [--train-override optimization.max_update=100 ...] [--demo-corpus demo/corpus] [--dry-run]

Iteration 1: MFCC (100 Hz) -> k-means (k=100) -> labels -> fairseq-hydra-train.
Iteration i > 1: layer L of iteration i-1's checkpoint (default: half its depth) -> k-means
(k=500) -> labels -> train. A stage whose outputs exist is reused when it was made from the same
inputs (content hashes and settings, WORK_DIR/iter<i>/params.json), so a killed run resumes where
it stopped; a rerun with other inputs stops, naming what changed and what to delete. See
audio_ssl_ext/clustering/iterations.py for the layout under WORK_DIR.
The terminal shows the stages and progress bars; each iteration's whole training output goes to
WORK_DIR/iter<i>/train.log. --dry-run checks the inputs and prints the training config that
fairseq-hydra-train composes for iteration 1, without running anything.
"""

import argparse
import logging
import sys
import warnings

from audio_ssl_ext.clustering.iterations import IterationsConfig, IterationsError, dry_run, run_iterations
from audio_ssl_ext.clustering.kmeans import KMeansError
from audio_ssl_ext.clustering.shards import ShardError
from audio_ssl_ext.data.audio import AudioInputError
from audio_ssl_ext.data.labels import LabelError
from audio_ssl_ext.data.manifest import ManifestError
from audio_ssl_ext.durable import DurableError
from audio_ssl_ext.features import FRONTEND_NAMES
from audio_ssl_ext.tools.demo_corpus import DemoCorpusError, reference_labels


def main(argv=None) -> int:
    defaults = IterationsConfig(manifest_dir="", work_dir="", config_dir="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--config-dir", required=True,
                        help="folder of the training configs (examples/musichubert in the repository)")
    parser.add_argument("--config-name", default=defaults.config_name)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--clusters", type=int, nargs="+", default=defaults.clusters,
                        help="k per iteration; the last value repeats (default 100 500)")
    parser.add_argument("--first-feature", choices=FRONTEND_NAMES, default=defaults.first_feature)
    parser.add_argument("--first-frame-rate", type=float, default=defaults.first_frame_rate)
    parser.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    parser.add_argument("--layer", type=int, default=None, help="layer of the previous model (default: half its depth)")
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
    parser.add_argument("--reference-name", default="pitch", help="demo corpus frame labels: pitch or event")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the inputs and print iteration 1's composed training config; run nothing")
    args = parser.parse_args(argv)
    # force: importing fairseq has already given the root logger a DEBUG handler (basicConfig in
    # one of its model files), which would make this call a no-op and print every library's DEBUG.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    # Iteration i > 1 loads iteration i-1's model in this process: fairseq's INFO (the model's whole
    # config) and torch's weight_norm deprecation notice (fairseq's positional conv) are not steps.
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.* is deprecated")
    cfg = IterationsConfig(
        manifest_dir=args.manifest_dir, work_dir=args.work_dir, config_dir=args.config_dir,
        config_name=args.config_name, iterations=args.iterations, clusters=args.clusters,
        first_feature=args.first_feature, first_frame_rate=args.first_frame_rate, sample_rate=args.sample_rate,
        layer=args.layer, train_overrides=args.train_override, percent=args.percent, max_frames=args.max_frames,
        niter=args.niter, n_init=args.n_init, nredo=args.nredo, seed=args.seed, device=args.device,
        progress=not args.quiet,
    )
    try:
        if args.dry_run:
            print(dry_run(cfg), end="")
            return 0
        reference = reference_labels(args.demo_corpus, args.reference_name) if args.demo_corpus else None
        checkpoints = run_iterations(cfg, reference)
    # ValueError: also the checkpoint loader's CheckpointError, when iteration i > 1 reads its model.
    except (
        IterationsError, ShardError, KMeansError, LabelError, AudioInputError, ManifestError, DemoCorpusError,
        DurableError, ValueError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for i, path in enumerate(checkpoints, start=1):
        print(f"hubert_iterations: iteration {i}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
