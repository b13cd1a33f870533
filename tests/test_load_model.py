"""load_model: every learner's checkpoint -> hidden states of every layer, batched, padding-exact.

Checkpoints are written from the example tiny configs with fresh weights (the same file layout
as a trained fairseq checkpoint's cfg/model entries), so every learner that ships a tiny config
is covered as soon as it lands.
"""

import dataclasses
import glob
import os
import shutil

import numpy as np
import pytest
import soxr
import torch

from audio_ssl_ext.downstream.load import CheckpointError, FairseqWaveformModel, load_model
from tests.utils import write_untrained_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "examples", "*", "*tiny*.yaml"))
)


@pytest.fixture(scope="module", params=TINY_CONFIGS)
def tiny_checkpoint(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / (request.param.replace(os.sep, "_") + ".pt")
    return write_untrained_checkpoint(os.path.join(REPO, request.param), str(out), seed=0, num_label_classes=20)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def noise(batch, samples, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_hidden_states_shapes_lengths_and_padding(tiny_model):
    model = tiny_model
    assert not model.training
    lengths = torch.tensor([40000, 23457, 9000])
    wavs = noise(3, 40000)
    out = model.extract_features(wavs, lengths)

    assert len(out.hidden_states) == model.num_layers >= 2
    expected_frames = [model.num_frames(int(n)) for n in lengths]
    assert out.lengths.tolist() == expected_frames
    assert expected_frames[0] == pytest.approx(40000 / model.sample_rate * out.frame_rate, abs=2)
    for h in out.hidden_states:
        assert h.shape == (3, max(expected_frames), model.hidden_dim)
        assert torch.isfinite(h).all()
        for i, frames in enumerate(expected_frames):
            assert h[i, frames:].abs().sum() == 0  # zeros past each item's end

    # The same item alone, unpadded: the same features for its real frames.
    for i, n in enumerate(lengths.tolist()):
        alone = model.extract_features(wavs[i : i + 1, :n])
        assert alone.lengths.tolist() == [expected_frames[i]]
        for batched, single in zip(out.hidden_states, alone.hidden_states):
            torch.testing.assert_close(batched[i, : expected_frames[i]], single[0], atol=1e-4, rtol=1e-4)

    # A list of 1-D tensors is the same batch.
    as_list = model.extract_features([wavs[i, :n] for i, n in enumerate(lengths.tolist())])
    for a, b in zip(as_list.hidden_states, out.hidden_states):
        torch.testing.assert_close(a, b)


def test_last_hidden_state_is_the_models_own_encoder_output(tiny_model):
    """What the feature interface returns is what the model itself computes: fairseq's
    extract_features for the conv family (JOOCI: its Content encoder); for the patch models, the
    encoder run directly on the patches of an input exactly one training crop long."""
    learner = tiny_model.model
    if hasattr(learner, "framing"):
        wav, lengths = noise(1, 24000, seed=6), torch.tensor([24000])
        ours = learner.encoder_states(*learner.front_features(wav, lengths))[-1]
        if learner.framing.normalize:
            wav = torch.nn.functional.layer_norm(wav, wav.shape[-1:])
        own = learner.model if isinstance(learner, FairseqWaveformModel) else learner  # wav2vec2: fairseq's
        theirs = own.extract_features(wav, padding_mask=None, mask=False)
        theirs = theirs["x"] if isinstance(theirs, dict) else theirs[0]
    else:
        samples = learner.frontend.min_input_samples()
        wav = noise(1, samples, seed=6)
        ours = learner.hidden_states(wav, torch.tensor([samples]))[-1]
        tokens = learner.encode_patches(learner.frontend(wav).patches, [])  # (1, time x freq, D), time-major
        theirs = tokens.reshape(1, learner.frontend.grid[0], -1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", ["examples/musichubert/tiny.yaml", "examples/music2vec/tiny.yaml", "examples/wav2vec2/tiny.yaml"])
def test_pre_layer_norm_models_end_with_the_encoders_final_layer_norm(config, tmp_path):
    """layer_norm_first=true: the last hidden state is fairseq's own encoder output, final layer
    norm included (TransformerEncoder.forward adds it after extract_features)."""
    checkpoint = write_untrained_checkpoint(
        os.path.join(REPO, config), str(tmp_path / "pre_ln.pt"), overrides=["model.layer_norm_first=true"],
        num_label_classes=20,
    )
    model = load_model(checkpoint)
    learner = model.model
    own = learner.model if isinstance(learner, FairseqWaveformModel) else learner
    wav = noise(1, 24000, seed=7)
    ours = model.extract_features(wav).hidden_states[-1]
    if learner.framing.normalize:
        wav = torch.nn.functional.layer_norm(wav, wav.shape[-1:])
    with torch.no_grad():
        theirs = own.extract_features(wav, padding_mask=None, mask=False)
    theirs = theirs["x"] if isinstance(theirs, dict) else theirs[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def music2vec_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2v") / "music2vec_tiny.pt"
    return write_untrained_checkpoint(os.path.join(REPO, "examples/music2vec/tiny.yaml"), str(out), seed=0)


def test_resamples_other_rates_inside(music2vec_checkpoint):
    model = load_model(music2vec_checkpoint)
    wav24 = noise(1, 36000, seed=1)[0]
    inside = model.extract_features([wav24], sample_rate=24000)
    outside = soxr.resample(wav24.numpy(), 24000, model.sample_rate, quality="HQ")
    expected = model.extract_features([torch.from_numpy(np.ascontiguousarray(outside, dtype=np.float32))])
    assert inside.lengths.tolist() == [model.num_frames(36000, sample_rate=24000)]
    for a, b in zip(inside.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b)


def test_random_init_is_the_same_architecture_with_other_weights(music2vec_checkpoint):
    trained = load_model(music2vec_checkpoint)
    fresh = load_model(music2vec_checkpoint, random_init=True, seed=123)
    wav = noise(1, 20000, seed=2)
    a, b = trained.extract_features(wav), fresh.extract_features(wav)
    assert [h.shape for h in a.hidden_states] == [h.shape for h in b.hidden_states]
    assert not torch.allclose(a.hidden_states[-1], b.hidden_states[-1])
    again = load_model(music2vec_checkpoint, random_init=True, seed=123).extract_features(wav)
    torch.testing.assert_close(again.hidden_states[-1], b.hidden_states[-1])


def test_long_waveform_input_in_chunks_keeps_the_one_pass_frame_grid(tmp_path):
    path = write_untrained_checkpoint(os.path.join(REPO, "examples/wav2vec2/tiny.yaml"), str(tmp_path / "w.pt"))
    whole = load_model(path, chunk_seconds=100.0)
    chunked = load_model(path, chunk_seconds=0.5)  # 25 frames = 8000 samples per chunk
    hop, overlap = chunked.chunk_hop_samples, chunked.chunk_overlap_samples
    assert (hop, overlap) == (8000, 400 - 320)
    for num_samples in (8000 * 3 + 80 + 319, 8000 * 3 + 400, 55555):  # tail without / with a frame
        wav = noise(1, num_samples, seed=3)
        one_pass, pieces = whole.extract_features(wav), chunked.extract_features(wav)
        assert pieces.lengths.tolist() == one_pass.lengths.tolist() == [chunked.num_frames(num_samples)]
    # Each chunk's frames are that chunk computed on its own.
    wav = noise(1, 8000 * 2 + 5000, seed=4)
    pieces = chunked.extract_features(wav)
    second = whole.extract_features(wav[:, 8000 : 8000 + hop + overlap])
    for a, b in zip(pieces.hidden_states, second.hidden_states):
        torch.testing.assert_close(a[0, 25:50], b[0])


def test_group_norm_extractor_runs_per_utterance(tmp_path):
    """HuBERT's default extractor normalises over time: batched with padding it moves real frames."""
    config = tmp_path / "hubert_tiny.yaml"
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    (label_dir / "dict.km.txt").write_text("0 1\n1 1\n2 1\n")
    config.write_text(
        "task:\n  _name: waveform_pretraining\n  data: unused\n  labels: [km]\n"
        f"  label_dir: {label_dir}\n  label_rate: 50\n"
        "model:\n  _name: hubert\n  extractor_mode: default\n"
        "  conv_feature_layers: '[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2'\n"
        "  encoder_layers: 2\n  encoder_embed_dim: 32\n  encoder_ffn_embed_dim: 64\n"
        "  encoder_attention_heads: 2\n  final_dim: 16\n  conv_pos: 16\n  conv_pos_groups: 4\n"
    )
    path = write_untrained_checkpoint(str(config), str(tmp_path / "hubert.pt"))
    model = load_model(path)
    assert model.model.framing.group_norm_extractor
    wavs, lengths = noise(2, 30000, seed=5), torch.tensor([30000, 9000])
    alone = model.extract_features(wavs[1:, :9000]).hidden_states[0][0]
    batched = model.extract_features(wavs, lengths).hidden_states[0][1, : alone.size(0)]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    # What the per-utterance path avoids: the same extractor run over the padded batch.
    model.model.framing = dataclasses.replace(model.model.framing, group_norm_extractor=False)
    leaky = model.model.hidden_states(wavs, lengths)[0][1, : alone.size(0)]
    assert (leaky - alone).abs().max() > 1e-2

    # The label dictionaries moved: a clear error, and the override that fixes it.
    moved = tmp_path / "labels_moved"
    shutil.move(str(label_dir), str(moved))
    with pytest.raises(CheckpointError, match="task_overrides"):
        load_model(path)
    assert load_model(path, task_overrides={"label_dir": str(moved)}).num_layers == 3


def test_bad_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "missing.pt"))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_model(str(text))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_model(str(other))
