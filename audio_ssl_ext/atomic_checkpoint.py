"""Atomic checkpoint writes for fairseq's trainer, applied when the package is imported.

fairseq saves a checkpoint once (``checkpoint_N_M.pt``, or ``checkpointN.pt``) and then copies that
file onto ``checkpoint_last.pt`` and ``checkpoint_best.pt`` with a plain ``shutil.copyfile``: a
process killed during the copy (preemption, OOM killer, Ctrl-C twice) leaves a truncated
``checkpoint_last.pt``, and the restart, which loads that file, fails. Its first write renames
``NAME.tmp`` onto the name, but without fsync, so after a crash of the machine the renamed file can
be empty.

Here every local checkpoint write goes through ``audio_ssl_ext.durable.atomic_write``: a unique
temporary file in the destination's folder, flushed and fsynced, replaces the final name with
``os.replace`` (atomic on POSIX within one file system), and the folder is fsynced so the rename
itself survives a crash. A kill at any
moment leaves the final name holding either the previous complete file or the new complete one;
what it loses is the updates since the last completed checkpoint (fairseq redoes them on resume).
A killed write can leave a ``.NAME.*.tmp`` file behind; the next run's first checkpoint write
into that folder removes every such file (an interval checkpoint's name is never written twice).

Paths that need iopath's PathManager (``manifold://``, ...) and fairseq's asynchronous write mode
keep fairseq's own code. fairseq's installed files are not changed: two functions are replaced by
attribute, once, and ``patched()`` tells whether that happened.
"""

import glob
import logging
import os
import shutil
import time

from audio_ssl_ext import durable

logger = logging.getLogger(__name__)

_ORIGINALS = {}
_ATTEMPTS = 3  # fairseq retries torch.save 3 times (checkpoint_utils.py:599), for flaky file systems


def _is_local(path) -> bool:
    from fairseq.file_io import PathManager

    return isinstance(path, (str, os.PathLike)) and not PathManager.path_requires_pathmanager(str(path))


_CLEANED_FOLDERS = set()


def _remove_stale_temporaries(path: str) -> None:
    """Temporaries of NAME, and on this process's first write into the folder those of every
    ``*.pt`` (left by a run that was killed while writing)."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = f".{glob.escape(name)}.*.tmp"
    if folder not in _CLEANED_FOLDERS:
        pattern = ".*.pt.*.tmp"
        _CLEANED_FOLDERS.add(folder)
    for stale in glob.glob(os.path.join(glob.escape(folder), pattern)):
        try:
            os.remove(stale)
        except OSError:
            pass


def atomic_write(path, write) -> None:
    """``durable.atomic_write`` (unique temporary file, fsync, os.replace, fsync of the folder)
    after removing what killed writes left behind."""
    _remove_stale_temporaries(os.fspath(path))
    durable.atomic_write(path, write)


def torch_persistent_save(obj, filename, async_write: bool = False):
    """fairseq's ``checkpoint_utils.torch_persistent_save`` with an atomic, durable local write."""
    import torch

    if async_write or not _is_local(filename):
        return _ORIGINALS["torch_persistent_save"](obj, filename, async_write=async_write)
    for attempt in range(_ATTEMPTS):
        try:  # each attempt writes a fresh temporary file (fairseq's retry rewrites a half-written handle)
            return atomic_write(filename, lambda f: torch.save(obj, f))
        except Exception:
            if attempt == _ATTEMPTS - 1:
                raise
            logger.warning("saving %s failed, retrying", filename, exc_info=True)
            time.sleep(2.5)


def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """fairseq's ``PathManager.copy`` for local files as an atomic, durable replacement of ``dst_path``."""
    if not (_is_local(src_path) and _is_local(dst_path)) or (not overwrite and os.path.exists(dst_path)):
        return _ORIGINALS["copy"](src_path, dst_path, overwrite=overwrite)

    def write(f):
        with open(src_path, "rb") as src:
            shutil.copyfileobj(src, f, 16 * 1024 * 1024)

    atomic_write(dst_path, write)
    return True


def patch() -> None:
    """Replace fairseq's two checkpoint write paths by the atomic ones (idempotent)."""
    if _ORIGINALS:
        return
    import fairseq
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if not fairseq.__version__.startswith("0.12."):
        logger.warning("atomic checkpoint writes follow fairseq 0.12.x's code; fairseq %s: not applied", fairseq.__version__)
        return

    _ORIGINALS["torch_persistent_save"] = checkpoint_utils.torch_persistent_save
    _ORIGINALS["copy"] = PathManager.copy
    # fairseq/checkpoint_utils.py:578 torch_persistent_save, called by fairseq/trainer.py:456
    # (Trainer.save_checkpoint) for the first file of each save and by checkpoint_utils.py:890
    # (save_ema_as_checkpoint): it renames NAME.tmp onto NAME (lines 585-587) without fsync.
    checkpoint_utils.torch_persistent_save = torch_persistent_save
    # fairseq/file_io.py:71 PathManager.copy (shutil.copyfile at line 76 without iopath), which
    # fairseq/checkpoint_utils.py:139 (save_checkpoint) uses to write checkpoint_last.pt,
    # checkpoint_best.pt and the other names of the same save by copying the first file in place.
    PathManager.copy = staticmethod(copy)


def patched() -> bool:
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    return checkpoint_utils.torch_persistent_save is torch_persistent_save and PathManager.copy is copy


patch()
