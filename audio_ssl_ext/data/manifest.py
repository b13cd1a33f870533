"""fairseq wav manifests: a root line, then ``relative/path<TAB>num_samples`` per file.

The format is documented in manifests/README.md.
"""

import os
from dataclasses import dataclass, field
from typing import List


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
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: manifest not found")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}, line 1: expected the audio root directory")
    manifest = Manifest(path=path, root=lines[0].strip())
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip().isdigit():
            raise ManifestError(
                f"{path}, line {number}: expected 'relative/path<TAB>num_samples', got {line!r}"
            )
        manifest.files.append(parts[0])
        manifest.sizes.append(int(parts[1]))
        manifest.line_numbers.append(number)
    return manifest


def write_manifest(path: str, root: str, files: List[str], sizes: List[int]) -> None:
    """Write a manifest that ``read_manifest`` (and fairseq's FileAudioDataset) reads back.

    The file is written next to ``path`` first and then renamed, so an interrupted run never
    leaves a half-written manifest behind.
    """
    if len(files) != len(sizes):
        raise ManifestError(f"{path}: {len(files)} files but {len(sizes)} sizes")
    for name, size in zip(files, sizes):
        # A tab or newline in a name would shift every later line; fairseq cannot read it back.
        if "\t" in name or "\n" in name or "\r" in name:
            raise ManifestError(f"{path}: file name {name!r} contains a tab or a line break")
        if int(size) < 0:
            raise ManifestError(f"{path}: negative size {size} for {name!r}")
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(f"{root}\n")
        for name, size in zip(files, sizes):
            f.write(f"{name}\t{int(size)}\n")
    os.replace(partial, path)
