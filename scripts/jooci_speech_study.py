#!/usr/bin/env python3
"""Does JOOCI's Other encoder hold the speaker, and its Content encoder the words? A probe study
on multi-speaker speech built offline from Debian packages.

    scripts/jooci_speech_study.py WORK_DIR [--config-dir examples/jooci] [--config-name tiny]
        [--updates 250] [--clusters 50] [--utterances 24] [--seconds 6] [--seeds 3]
        [--feature-sets content other utterance both] [--train-override KEY=VALUE ...]

Stages, each skipped when its output exists (rerun a killed command to continue):

1. WORK_DIR/corpus: the pretraining corpus (audio_ssl_ext/tools/speech_corpus.py: flite's and
   festival's voices, tuxpaint's recorded speech; ``--utterances`` x ``--seconds`` per speaker);
   WORK_DIR/tasks: the probe tasks speaker_id, spoken_word, spoken_word_real.
2. WORK_DIR/manifest: train.tsv / valid.tsv over the corpus (scripts/make_manifest.py).
3. WORK_DIR/train/iter1: MFCC at 50 Hz -> k-means (``--clusters``) -> labels ``km`` ->
   ``fairseq-hydra-train --config-dir CONFIG_DIR --config-name tiny task.labels=[km]
   task.label_rate=50 optimization.max_update=UPDATES ...`` (iteration 1 of
   audio_ssl_ext/clustering/iterations.py; the whole training output goes to train.log there).
4. WORK_DIR/probe: scripts/probe.py on the tasks, one probed model per feature set
   (``--checkpoint jooci_content=CKPT --features jooci_content=content``, ... ``other``,
   ``utterance`` (the Other encoder's pooled utterance embedding), ``both``), each with its
   random-init twin, plus log-mel statistics; ``--seeds`` classifier seeds, 95% CIs.
   probe.json, probe.md (the table), probe.png, probe.log.

``--feature-sets none`` probes the checkpoint's default hidden states once (a learner without
feature sets, e.g. ``--config-dir examples/musichubert``). WORK_DIR/study.json records the
settings; a rerun with other corpus or training settings in the same WORK_DIR is refused.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
LABEL_RATE = 50.0  # the Content encoder's frame rate at 16 kHz: MFCC labels dumped at 50 Hz
logger = logging.getLogger("jooci_speech_study")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir")
    parser.add_argument("--config-dir", default=os.path.join(REPO, "examples", "jooci"))
    parser.add_argument("--config-name", default="tiny")
    parser.add_argument("--updates", type=int, default=250,
                        help="optimization.max_update (tiny JOOCI as committed trips its collapse guard near 270)")
    parser.add_argument("--save-every", type=int, default=None,
                        help="checkpoint and validate every N updates (default: updates / 3)")
    parser.add_argument("--clusters", type=int, default=50, help="k-means clusters of the MFCC labels")
    parser.add_argument("--utterances", type=int, default=24, help="pretraining clips per speaker")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each pretraining clip")
    parser.add_argument("--small-tasks", action="store_true", help="the tests' task subset (minutes less)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, tasks and k-means")
    parser.add_argument("--seeds", type=int, default=3, help="probe classifier seeds")
    parser.add_argument("--layer", default="weighted", help="probe layer: weighted, last, mean or an index")
    parser.add_argument("--feature-sets", nargs="+", default=["content", "other", "utterance", "both"],
                        help="feature sets to probe (JOOCI: content other utterance both); none: the default")
    parser.add_argument("--name", default="jooci", help="model name prefix in the table")
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra fairseq-hydra-train override, repeatable")
    parser.add_argument("--max-epochs", type=int, default=500, help="probe classifier epochs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--until", choices=("data", "train", "probe"), default="probe",
                        help="stop after this stage (data: corpus, tasks, manifests; train: labels and training)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def record_settings(args) -> None:
    """WORK_DIR/study.json: what the corpus and training were made with; refuse a mismatch."""
    settings = {k: getattr(args, k) for k in ("config_dir", "config_name", "updates", "save_every", "clusters",
                                              "utterances", "seconds", "small_tasks", "seed", "train_override")}
    settings["config_dir"] = os.path.abspath(settings["config_dir"])
    path = os.path.join(args.work_dir, "study.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            sys.exit(f"error: {path}: made with other settings ({', '.join(f'{k}={previous.get(k)!r}' for k in changed)}); "
                     f"use another WORK_DIR, or remove it")
        return
    os.makedirs(args.work_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")


def stage(name: str, done: bool) -> bool:
    if done:
        logger.info("%s: done before, skipped", name)
    else:
        logger.info("%s ...", name)
    return not done


def build_data(args) -> str:
    from audio_ssl_ext.tools.speech_corpus import build_pretraining_corpus, build_speech_tasks

    corpus = os.path.join(args.work_dir, "corpus")
    if stage(f"pretraining corpus -> {corpus}", os.path.isfile(os.path.join(corpus, "utterances.tsv"))):
        start = time.time()
        partial = corpus + ".partial"
        build_pretraining_corpus(partial, utterances=args.utterances, seconds=args.seconds, seed=args.seed,
                                 task_seed=args.seed, progress=not args.quiet)
        os.replace(partial, corpus)
        logger.info("wrote %s (%.0f s)", corpus, time.time() - start)
    tasks = os.path.join(args.work_dir, "tasks")
    if stage(f"probe tasks -> {tasks}", os.path.isfile(os.path.join(tasks, "done"))):
        start = time.time()
        written = build_speech_tasks(tasks, small=args.small_tasks, seed=args.seed, progress=not args.quiet)
        for task in written:
            with open(os.path.join(task, "task_metadata.json")) as f:
                counts = json.load(f)["num_examples"]
            logger.info("  %s: %s", task, ", ".join(f"{k} {v}" for k, v in counts.items()))
        open(os.path.join(tasks, "done"), "w").close()
        logger.info("wrote %s (%.0f s)", tasks, time.time() - start)
    manifest = os.path.join(args.work_dir, "manifest")
    if stage(f"manifests -> {manifest}", os.path.isfile(os.path.join(manifest, "valid.tsv"))):
        command = [sys.executable, os.path.join(SCRIPTS, "make_manifest.py"), os.path.join(corpus, "wavs"), manifest,
                   "--valid-percent", "0.05", "--seed", str(args.seed)] + (["--no-progress"] if args.quiet else [])
        subprocess.run(command, check=True)
    return manifest


def train(args, manifest: str) -> str:
    from audio_ssl_ext.clustering.iterations import IterationsConfig, last_checkpoint, run_iteration

    save_every = args.save_every or max(20, args.updates // 3)
    overrides = [f"optimization.max_update={args.updates}", f"checkpoint.save_interval_updates={save_every}",
                 f"dataset.validate_interval_updates={save_every}", "common.log_interval=10",
                 *args.train_override]
    cfg = IterationsConfig(
        manifest_dir=manifest, work_dir=os.path.join(args.work_dir, "train"), config_dir=args.config_dir,
        config_name=args.config_name, iterations=1, clusters=[args.clusters], first_feature="mfcc",
        first_frame_rate=LABEL_RATE, train_overrides=overrides, seed=args.seed, device=args.device,
        progress=not args.quiet,
    )
    checkpoint = last_checkpoint(cfg, 1)
    logger.info("MFCC (%g Hz) -> k-means k=%d -> labels -> %s/%s.yaml, %d updates (whole output: %s)",
                LABEL_RATE, args.clusters, args.config_dir, args.config_name, args.updates,
                os.path.join(cfg.work_dir, "iter1", "train.log"))
    start = time.time()
    run_iteration(cfg, 1)
    logger.info("checkpoint: %s (%.0f s)", checkpoint, time.time() - start)
    return checkpoint


def probe_command(args, checkpoint: str) -> list:
    command = [sys.executable, os.path.join(SCRIPTS, "probe.py"), "--tasks-dir", os.path.join(args.work_dir, "tasks"),
               "--seeds", str(args.seeds), "--layer", args.layer, "--max-epochs", str(args.max_epochs),
               "--device", args.device, "--out", os.path.join(args.work_dir, "probe")]
    if args.feature_sets == ["none"]:
        return command + ["--checkpoint", f"{args.name}={checkpoint}"]
    for choice in args.feature_sets:
        name = f"{args.name}_{choice}"
        command += ["--checkpoint", f"{name}={checkpoint}", "--features", f"{name}={choice}"]
    return command


def probe(args, checkpoint: str) -> str:
    out = os.path.join(args.work_dir, "probe")
    table = os.path.join(out, "probe.md")
    if stage(f"probe -> {out}", os.path.isfile(table)):
        os.makedirs(out, exist_ok=True)
        command = probe_command(args, checkpoint)
        log = os.path.join(out, "probe.log")
        logger.info("$ %s  (log: %s)", " ".join(command), log)
        start = time.time()
        env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        with open(log, "a") as f:
            # everything to the log; the terminal gets the probe's steps and results
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for line in proc.stdout:
                f.write(line)
                if not args.quiet and ("embedding with" in line or "test accuracy" in line):
                    print(line.rstrip(), flush=True)
            if proc.wait() != 0:
                sys.exit(f"error: probe failed (exit {proc.returncode}), see {log}")
        logger.info("probe done (%.0f s)", time.time() - start)
    with open(table) as f:
        return f.read()


def main(argv=None) -> int:
    args = parse_args(argv)
    # force: importing fairseq gives the root logger a DEBUG handler (basicConfig in one of its
    # model files), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("numba").setLevel(logging.WARNING)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    record_settings(args)
    manifest = build_data(args)
    if args.until == "data":
        return 0
    checkpoint = train(args, manifest)
    if args.until == "train":
        return 0
    table = probe(args, checkpoint)
    print(table)
    logger.info("table: %s", os.path.join(args.work_dir, "probe", "probe.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
