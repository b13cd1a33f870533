#!/usr/bin/env python3
"""Run a fairseq training command with its whole output in a log file and a progress bar on the terminal.

    scripts/run_logged.py LOG [--desc NAME] -- fairseq-hydra-train --config-dir ... --config-name ...

Everything the command prints (fairseq's config dump, hydra's warnings, every logged update) is
appended to LOG; the terminal shows one bar over the updates with the last train and valid loss.
On failure the end of LOG is printed. Exits with the command's status. `make demo` runs each
learner's training through it.
"""

import argparse
import sys

from audio_ssl_ext.logged_run import log_tail, run_logged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="file that receives the whole output (appended)")
    parser.add_argument("--desc", default="training", help="label of the progress bar")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if not command:
        parser.error("no command given (put it after --)")
    returncode = run_logged(command, args.log, progress=not args.quiet, desc=args.desc)
    if returncode != 0:
        print(f"{log_tail(args.log)}\nerror: {command[0]} failed (exit {returncode}), whole output in {args.log}", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
