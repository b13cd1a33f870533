"""Run a fairseq training command with its whole output in a log file and one progress bar on the
terminal (the HuBERT iterations, ``scripts/run_logged.py`` for ``make demo``)."""

import os
import re
import shlex
import subprocess
from typing import Sequence

from tqdm import tqdm

_MAX_UPDATE = re.compile(r"'max_update': (\d+)")
_TRAIN_INNER = re.compile(r"\btrain_inner\b.*?\bloss=([0-9.eE+-]+).*?\bnum_updates=(\d+)")
_VALID = re.compile(r"valid on '[^']*' subset \| loss ([0-9.eE+-]+)")
_RESUMED = re.compile(r"Loaded checkpoint .*@ (\d+) updates")


def run_logged(command: Sequence[str], log_path: str, progress: bool = True, desc: str = "training") -> int:
    """Run ``command`` with its whole output (stdout and stderr) appended to ``log_path``; the
    terminal gets one progress bar over the updates (the total read from the config fairseq logs
    first) with the last train and valid loss, when ``progress``. Returns the exit status."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    bar, total, postfix = None, None, {}
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # errors="replace": one undecodable byte of the child's output must not end the run
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
        try:
            for line in process.stdout:
                log.write(line)
                if total is None and (m := _MAX_UPDATE.search(line)):
                    total = int(m.group(1)) or None
                updates, valid = None, None
                if m := _RESUMED.search(line):
                    updates = int(m.group(1))
                elif m := _TRAIN_INNER.search(line):
                    postfix["loss"], updates = m.group(1), int(m.group(2))
                elif m := _VALID.search(line):
                    postfix["valid_loss"] = valid = m.group(1)
                if not progress or (updates is None and valid is None):
                    continue
                if bar is None:
                    bar = tqdm(total=total, desc=desc, unit="update", dynamic_ncols=True)
                bar.set_postfix(postfix, refresh=updates is None)
                if updates is not None:
                    bar.update(updates - bar.n)
        except BaseException:  # Ctrl-C, a full disk: the child does not outlive us
            process.kill()
            raise
        finally:
            process.wait()
            if bar is not None:
                bar.close()
    return process.returncode


def log_tail(log_path: str, size: int = 4000) -> str:
    """The last ``size`` bytes of a log (which resumed runs keep appending to)."""
    with open(log_path, "rb") as f:
        f.seek(max(0, os.path.getsize(log_path) - size))
        return f.read().decode("utf-8", errors="replace")
