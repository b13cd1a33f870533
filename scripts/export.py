#!/usr/bin/env python
"""Export a checkpoint for use without fairseq: the same as `python -m audio_ssl_ext.export`.

    python scripts/export.py CKPT OUT_DIR [--features NAME] [--teacher] [--task KEY=VALUE]
"""

import sys

from audio_ssl_ext.export.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
