#!/usr/bin/env python
"""Probe benchmark over HEAR-format tasks: checkpoints vs. random-init and log-mel baselines.

    python scripts/probe.py --tasks-dir eval_tasks --checkpoint musichubert=ckpt.pt \\
        [--checkpoint music2vec=other.pt ...] [--layer weighted|last|mean|N] [--seeds 5] \\
        [--features NAME=SET ...] [--out results/probe]

Every sub-folder of --tasks-dir holding a task_metadata.json is a task (scripts/build_eval_tasks.py
writes them). Each checkpoint also brings its random-init twin ("NAME (random init)": the same
config with fresh weights); "log-mel stats" is always included. A checkpoint is named by NAME= or
its file name; two of one name are refused (name them apart). ``--features NAME=SET`` picks the
hidden states of a learner that has several (JOOCI: content, other, both), or ``utterance`` for
its pooled utterance embedding; the same checkpoint may be named twice with different sets. Writes probe.json, probe.md and
probe.png to --out and prints the table. See audio_ssl_ext/downstream/probe.py for the protocol.
"""

import argparse
import logging
import os

from audio_ssl_ext.downstream.load import load_model
from audio_ssl_ext.downstream.probe import (
    LOGMEL_NAME,
    RANDOM_INIT_SUFFIX,
    ProbeConfig,
    check_model_names,
    checkpoint_embedder,
    utterance_embedder,
    logmel_statistics_embedder,
    markdown_table,
    run_probe,
    write_results,
)


def named_checkpoint(text: str):
    name, sep, path = text.partition("=")
    if not sep:
        name, path = os.path.splitext(os.path.basename(text))[0], text
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path}: checkpoint not found")
    return name, path


def named_features(text: str):
    name, sep, choice = text.partition("=")
    if not sep or not name or not choice:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SET")
    return name, choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--checkpoint", action="append", type=named_checkpoint, default=[], metavar="[NAME=]PATH")
    parser.add_argument("--features", action="append", type=named_features, default=[], metavar="NAME=SET",
                        help="hidden-state set of checkpoint NAME, or 'utterance' (its pooled embedding)")
    parser.add_argument("--no-random-init", action="store_true", help="leave out the random-init baselines")
    parser.add_argument("--layer", default="weighted", help="weighted (learned), last, mean, or a hidden-state index")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=500)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read checkpoints that hold classes outside the safe-loading allow-list with the full "
                             "unpickler, which can run code from the file (audio_ssl_ext/checkpoint_io.py)")
    parser.add_argument("--out", default="results/probe")
    args = parser.parse_args()
    # force: importing fairseq already gave the root logger a DEBUG handler (fairseq/models/wav2vec/
    # wav2vec2_classification.py calls basicConfig), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)

    tasks = sorted(os.path.join(args.tasks_dir, d) for d in os.listdir(args.tasks_dir)
                   if os.path.isfile(os.path.join(args.tasks_dir, d, "task_metadata.json")))
    if not tasks:
        parser.error(f"{args.tasks_dir}: no task folders (run scripts/build_eval_tasks.py first)")
    try:
        check_model_names(args.checkpoint)
    except ValueError as err:
        parser.error(str(err))
    features = dict(args.features)
    unknown = sorted(set(features) - {name for name, _ in args.checkpoint})
    if unknown:
        parser.error(f"--features names no --checkpoint: {unknown}")
    embedders = {}
    for name, path in args.checkpoint:
        choice = features.get(name)
        for suffix, random_init in (("", False), (RANDOM_INIT_SUFFIX, True)):
            if random_init and args.no_random_init:
                continue
            model = load_model(path, device=args.device, random_init=random_init,
                               features=None if choice == "utterance" else choice, trust_checkpoint=args.trust_checkpoint)
            embedders[name + suffix] = utterance_embedder(model) if choice == "utterance" else checkpoint_embedder(model)
    embedders[LOGMEL_NAME] = logmel_statistics_embedder()
    cfg = ProbeConfig(seeds=args.seeds, layer=args.layer, max_epochs=args.max_epochs, patience=args.patience)
    results = run_probe(tasks, embedders, cfg)
    paths = write_results(results, args.out)
    print(markdown_table(results))
    logging.info("wrote %s", ", ".join(paths.values()))


if __name__ == "__main__":
    main()
