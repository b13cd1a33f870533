"""``python -m audio_ssl_ext --user-dir``: the path fairseq's ``common.user_dir`` needs.

Lets a config run from any directory against the installed package:
    fairseq-hydra-train --config-dir REPO/examples/music2vec --config-name tiny \
        common.user_dir=$(python -m audio_ssl_ext --user-dir) task.data=...
"""

import argparse
import os


def main():
    parser = argparse.ArgumentParser(prog="python -m audio_ssl_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-dir", action="store_true", help="print the package folder")
    args = parser.parse_args()
    if args.user_dir:
        # Only the path goes to stdout: this runs inside $(...).
        print(os.path.dirname(os.path.abspath(__file__)))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
