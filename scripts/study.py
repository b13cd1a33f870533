#!/usr/bin/env python
"""The small-scale study, one command (`make study`): corpora -> evaluation tasks -> a `small`
training run per learner and claim variant -> probe next to random-init twins and log-mel -> report.

    python scripts/study.py [STUDY_DIR] [--quick | --micro | --cpu | --gpu] [--only NAME ...] [--quiet]

STUDY_DIR (default study/) receives everything (audio_ssl_ext/tools/study.py lists the layout);
report.md / report.json / report.png hold the table with 95% intervals, the bar per learner and
the claims' verdicts. --quick: a first look (fewer clips, updates and seeds; under 30 minutes on
2 cores); --micro: a few clips and updates, one seed (the test's mode); --updates-scale X trains
every run X times longer. Without a mode flag the
study runs `full` (the CPU's small), or `gpu` (a larger small, twice the updates) when torch sees
a CUDA device; --cpu / --gpu choose one of them. --only picks
runs (musichubert = both iterations; jooci needs them). A run whose checkpoint and command are
already there is reused. The whole log goes to STUDY_DIR/study.log as well as the terminal.
"""

import argparse
import logging
import os
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", nargs="?", default="study")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a first look in under 30 minutes on 2 cores")
    group.add_argument("--micro", action="store_true", help="seconds per stage: the test's mode")
    group.add_argument("--cpu", action="store_true", help="the full mode at the CPU's small size, also on a GPU machine")
    group.add_argument("--gpu", action="store_true", help="the larger small on a CUDA GPU (default when there is one)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these runs only")
    parser.add_argument("--updates-scale", type=float, default=1.0, metavar="X",
                        help="X times the mode's updates for every run (e.g. 4 for a longer study)")
    parser.add_argument("--examples", default=os.path.join(REPO, "examples"), help="the recipes' config folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from audio_ssl_ext.tools.study import MODES, Study, StudyError, scaled

    os.makedirs(args.study_dir, exist_ok=True)
    log_path = os.path.join(args.study_dir, "study.log")
    # force: importing fairseq already gave the root logger a DEBUG handler (basicConfig in one of
    # its model files), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True,
                        handlers=[logging.StreamHandler(), logging.FileHandler(log_path)])
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.* is deprecated")
    if args.quick or args.micro or args.cpu or args.gpu:
        name = "quick" if args.quick else "micro" if args.micro else "gpu" if args.gpu else "full"
    else:
        import torch

        name = "gpu" if torch.cuda.is_available() else "full"
    start = time.time()
    try:
        mode = scaled(MODES[name], args.updates_scale)
        study = Study(args.study_dir, mode, args.examples, only=args.only, progress=not args.quiet)
        paths = study.run()
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(open(paths["md"]).read())
    logging.info("study (%s) done in %.0f s: %s; log %s", mode.name, time.time() - start,
                 ", ".join(paths.values()), log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
