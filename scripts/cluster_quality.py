#!/usr/bin/env python3
"""Cluster quality of a label file: usage histogram, entropy, and PNMI / purity vs reference labels.

    scripts/cluster_quality.py LABELS --manifest M.tsv --label-rate 50
        [--reference REF_LABELS --reference-rate 100]      # one line of integer labels per manifest line
        [--demo-corpus DIR [--reference-name pitch|event]] # the demo corpus' frame labels
        [--json OUT.json] [--histogram]

LABELS is a {split}.{name} file of apply_kmeans.py; the number of clusters is read from
dict.{name}.txt next to it. Reference labels are aligned to the label frames by time (the
reference frame holding each frame's centre). PNMI = I(ref; cluster) / H(ref); purity =
E_cluster[max_ref p(ref | cluster)] (HuBERT's phone purity); cluster purity = E_ref[max_cluster p(cluster | ref)].
"""

import argparse
import os
import sys

from audio_ssl_ext.clustering.quality import (
    align_references,
    cluster_quality,
    histogram,
    read_label_lines,
    references_in_manifest_order,
)
from audio_ssl_ext.data.labels import LabelError, check_dictionary_file
from audio_ssl_ext.data.manifest import ManifestError, read_manifest
from audio_ssl_ext.durable import DurableError, atomic_write_json
from audio_ssl_ext.tools.demo_corpus import DemoCorpusError, reference_labels


def n_clusters_of(labels_path: str) -> int:
    directory, base = os.path.split(labels_path)
    name = base.split(".", 1)[1] if "." in base else base
    dict_path = os.path.join(directory, f"dict.{name}.txt")
    if not os.path.isfile(dict_path):
        raise LabelError(f"{dict_path}: dictionary of {labels_path} not found")
    check_dictionary_file(dict_path)
    with open(dict_path) as f:
        return sum(1 for line in f if line.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", help="a {split}.{name} label file")
    parser.add_argument("--manifest", required=True, help="the {split}.tsv the labels follow")
    parser.add_argument("--label-rate", type=float, required=True, help="frames per second of LABELS")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--reference", help="reference label file, one line of integers per manifest line")
    reference.add_argument("--demo-corpus", help="a demo corpus directory (its frame_labels.tsv)")
    parser.add_argument("--reference-rate", type=float, help="frames per second of --reference")
    parser.add_argument("--reference-name", default="pitch", help="demo corpus frame labels: pitch or event")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--histogram", action="store_true", help="print the count of every cluster id")
    args = parser.parse_args(argv)
    if args.reference and args.reference_rate is None:
        parser.error("--reference needs --reference-rate")
    try:
        manifest = read_manifest(args.manifest)
        labels = read_label_lines(args.labels, manifest)
        n_clusters = n_clusters_of(args.labels)
        references = None
        if args.reference:
            references, rate = read_label_lines(args.reference, manifest), args.reference_rate
        elif args.demo_corpus:
            reference = reference_labels(args.demo_corpus, args.reference_name)
            references = references_in_manifest_order(reference.by_file, manifest, reference.where)
            rate = reference.rate
        if references is not None:
            names = [f"{args.labels}, line {i + 1} ({f})" for i, f in enumerate(manifest.files)]
            references = align_references(labels, args.label_rate, references, rate, names)
        report = cluster_quality(labels, n_clusters, references)
    except (LabelError, ManifestError, DemoCorpusError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"cluster_quality {args.labels}: {report.format()}")
    if args.histogram:
        counts = histogram(labels, n_clusters)
        print(" ".join(f"{i}:{c}" for i, c in enumerate(counts.tolist())))
    if args.json:
        try:
            atomic_write_json(args.json, report.as_dict())
        except DurableError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
