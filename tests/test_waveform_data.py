"""The waveform dataset, label files and the waveform_pretraining task: checks and crops."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl_ext.data.audio import AudioInputError
from audio_ssl_ext.data.labels import LabelError, load_label_set
from audio_ssl_ext.data.manifest import ManifestError, read_manifest
from audio_ssl_ext.data.waveform_dataset import WaveformDataset

SR = 16000


def write_corpus(root, lengths, sample_rate=SR):
    """Ramps (sample i has value i / 1e5) so a crop's offset can be read off its first value."""
    os.makedirs(root / "audio", exist_ok=True)
    lines = [str(root / "audio")]
    for i, n in enumerate(lengths):
        sf.write(root / "audio" / f"{i}.wav", (np.arange(n) / 1e5).astype(np.float32), sample_rate, subtype="FLOAT")
        lines.append(f"{i}.wav\t{n}")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return read_manifest(str(root / "train.tsv"))


def write_labels(root, name, sequences, symbols=range(4)):
    (root / f"dict.{name}.txt").write_text("".join(f"{s} 1\n" for s in symbols))
    (root / f"train.{name}").write_text("".join(" ".join(map(str, seq)) + "\n" for seq in sequences))


def test_missing_file_names_manifest_line_and_file(tmp_path):
    manifest = write_corpus(tmp_path, [16000, 16000])
    os.remove(tmp_path / "audio" / "1.wav")
    dataset = WaveformDataset(manifest, SR, shuffle=False)
    with pytest.raises(AudioInputError, match=r"train\.tsv, line 3: .*1\.wav: audio file not found"):
        dataset.collater([dataset[1]])


def first_batch(dataset):
    return dataset.collater([dataset[0]])


def test_unreadable_file_names_manifest_line_and_file(tmp_path):
    manifest = write_corpus(tmp_path, [16000])
    (tmp_path / "audio" / "0.wav").write_bytes(b"RIFF but not really a wav file")
    with pytest.raises(AudioInputError, match=r"train\.tsv, line 2: .*0\.wav: cannot read audio"):
        first_batch(WaveformDataset(manifest, SR))


def test_wrong_sample_rate_is_refused_not_resampled(tmp_path):
    manifest = write_corpus(tmp_path, [22050], sample_rate=22050)
    with pytest.raises(AudioInputError, match=r"line 2: .*0\.wav: sample rate is 22050 Hz, the task expects 16000"):
        first_batch(WaveformDataset(manifest, SR))


def test_stale_manifest_length_is_refused(tmp_path):
    manifest = write_corpus(tmp_path, [16000])
    manifest.sizes[0] = 17000
    with pytest.raises(AudioInputError, match="the manifest says 17000"):
        first_batch(WaveformDataset(manifest, SR))


def test_malformed_manifest_line(tmp_path):
    (tmp_path / "bad.tsv").write_text(f"{tmp_path}\na.wav\t100\nb.wav\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv, line 3"):
        read_manifest(str(tmp_path / "bad.tsv"))


def test_crops_are_seeded_by_seed_epoch_and_sample(tmp_path):
    manifest = write_corpus(tmp_path, [40000, 40000, 40000])
    dataset = WaveformDataset(manifest, SR, max_sample_size=8000, seed=3)

    def offsets():
        batch = dataset.collater([dataset[i] for i in range(3)])
        return (batch["net_input"]["source"][:, 0] * 1e5).round().long().tolist()

    first = offsets()
    assert offsets() == first  # no hidden global random state
    assert len(set(first)) > 1  # each sample draws its own offset
    dataset.set_epoch(2)
    assert offsets() != first
    other_seed = WaveformDataset(manifest, SR, max_sample_size=8000, seed=4)
    batch = other_seed.collater([other_seed[i] for i in range(3)])
    assert (batch["net_input"]["source"][:, 0] * 1e5).round().long().tolist() != first


def test_fixed_length_pads_short_items_and_centre_crops_long_ones(tmp_path):
    manifest = write_corpus(tmp_path, [8000, 20000])
    dataset = WaveformDataset(manifest, SR, fixed_length=12000, random_crop=False)
    batch = dataset.collater([dataset[0], dataset[1]])
    source, padding = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert source.shape == (2, 12000)
    assert padding[0, 8000:].all() and not padding[0, :8000].any() and not padding[1].any()
    assert torch.all(source[0, 8000:] == 0)
    assert round(float(source[1, 0]) * 1e5) == (20000 - 12000) // 2  # centre


def test_labels_are_cut_to_the_audio_crop(tmp_path):
    # 50 Hz labels: frame j of file i is (j % 4); a crop at sample s starts at frame round(s/320).
    lengths = [32000, 48000]
    manifest = write_corpus(tmp_path, lengths)
    write_labels(tmp_path, "km", [[j % 4 for j in range(n // 320)] for n in lengths])
    labels = load_label_set(str(tmp_path), "train", "km", manifest, SR, 50)
    dataset = WaveformDataset(manifest, SR, max_sample_size=16000, seed=1, label_sets=[labels])
    batch = dataset.collater([dataset[0], dataset[1]])
    starts = (batch["net_input"]["source"][:, 0] * 1e5).round().long()
    targets = batch["target_list"][0]
    assert targets.shape == (2, 50)
    offset = labels.dictionary.nspecial  # symbols follow fairseq's special tokens
    for row, start in zip(targets, starts.tolist()):
        first_frame = round(start / 320)
        expected = [(first_frame + j) % 4 + offset for j in range(50)]
        assert row.tolist() == expected


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_dict", r"dict\.km\.txt: dictionary not found"),
        ("unknown_symbol", r"train\.km, line 2: label\(s\) \['9'\] are not in"),
        ("too_few_lines", r"train\.km: 1 lines, but the manifest .* has 2 entries"),
        ("wrong_rate", r"train\.km, line 1: 200 labels for 32000 samples .* expected about 100\.0"),
    ],
)
def test_bad_label_files_are_refused(tmp_path, case, message):
    manifest = write_corpus(tmp_path, [32000, 32000])
    good = [[0] * 100, [1] * 100]
    sequences = {
        "unknown_symbol": [[0] * 100, [9] * 100],
        "too_few_lines": good[:1],
        "wrong_rate": [[0] * 200, [0] * 200],  # 100 Hz labels read at 50 Hz
    }.get(case, good)
    write_labels(tmp_path, "km", sequences)
    if case == "missing_dict":
        os.remove(tmp_path / "dict.km.txt")
    with pytest.raises(LabelError, match=message):
        load_label_set(str(tmp_path), "train", "km", manifest, SR, 50)


def test_normalize_is_over_each_crops_real_samples(tmp_path):
    # Ramps of different lengths: the whole file and the crop have different statistics, so
    # normalising the file first would leave the crop's mean away from 0.
    manifest = write_corpus(tmp_path, [40000, 6000])
    dataset = WaveformDataset(manifest, SR, max_sample_size=8000, pad_audio=True, normalize=True, seed=2)
    batch = dataset.collater([dataset[0], dataset[1]])
    source, padding = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    start = dataset.crop_start(0, 40000, 8000)
    ramp = torch.arange(start, start + 8000, dtype=torch.float32) / 1e5
    torch.testing.assert_close(source[0], (ramp - ramp.mean()) / (ramp.var(unbiased=False) + 1e-5).sqrt(), atol=1e-4, rtol=1e-4)
    whole = torch.arange(6000, dtype=torch.float32) / 1e5  # shorter than the batch: all of it, padded
    assert padding[1].tolist() == [False] * 6000 + [True] * 2000
    torch.testing.assert_close(source[1, :6000], (whole - whole.mean()) / (whole.var(unbiased=False) + 1e-5).sqrt(), atol=1e-4, rtol=1e-4)
    assert torch.all(source[1, 6000:] == 0)
