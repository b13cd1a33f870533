"""The one fairseq dataset of the package: checked waveforms, seeded crops, optional frame labels.

Batches carry the keys of fairseq's HubertDataset (``net_input.source``, ``net_input.padding_mask``,
``target_list``), so fairseq's HuBERT pieces take them unchanged. Two fairseq traps are avoided:
crops are drawn from a generator seeded by (seed, epoch, sample index) instead of numpy's
process-global state, so a resumed run sees the same crops; and a bad file stops the run with
its manifest line instead of being skipped or replaced.

Only the crop is read: ``__getitem__`` checks the file's header (rate, length) and the collater,
which knows the batch length and hence each crop, decodes just those samples (soundfile seeks),
so a one-hour file costs a crop per item, not 230 MB.
"""

import logging
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import FairseqDataset, data_utils

from audio_ssl_ext.data.audio import AudioInputError, read_audio
from audio_ssl_ext.data.labels import LabelSet
from audio_ssl_ext.data.manifest import Manifest

logger = logging.getLogger(__name__)


class WaveformDataset(FairseqDataset):
    """Waveforms from a manifest, cropped per batch.

    Batch length: ``fixed_length`` samples when given (every item cropped or zero-padded to it,
    for the spectrogram learners); otherwise the shortest item in the batch (HuBERT's default) or,
    with ``pad_audio``, the longest, capped by ``max_sample_size``. Crops start at a random offset
    when ``random_crop`` (training) and at the centre otherwise (validation). ``normalize``: zero
    mean, unit variance over each crop's real samples (what the model sees; fairseq normalises
    the whole file before cropping, the same for files no longer than the crop).

    Empty files are refused; files shorter than ``min_sample_size`` are left out (logged);
    ``require_min_samples`` refuses files too short for the model (its task calls it).
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int,
        max_sample_size: Optional[int] = None,
        min_sample_size: int = 0,
        fixed_length: Optional[int] = None,
        pad_audio: bool = False,
        normalize: bool = False,
        random_crop: bool = True,
        shuffle: bool = True,
        seed: int = 1,
        label_sets: Optional[List[LabelSet]] = None,
    ):
        super().__init__()
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.max_sample_size = fixed_length or max_sample_size or np.iinfo(np.int64).max
        self.fixed_length = fixed_length
        self.pad_audio = pad_audio
        self.normalize = normalize
        self.random_crop = random_crop
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        self.label_sets = label_sets or []
        self._refuse_empty()
        self.indices = self._keep_long_enough(min_sample_size)
        self.sizes = np.minimum(np.array(manifest.sizes)[self.indices], self.max_sample_size)

    def _describe(self, entry: int) -> str:
        return f"{self.manifest.path}, line {self.manifest.line_numbers[entry]}: {self.manifest.audio_path(entry)}"

    def _refuse_empty(self) -> None:
        if len(self.manifest) == 0:
            raise AudioInputError(f"{self.manifest.path}: the manifest lists no audio file")
        for entry, size in enumerate(self.manifest.sizes):
            if size == 0:  # it would be an example of padding only
                raise AudioInputError(f"{self._describe(entry)}: the file is empty (0 samples): remove its line")

    def require_min_samples(self, min_samples: int, why: str) -> None:
        """Refuse (naming the first, and how many) the files kept that are shorter than
        ``min_samples``: ``why`` says what needs that many."""
        sizes = np.array(self.manifest.sizes, dtype=np.int64)[self.indices]
        short = np.flatnonzero(sizes < min_samples)
        if len(short):
            entry = int(self.indices[short[0]])
            raise AudioInputError(
                f"{self._describe(entry)}: {self.manifest.sizes[entry]} samples, fewer than the {min_samples} {why} "
                f"({len(short)} file(s) of the manifest are that short): remove them, or set task.min_sample_size "
                f"to leave shorter files out"
            )

    def _keep_long_enough(self, min_sample_size: int) -> np.ndarray:
        sizes = np.array(self.manifest.sizes, dtype=np.int64)
        keep = np.flatnonzero(sizes >= min_sample_size)
        if len(keep) < len(sizes):
            logger.info(
                f"{self.manifest.path}: left out {len(sizes) - len(keep)} of {len(sizes)} files "
                f"shorter than min_sample_size={min_sample_size}"
            )
        if len(keep) == 0:
            raise ValueError(f"{self.manifest.path}: no file has at least {min_sample_size} samples")
        return keep

    def set_epoch(self, epoch):
        self.epoch = epoch

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return False  # crops depend on the epoch

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        """The item's samples are read (and its file checked) by the collater, which knows the crop."""
        entry = int(self.indices[index])
        item = {"id": index, "entry": entry, "length": self.manifest.sizes[entry]}
        if self.label_sets:
            item["label_list"] = [torch.from_numpy(ls.labels[entry]) for ls in self.label_sets]
        return item

    def size(self, index):
        return int(self.sizes[index])

    def num_tokens(self, index):
        return self.size(index)

    def ordered_indices(self):
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="stable")[::-1]]

    def crop_start(self, sample_id: int, length: int, target: int) -> int:
        excess = length - target
        if excess <= 0:
            return 0
        if not self.random_crop:
            return excess // 2
        rng = np.random.default_rng([self.seed, self.epoch, sample_id])
        return int(rng.integers(0, excess + 1))

    def batch_length(self, lengths: List[int]) -> int:
        if self.fixed_length:
            return self.fixed_length
        return min(max(lengths) if self.pad_audio else min(lengths), self.max_sample_size)

    def read_crop(self, entry: int, start: int, frames: int) -> torch.Tensor:
        path = self.manifest.audio_path(entry)
        wav = read_audio(
            path,
            self.sample_rate,
            self.manifest.path,
            self.manifest.line_numbers[entry],
            start=start,
            frames=frames,
            expected_length=self.manifest.sizes[entry],
        )
        piece = torch.from_numpy(wav)
        return F.layer_norm(piece, piece.shape) if self.normalize else piece

    def collater(self, samples):
        if not samples:
            return {}
        length = self.batch_length([s["length"] for s in samples])
        audio = torch.zeros(len(samples), length)
        padding_mask = torch.zeros(len(samples), length, dtype=torch.bool)
        starts = []
        for i, sample in enumerate(samples):
            start = self.crop_start(sample["id"], sample["length"], length)
            piece = self.read_crop(sample["entry"], start, min(length, sample["length"] - start))
            audio[i, : len(piece)] = piece
            padding_mask[i, len(piece) :] = True
            starts.append(start)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {"source": audio, "padding_mask": padding_mask},
        }
        if self.label_sets:
            self._collate_labels(batch, samples, length, starts)
        return batch

    def _collate_labels(self, batch, samples, audio_length, audio_starts):
        """Cut each label sequence to the frames of its audio crop (as fairseq's HubertDataset)."""
        targets, lengths, ntokens = [], [], []
        for k, label_set in enumerate(self.label_sets):
            per_frame = label_set.label_rate / self.sample_rate
            frame_starts = [int(round(s * per_frame)) for s in audio_starts]
            frames = int(round(audio_length * per_frame))
            sequences = [s["label_list"][k] for s in samples]
            if not self.pad_audio and not self.fixed_length:
                frames = min([frames] + [len(t) - s for t, s in zip(sequences, frame_starts)])
            cut = [t[s : s + frames] for t, s in zip(sequences, frame_starts)]
            pad = label_set.dictionary.pad()
            targets.append(data_utils.collate_tokens(cut, pad_idx=pad, left_pad=False))
            lengths.append(torch.LongTensor([len(t) for t in cut]))
            ntokens.append(int(lengths[-1].sum()))
        batch["target_list"] = targets
        batch["target_lengths_list"] = lengths
        batch["ntokens_list"] = ntokens
