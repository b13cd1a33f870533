#!/usr/bin/env python3
"""Dump frame features of a manifest split in fairseq's shard format ({split}_{rank}_{nshard}.npy/.len).

    scripts/dump_features.py MANIFEST_DIR SPLIT FEAT_DIR --feature mfcc [--frame-rate 100]
    scripts/dump_features.py MANIFEST_DIR SPLIT FEAT_DIR --checkpoint CKPT --layer 6
    ... [--nshard N --rank R]   (parallel jobs, one shard each)

Sources: a spectral frontend (mfcc = 13 MFCC + deltas + delta-deltas, HuBERT's first iteration;
logmel, chroma, cqt) or layer L of a trained checkpoint (this package's models, fairseq HuBERT).
Files must be at the source's sample rate (frontends: --sample-rate; checkpoints: the model's).
A {split}_{rank}_{nshard}.json next to the shard records the source and its frame rate.
"""

import argparse
import logging
import sys

from audio_ssl_ext.clustering.dump import CheckpointFeatures, FrontendFeatures, dump_features
from audio_ssl_ext.clustering.shards import ShardError
from audio_ssl_ext.data.audio import AudioInputError
from audio_ssl_ext.data.manifest import ManifestError
from audio_ssl_ext.durable import DurableError
from audio_ssl_ext.features import FRONTEND_NAMES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", help="directory with {split}.tsv")
    parser.add_argument("split", help="e.g. train, valid")
    parser.add_argument("feat_dir", help="output directory of the shards")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--feature", choices=FRONTEND_NAMES, help="a spectral frontend")
    source.add_argument("--checkpoint", help="a trained fairseq checkpoint (with --layer)")
    parser.add_argument("--layer", type=int, help="checkpoint layer: L = output of transformer layer L (1-based), 0 = its input")
    parser.add_argument("--frame-rate", type=float, default=100.0, help="frontend frames per second (default 100)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="frontend audio sample rate (default 16000)")
    parser.add_argument("--chunk-seconds", type=float, default=None,
                        help="compute long files in chunks of this length (frontends: 30; checkpoints: the loader's 30)")
    parser.add_argument("--label-dir", default=None,
                        help="checkpoints: where the dict.*.txt it was trained with are now (if they moved)")
    parser.add_argument("--nshard", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a --checkpoint that holds classes outside the weights-only allow-list "
                        "(runs code from whoever made the file: audio_ssl_ext/downstream/README.md#safe-loading)")
    args = parser.parse_args(argv)
    # force: importing fairseq already gave the root logger a DEBUG handler (fairseq/models/wav2vec/
    # wav2vec2_classification.py calls basicConfig), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    if args.checkpoint is not None and args.layer is None:
        parser.error("--checkpoint needs --layer")
    if args.feature is not None and args.layer is not None:
        parser.error("--layer goes with --checkpoint, not --feature")
    try:
        if args.feature:
            extra = {} if args.chunk_seconds is None else {"chunk_seconds": args.chunk_seconds}
            src = FrontendFeatures(args.feature, args.sample_rate, args.frame_rate, device=args.device, **extra)
        else:
            overrides = {"label_dir": args.label_dir} if args.label_dir else None
            src = CheckpointFeatures(
                args.checkpoint, args.layer, device=args.device, chunk_seconds=args.chunk_seconds, task_overrides=overrides,
                trust_checkpoint=args.trust_checkpoint,
            )
        manifest = f"{args.manifest_dir}/{args.split}.tsv"
        dump_features(manifest, args.split, src, args.feat_dir, args.rank, args.nshard)
    except (ShardError, AudioInputError, ManifestError, DurableError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
