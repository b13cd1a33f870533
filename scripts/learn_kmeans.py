#!/usr/bin/env python3
"""Learn k-means centroids from feature shards (faiss; greedy k-means++ seeding).

    scripts/learn_kmeans.py FEAT_DIR SPLIT OUT.npy --n-clusters 100 [--nshard 1]
        [--percent 0.1 | --max-frames 1000000] [--niter 20] [--n-init 3] [--nredo 1] [--seed 0]

Reads a sample of the shards through memory maps (RAM bounded by the sample); writes the
centroids as a (K, D) float32 .npy and OUT.json with how they were made (the features' source
included, which apply_kmeans.py checks). The shards of all ranks must come from one manifest and
one source. Uses faiss's GPU when faiss-gpu sees one.
"""

import argparse
import logging
import sys

from audio_ssl_ext.clustering.dump import check_shards
from audio_ssl_ext.clustering.kmeans import KMeansError, learn_kmeans
from audio_ssl_ext.clustering.shards import ShardError, check_percent, read_shards, sample_rows
from audio_ssl_ext.durable import DurableError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("feat_dir")
    parser.add_argument("split")
    parser.add_argument("out", help="centroids .npy (OUT.json is written next to it)")
    parser.add_argument("--n-clusters", type=int, required=True)
    parser.add_argument("--nshard", type=int, default=1)
    parser.add_argument("--percent", type=float, default=-1.0,
                        help="fraction of the utterances to learn from, in (0, 1]; -1 = all (fairseq's --percent)")
    parser.add_argument("--max-frames", type=int, default=-1, help="at most this many frames, drawn uniformly (-1: no cap)")
    parser.add_argument("--niter", type=int, default=20, help="Lloyd iterations")
    parser.add_argument("--n-init", type=int, default=3, help="k-means++ seedings tried, the best by potential kept")
    parser.add_argument("--nredo", type=int, default=1, help="best seedings refined by Lloyd; the lowest inertia wins")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # force: importing fairseq already gave the root logger a DEBUG handler (fairseq/models/wav2vec/
    # wav2vec2_classification.py calls basicConfig), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    log = logging.getLogger("learn_kmeans")
    try:
        check_percent(args.percent)
        shards = read_shards(args.feat_dir, args.split, args.nshard)
        info = check_shards(args.feat_dir, args.split, args.nshard)  # one manifest, one source
        sample = sample_rows(shards, args.percent, args.max_frames, args.seed)
        log.info(f"learning k={args.n_clusters} on {sample.shape[0]} frames x {sample.shape[1]} dims")
        model = learn_kmeans(
            sample, args.n_clusters, niter=args.niter, n_init=args.n_init, nredo=args.nredo,
            seed=args.seed, where=f"{args.feat_dir} ({args.split})",
        )
        model.info.source = info["source"] if info else {"feat_dir": args.feat_dir}
        json_path = model.save(args.out)
    except (ShardError, KMeansError, DurableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info(
        f"wrote {args.out} and {json_path}: inertia per frame {model.info.inertia_per_frame:.6g} "
        f"in {model.info.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
