"""Durable file publishing and output-folder locks, for every writer of the package.

A published file is complete or absent, whoever else writes and whenever the machine stops:

- it is written under a temporary name unique to the writer (``.NAME.<pid>.<random>.tmp`` in the
  destination's folder: one file system, so the rename is atomic), flushed and fsynced, renamed
  onto its name with ``os.replace``, and the folder is fsynced so that the rename survives a
  crash (without the fsyncs a crash after the rename can leave an empty file under the name);
- a full disk (ENOSPC, also reported by fsync on network file systems) is one ``DiskFullError``
  naming the folder, and the temporary file is removed;
- ``OutputLock`` holds ``fcntl.flock`` on a lock file in the output folder, holding the owner's
  pid, host, command and start time, so a second run into the same output is refused with an
  error that names the first. The kernel drops the lock when its process dies, so a lock file
  left by a killed run does not block anything.
"""

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from typing import Callable, Dict, Optional


class DurableError(RuntimeError):
    """An output that could not be written (the message names the folder or the file)."""


class DiskFullError(DurableError):
    pass


class OutputLockedError(DurableError):
    pass


def temp_path(path: str) -> str:
    """A temporary name next to ``path``, unique to this process and call."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open folders: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise disk_full(folder, err) from err
    finally:
        os.close(fd)


def disk_full(folder: str, err: OSError) -> DiskFullError:
    return DiskFullError(f"{folder}: no space left on device ({err.strerror}); free space there or write elsewhere")


def raise_if_disk_full(err: BaseException, path: str) -> None:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise disk_full(os.path.dirname(os.path.abspath(path)), err) from err


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, path: str) -> None:
    """fsync ``tmp`` (written and closed by the caller), rename it onto ``path``, fsync the folder."""
    try:
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:  # an interrupt too: no temporary is left behind
        remove_quietly(tmp)
        raise_if_disk_full(err, path)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write(path, write: Callable, mode: str = "wb", tmp: Optional[str] = None) -> None:
    """Call ``write(f)`` on a fresh temporary file next to ``path`` opened with ``mode``, then make
    it ``path`` atomically and durably. If anything raises, ``path`` is untouched and the
    temporary file removed."""
    path = os.path.abspath(os.fspath(path))
    tmp = tmp or temp_path(path)
    try:
        with open(tmp, mode) as f:
            write(f)
    except BaseException as err:
        remove_quietly(tmp)
        raise_if_disk_full(err, path)
        raise
    publish(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------

# Locks this process holds, by lock file: flock conflicts between two descriptors of one process
# too, and a stage may lock a folder its caller already holds.
_HELD: Dict[str, list] = {}


def describe_owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class OutputLock:
    """Exclusive lock on an output: ``folder/.{name}.lock`` (``name``: the output, e.g. a shard,
    when parallel jobs legitimately write other outputs of one folder; default: the folder)."""

    def __init__(self, folder: str, name: str = "folder"):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, f".{name}.lock")

    def __enter__(self):
        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{self.folder} is being written by another run ({_format_owner(owner)}; lock "
                f"{self.path}): wait for it to finish, or write to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(describe_owner()) + "\n").encode(), 0)
        _HELD[self.path] = [fd, 1]
        return self

    def __exit__(self, *exc):
        held = _HELD[self.path]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.path]
            # The file stays: removing it would let a third run lock a new file while the
            # second still waits on the old one.
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
        return False


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _format_owner(owner: dict) -> str:
    if not owner:
        return "owner not recorded"
    return (
        f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}, "
        f"command: {owner.get('command')}"
    )
