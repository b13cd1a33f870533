"""Frame features of a manifest split, written as fairseq feature shards.

Two kinds of source, one interface (``sample_rate``, ``frame_rate``, ``dim``, ``num_frames(n)``,
``features(wav) -> (frames, dim)``, ``describe()``):

- ``FrontendFeatures``: a spectral frontend of ``audio_ssl_ext.features`` (mfcc, logmel, chroma,
  cqt). Long files are computed in chunks that carry enough context on both sides (2 s by
  default, more than the CQT's longest kernel and the MFCC deltas need), so the frames are exactly
  those of one pass over the whole file, with memory bounded by the chunk.
- ``CheckpointFeatures``: one layer of a trained model (ours or fairseq's HuBERT), loaded with
  ``audio_ssl_ext.downstream.load.load_model``, which also chunks long inputs (conv frames exact,
  attention context bounded by the chunk).

Next to each shard a ``{split}_{rank}_{nshard}.json`` records the source (for a checkpoint: its
path, sha256 and layer), the sample and frame rates, the manifest's path and sha256 and the lines
it covers. Every reader checks it (``check_shards``): shards of one split from different
manifests or sources do not mix, shards dumped from a manifest with other content (another
order) are refused, and ``apply_kmeans`` reads the frame rate from it to check the labels against
the training config's ``label_rate``.
"""

import json
import logging
import math
import os
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from audio_ssl_ext.clustering.provenance import describe_changes, sha256_file
from audio_ssl_ext.clustering.shards import ShardError, ShardWriter, shard_paths, shard_range
from audio_ssl_ext.data.audio import AudioInputError, read_audio
from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.durable import atomic_write_json, remove_quietly

logger = logging.getLogger(__name__)


# Label frame j should describe the audio around the model's frame j. MFCC and log-mel keep
# Kaldi's "snip edges" framing (HuBERT's recipe: a 25 ms frame at 100 Hz is centred where the
# conv frames are); chroma's 128 ms window with snip edges would sit 64 ms late and leave out
# 0.12 s at the end, more than the 0.1 s label-length tolerance of the task, so it is centred
# (as the CQT always is).
FRAMING = {"chroma": {"center": True}}


class FrontendFeatures:
    """A spectral frontend by name, computed in chunks with context (exactly one pass's frames)."""

    def __init__(
        self,
        name: str,
        sample_rate: int = 16000,
        frame_rate: float = 100.0,
        chunk_seconds: float = 30.0,
        context_seconds: float = 2.0,
        device: str = "cpu",
    ):
        from audio_ssl_ext.features import build_frontend

        self.name = name
        self.frontend = build_frontend(name, sample_rate, frame_rate, **FRAMING.get(name, {})).to(device).eval()
        self.sample_rate = int(sample_rate)
        self.frame_rate = float(self.frontend.frame_rate)
        self.dim = int(self.frontend.dim)
        self.hop = int(self.frontend.hop_length)
        self.chunk_frames = max(1, int(round(chunk_seconds * self.frame_rate)))
        self.context_frames = int(math.ceil(context_seconds * self.frame_rate))
        self.device = device

    def num_frames(self, num_samples: int) -> int:
        return self.frontend.num_frames(num_samples)

    def describe(self) -> dict:
        return {"kind": "frontend", "name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate}

    @torch.no_grad()
    def _run(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(self.device)
        return self.frontend(x)[0].cpu().numpy()

    def features(self, wav: np.ndarray) -> np.ndarray:
        total = self.num_frames(len(wav))
        if total <= self.chunk_frames:
            return self._run(wav)
        pieces = []
        for first in range(0, total, self.chunk_frames):
            last = min(total, first + self.chunk_frames)
            context_first = max(0, first - self.context_frames)
            start = context_first * self.hop
            end = min(len(wav), (last + self.context_frames) * self.hop)
            chunk = self._run(wav[start:end])
            piece = chunk[first - context_first : last - context_first]
            if len(piece) != last - first:  # the context is too short for this frontend's window
                raise RuntimeError(
                    f"{self.name}: chunk [{start}, {end}) gave {len(chunk)} frames, cannot cut frames "
                    f"[{first}, {last}); raise context_seconds"
                )
            pieces.append(piece)
        return np.concatenate(pieces, axis=0)


class CheckpointFeatures:
    """Layer ``layer`` of a trained model: 0 is the transformer's input, L the output of layer L
    (1-based, as fairseq's ``output_layer`` and HuBERT's "layer 6 of the first iteration")."""

    def __init__(
        self,
        checkpoint: str,
        layer: int,
        device: str = "cpu",
        chunk_seconds: Optional[float] = None,
        task_overrides: Optional[dict] = None,
        trust_checkpoint: bool = False,
    ):
        from audio_ssl_ext.downstream.load import load_model

        self.checkpoint = checkpoint
        self.checkpoint_sha256 = sha256_file(checkpoint)  # the path alone does not say which training made it
        self.model = load_model(
            checkpoint, device=device, chunk_seconds=chunk_seconds, task_overrides=task_overrides,
            trust_checkpoint=trust_checkpoint,
        )
        if not 0 <= layer < self.model.num_layers:
            raise ValueError(
                f"{checkpoint}: --layer {layer} is out of range; the model has layers 1..{self.model.num_layers - 1} "
                f"(0 = the transformer's input)"
            )
        self.layer = layer
        self.sample_rate = int(self.model.sample_rate)
        self.frame_rate = float(self.model.frame_rate)
        self.dim = int(self.model.hidden_dim)

    def num_frames(self, num_samples: int) -> int:
        return self.model.num_frames(num_samples)

    def describe(self) -> dict:
        return {
            "kind": "checkpoint",
            "checkpoint": os.path.abspath(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "model": self.model.name,
            "layer": self.layer,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
        }

    @torch.no_grad()
    def features(self, wav: np.ndarray) -> np.ndarray:
        out = self.model.extract_features([torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))])
        frames = int(out.lengths[0])
        return out.hidden_states[self.layer][0, :frames].cpu().numpy()


def shard_info_path(feat_dir: str, split: str, rank: int, nshard: int) -> str:
    return os.path.join(feat_dir, f"{split}_{rank}_{nshard}.json")


def read_shard_info(feat_dir: str, split: str, rank: int, nshard: int) -> Optional[dict]:
    """The JSON written next to a shard by ``dump_features`` (None for shards made elsewhere)."""
    path = shard_info_path(feat_dir, split, rank, nshard)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            info = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: not readable JSON ({err}); redump the features of {split}") from err
    if not isinstance(info, dict) or not IDENTITY_KEYS <= set(info):
        missing = sorted(IDENTITY_KEYS - set(info)) if isinstance(info, dict) else sorted(IDENTITY_KEYS)
        raise ShardError(
            f"{path}: records no {', '.join(missing)} (written by an older version?), so the shard's "
            f"manifest and source cannot be checked; redump the features of {split}"
        )
    return info


# What a shard's identity is: which manifest (its content) and which feature source.
IDENTITY_KEYS = {"source", "manifest_sha256", "sample_rate", "frame_rate"}


def check_shards(
    feat_dir: str,
    split: str,
    nshard: int,
    manifest_path: Optional[str] = None,
    source: Optional[dict] = None,
    purpose: str = "",
) -> Optional[dict]:
    """Check the shards' records against each other, and against ``manifest_path`` (its content
    hash) and ``source`` (what the caller means to use, e.g. the k-means' source) when given.
    Returns rank 0's record; None (with a warning) for shards made elsewhere, which record nothing."""
    infos = [read_shard_info(feat_dir, split, rank, nshard) for rank in range(nshard)]
    if all(info is None for info in infos):
        logger.warning(
            f"{feat_dir}: the shards of {split} have no .json (not dumped by dump_features.py): "
            f"their manifest and feature source cannot be checked"
        )
        return None
    first = infos[0]
    for rank, info in enumerate(infos):
        where = shard_info_path(feat_dir, split, rank, nshard)
        if info is None:
            raise ShardError(f"{where}: missing while other shards of {split} have theirs; redump shard {rank}")
        for key, name in (("manifest_sha256", "manifest"), ("source", "feature source")):
            if info[key] != first[key]:
                raise ShardError(
                    f"{where}: shard {rank} of {split} was dumped from another {name} than shard 0 "
                    f"({describe_changes({key: first[key]}, {key: info[key]})}); shards of different "
                    f"runs do not mix: redump them all"
                )
    if source is not None and source != first["source"]:
        raise ShardError(
            f"{feat_dir}: the features of {split} come from another source than {purpose or 'expected'} "
            f"({describe_changes(source, first['source'])}); use features of the same source"
        )
    if manifest_path is not None:
        now = sha256_file(manifest_path)
        if now != first["manifest_sha256"]:
            raise ShardError(
                f"{feat_dir}: the features of {split} were dumped from {first.get('manifest')} with other "
                f"content (sha256 {first['manifest_sha256'][:12]}) than {manifest_path} now "
                f"(sha256 {now[:12]}): another order or other files? Redump the features from this manifest"
            )
    return first


def write_shard_info(path: str, info: dict) -> None:
    atomic_write_json(path, info)


def dump_features(
    manifest_path: str,
    split: str,
    source,
    feat_dir: str,
    rank: int = 0,
    nshard: int = 1,
    progress: bool = True,
) -> str:
    """Write shard ``rank`` of ``nshard`` of the manifest's features; returns the .npy path.

    Every file must be at ``source.sample_rate`` (no resampling here, as in training) and hold the
    samples the manifest says; features must be finite. Each failure names the manifest line.
    """
    manifest = read_manifest(manifest_path)
    if len(manifest) == 0:
        raise ShardError(f"{manifest_path}: the manifest lists no audio file (only its root line): nothing to dump")
    manifest_sha256 = sha256_file(manifest_path)
    start, end = shard_range(len(manifest), rank, nshard)
    npy_path, len_path = shard_paths(feat_dir, split, rank, nshard)
    frames_total = 0
    with ShardWriter(feat_dir, split, rank, nshard) as writer:
        # The new info is published before the new shard: a re-dump cut short between the two must
        # not leave the old shard under it (shard_exists then says redo it).
        for old in (npy_path, len_path):
            remove_quietly(old)
        lines = range(start, end)
        for i in tqdm(lines, desc=f"features {split} {rank}/{nshard}", unit="file", disable=not progress):
            path, line = manifest.audio_path(i), manifest.line_numbers[i]
            where = f"{manifest.path}, line {line}: {path}"
            wav = read_audio(path, source.sample_rate, manifest.path, line)
            if len(wav) != manifest.sizes[i]:
                raise AudioInputError(
                    f"{where} has {len(wav)} samples, the manifest says {manifest.sizes[i]} (rebuild the manifest)"
                )
            try:
                expected = source.num_frames(len(wav))
            except ValueError as err:
                raise AudioInputError(f"{where}: too short for one feature frame ({err})") from err
            features = source.features(wav)
            if features.shape != (expected, source.dim):
                raise ShardError(f"{where}: features of shape {features.shape}, expected ({expected}, {source.dim})")
            writer.append(features, where)
            frames_total += len(features)
        # Before the shard is published: a shard that exists always has its info next to it.
        write_shard_info(
            shard_info_path(feat_dir, split, rank, nshard),
            {
                "source": source.describe(),
                "dim": source.dim,
                "sample_rate": source.sample_rate,
                "frame_rate": source.frame_rate,
                "manifest": os.path.abspath(manifest.path),
                "manifest_sha256": manifest_sha256,
                "manifest_entries": [start, end],
                "frames": frames_total,
            },
        )
    logger.info(f"wrote {npy_path} ({frames_total} frames x {source.dim} dims, {end - start} files) and {len_path}")
    return npy_path
