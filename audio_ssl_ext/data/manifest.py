"""fairseq wav manifests: a root line, then ``relative/path<TAB>num_samples`` per file.

The format is documented in manifests/README.md.
"""

import os
from dataclasses import dataclass, field
from typing import List

from audio_ssl_ext.durable import atomic_write_text


class ManifestError(ValueError):
    """A manifest that cannot be used as it is."""


@dataclass
class Manifest:
    path: str  # the .tsv itself, for error messages
    root: str
    files: List[str] = field(default_factory=list)  # relative to root
    sizes: List[int] = field(default_factory=list)  # samples per file
    line_numbers: List[int] = field(default_factory=list)  # 1-based, for error messages

    def __len__(self) -> int:
        return len(self.files)

    def audio_path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])


def read_manifest(path: str) -> Manifest:
    """Refuses a manifest without its root line (fairseq would take the first entry for the
    root), a root that is not a folder, malformed and duplicate entries, each with its line."""
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}, line 1: expected the audio root directory")
    root = lines[0].strip()
    if "\t" in root:
        raise ManifestError(
            f"{path}, line 1: {root!r} is an entry, not the audio root directory the entries are relative to: "
            f"put the root folder on the first line (scripts/make_manifest.py writes it)"
        )
    if not os.path.isdir(root):
        problem = "is not a folder" if os.path.exists(root) else "does not exist"
        raise ManifestError(f"{path}, line 1: the audio root {root!r} {problem}")
    manifest = Manifest(path=path, root=root)
    seen = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ManifestError(
                f"{path}, line {number}: expected 'relative/path<TAB>num_samples', got {line!r}"
            )
        key = os.path.normpath(parts[0])
        if key in seen:
            raise ManifestError(
                f"{path}, line {number}: {parts[0]!r} is listed again (first on line {seen[key]}); "
                f"a file listed twice is trained on twice as often: remove one line"
            )
        seen[key] = number
        manifest.files.append(parts[0])
        manifest.sizes.append(int(parts[1]))
        manifest.line_numbers.append(number)
    return manifest


def write_manifest(path: str, root: str, files: List[str], sizes: List[int]) -> None:
    """Write a manifest that ``read_manifest`` (and fairseq's FileAudioDataset) reads back.

    Published atomically and durably (``durable.atomic_write_text``): an interrupted run or a
    crash never leaves a half-written manifest behind.
    """
    if len(files) != len(sizes):
        raise ManifestError(f"{path}: {len(files)} files but {len(sizes)} sizes")
    for name, size in zip(files, sizes):
        # A tab or newline in a name would shift every later line; fairseq cannot read it back.
        if "\t" in name or "\n" in name or "\r" in name:
            raise ManifestError(f"{path}: file name {name!r} contains a tab or a line break")
        if int(size) < 0:
            raise ManifestError(f"{path}: negative size {size} for {name!r}")
    lines = [f"{root}\n"] + [f"{name}\t{int(size)}\n" for name, size in zip(files, sizes)]
    atomic_write_text(path, "".join(lines))
