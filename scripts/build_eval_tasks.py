#!/usr/bin/env python
"""Build the evaluation tasks (instrument family, pitch, spoken digits) in HEAR's format.

    python scripts/build_eval_tasks.py OUT_DIR [--small] [--seed 0]

Needs the Debian packages that `make setup-eval` installs (fluidsynth, fluid-soundfont-gm,
timgm6mb-soundfont, flite). See audio_ssl_ext/tools/eval_tasks.py for what each task holds
and how it is split.
"""

import argparse
import logging
import time

from audio_ssl_ext.tools.eval_tasks import build_eval_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder that receives one sub-folder per task")
    parser.add_argument("--small", action="store_true", help="the test suite's subset (seconds to build)")
    parser.add_argument("--seed", type=int, default=0, help="draws note velocities and word orders")
    args = parser.parse_args()
    # force: importing fairseq already gave the root logger a DEBUG handler (fairseq/models/wav2vec/
    # wav2vec2_classification.py calls basicConfig), which would make this call a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    start = time.time()
    tasks = build_eval_tasks(args.out_dir, small=args.small, seed=args.seed)
    for task in tasks:
        logging.info("wrote %s", task)
    logging.info("built %d tasks in %.0f s", len(tasks), time.time() - start)


if __name__ == "__main__":
    main()
