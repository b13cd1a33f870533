"""What an output was made from: content hashes of input files and the settings, compared on reuse.

Inputs are hashed whole (sha256). A size + mtime + partial hash would be cheaper, but a
checkpoint that fairseq rewrites in place, or a manifest rewritten in another order with the
same sizes, keeps its size and can keep its mtime (copies with ``cp -p``, rsync); a full hash
reads the file once per run, seconds for a 1 GB checkpoint against the hours of the stages it
guards.
"""

import hashlib
import json
import os
from typing import Iterable, List

_BLOCK = 1 << 22


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def digest(record) -> str:
    """A hash of a JSON-able record (keys sorted), to chain one stage's record into the next's."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _flatten(record, prefix: str = "") -> dict:
    if isinstance(record, dict):
        flat = {}
        for key, value in record.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: record}


def changes(old: dict, new: dict) -> List[str]:
    """``key: old -> new`` for every setting that differs (nested keys joined with dots)."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    missing = object()
    out = []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, missing), new_flat.get(key, missing)
        if before != after:
            out.append(f"{key}: {_show(before, missing)} -> {_show(after, missing)}")
    return out


def _show(value, missing) -> str:
    if value is missing:
        return "(not recorded)"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_changes(old: dict, new: dict, limit: int = 6) -> str:
    found = changes(old, new)
    shown = "; ".join(found[:limit])
    return shown + (f"; and {len(found) - limit} more" if len(found) > limit else "")


def existing(paths: Iterable[str]) -> List[str]:
    return [p for p in paths if os.path.lexists(p)]
