#!/usr/bin/env python3
"""Label every frame with its nearest centroid: {LABEL_DIR}/{split}.{name} and dict.{name}.txt.

    scripts/apply_kmeans.py FEAT_DIR SPLIT KMEANS.npy LABEL_DIR --manifest-dir DIR [--name km]
        [--nshard 1] [--label-rate R] [--sample-rate S]

One line of ids per manifest line, in manifest order, and always the dictionary with every cluster
id (a missing one makes fairseq map labels to <unk>). Frames per utterance are checked against
the manifest at --label-rate, the task.label_rate training will use (default: the rate the
features were dumped at). The shards must be dumped from this manifest (its content: another order
is refused) and from the source the k-means was learned on. fairseq's joblib k-means files are
refused (a pickle runs its maker's code); the message says how to convert one.
"""

import argparse
import logging
import sys

from audio_ssl_ext.clustering.kmeans import KMeansError
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans
from audio_ssl_ext.clustering.shards import ShardError
from audio_ssl_ext.data.labels import LabelError
from audio_ssl_ext.data.manifest import ManifestError
from audio_ssl_ext.durable import DurableError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("feat_dir")
    parser.add_argument("split")
    parser.add_argument("kmeans", help="centroids .npy from learn_kmeans.py")
    parser.add_argument("label_dir")
    parser.add_argument("--manifest-dir", required=True, help="directory with the {split}.tsv the features came from")
    parser.add_argument("--name", default="km", help="label set name: task.labels entry (default km)")
    parser.add_argument("--nshard", type=int, default=1)
    parser.add_argument("--label-rate", type=float, default=None, help="task.label_rate of training (default: dumped rate)")
    parser.add_argument("--sample-rate", type=int, default=None, help="audio sample rate (default: dumped rate)")
    args = parser.parse_args(argv)
    # force: importing fairseq already gave the root logger a DEBUG handler (fairseq/models/wav2vec/
    # wav2vec2_classification.py calls basicConfig), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    try:
        apply_kmeans(
            args.feat_dir, args.split, args.nshard, args.kmeans, args.label_dir, args.name,
            f"{args.manifest_dir}/{args.split}.tsv", label_rate=args.label_rate, sample_rate=args.sample_rate,
        )
    except (ShardError, KMeansError, LabelError, ManifestError, DurableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
