"""MW-MAE / MAE: the spectrogram path, the crop task, the models' loss, seeded masks and exact
resume, config errors, the base configs' size, feature extraction, and a fairseq-hydra-train run."""

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl_ext.models.mw_mae import AudioMaeConfig, AudioMaeModel, MwMaeConfig, MwMaeModel
from audio_ssl_ext.modules.multi_window_attention import MultiWindowAttention
from audio_ssl_ext.modules.patches import patchify
from audio_ssl_ext.modules.spectrogram_frontend import LogMelPatches
from audio_ssl_ext.modules.vit import Attention
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train

SR = 16000

# The tiny shape of examples/mwmae/tiny.yaml: 1 s = 100 frames x 80 bands = 125 patches.
TINY = dict(
    sample_rate=SR, seed=1, input_frames=100, encoder_embed_dim=32, encoder_layers=1,
    encoder_attention_heads=2, decoder_embed_dim=16, decoder_layers=1,
)


def tiny_mw_mae(**overrides) -> MwMaeModel:
    torch.manual_seed(0)
    return MwMaeModel.build_model(MwMaeConfig(**{**TINY, **overrides}))


def tiny_audio_mae(**overrides) -> AudioMaeModel:
    torch.manual_seed(0)
    return AudioMaeModel.build_model(AudioMaeConfig(**{**TINY, "decoder_attention_heads": 4, **overrides}))


def tones(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Harmonic tones (f0 110 or 220 Hz, harmonics up to 7 kHz) under a slow random envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    waves = []
    for _ in range(batch):
        f0 = rng.choice([110, 220])
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k**0.5 for k in range(1, 7000 // f0))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
        waves.append(x / np.abs(x).max())
    return torch.tensor(np.stack(waves), dtype=torch.float32)


# ---------------------------------------------------------------------------- spectrogram path
def test_two_seconds_give_the_papers_200_x_80_input_and_250_patches():
    frontend = LogMelPatches()
    out = frontend(tones(2, 2.0))
    assert frontend.grid == (50, 5)
    assert out.patches.shape == (2, 250, 64) and out.patch_valid.all()
    spec, _ = frontend.spectrogram(tones(2, 2.0))
    assert spec.shape == (2, 201, 80)  # centred frames: 1 + 32000 // 160, cropped to 200
    assert spec.mean().abs() < 1e-4 and (spec.std(dim=(1, 2), unbiased=False) - 1).abs().max() < 1e-4


def test_zero_padding_in_a_batch_changes_nothing_of_a_short_clip():
    frontend = LogMelPatches(input_frames=100)
    short = tones(1, 0.75)
    alone, alone_frames = frontend.spectrogram(short)
    batch = torch.zeros(1, int(1.2 * SR))
    batch[0, : short.shape[1]] = short[0]
    padding_mask = torch.zeros_like(batch, dtype=torch.bool)
    padding_mask[0, short.shape[1] :] = True
    padded, padded_frames = frontend.spectrogram(batch, padding_mask)
    assert alone_frames.item() == padded_frames.item() == 76  # 1 + 12000 // 160
    torch.testing.assert_close(padded[:, :76], alone, rtol=1e-4, atol=1e-4)  # standardized alike
    assert (padded[:, 76:] == 0).all()
    valid = frontend(batch, padding_mask).patch_valid[0].view(25, 5)
    assert valid[:19].all() and not valid[19:].any()  # 19 whole 4-frame patches in 76 frames


def test_a_crop_shorter_than_the_model_input_is_an_error_that_names_crop_seconds():
    with pytest.raises(ValueError, match="raise task.crop_seconds"):
        LogMelPatches()(tones(1, 1.5))


# ---------------------------------------------------------------------------- task
# The recipes' input settings (base.yaml and tiny.yaml): both references' 400-point FFT and
# reflect-padded centring; MW-MAE's per-clip statistics and reflected chunk padding.
OFFICIAL = dict(n_fft=400, center_padding="reflect", normalization="per_clip", chunk_padding="reflect")
NORMALIZATIONS = {
    "per_clip": {},
    "dataset": dict(normalization="dataset", norm_mean=-5.0, norm_std=3.0),
    "per_crop": dict(normalization="per_crop"),
}


def _manifest(tmp_path, samples):
    lines = [str(tmp_path)]
    for i, n in enumerate(samples):
        wav = tones(1, n / SR, seed=i)[0, :n].numpy()
        sf.write(tmp_path / f"c{i}.wav", wav, SR, subtype="FLOAT")
        lines.append(f"c{i}.wav\t{len(wav)}")
    for split in ("train", "valid"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def _read(tmp_path, i):
    return torch.from_numpy(sf.read(tmp_path / f"c{i}.wav", dtype="float32")[0])


def _crop_task(tmp_path, clip_seconds=10.0, **model_fields):
    from omegaconf import OmegaConf

    from audio_ssl_ext.tasks.crop_pretraining import CropPretrainingConfig, CropPretrainingTask

    task = CropPretrainingTask.setup_task(
        CropPretrainingConfig(data=str(tmp_path), crop_seconds=1.0, clip_seconds=clip_seconds, seed=3)
    )
    torch.manual_seed(0)
    model = task.build_model(OmegaConf.create({"_name": "mw_mae", **TINY, **OFFICIAL, **model_fields}))
    for split in ("train", "valid"):
        task.load_dataset(split)
    return task, model.eval()


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_extraction_of_a_clip_equals_trainings_view_of_the_same_crop(tmp_path, normalization):
    """A 300-frame clip: validation's centre crop is frames 100-199, the second extraction chunk.
    The encoder's output on the crop the task and the model cut for training equals the clip's
    hidden states (what load_model, s3prl and HEAR read) at those 25 time steps; and the crop is
    normalized as its mode says, by hand from the clip's raw log-mel."""
    _manifest(tmp_path, [47900])  # 1 + 47900 // 160 = 300 frames
    task, model = _crop_task(tmp_path, **NORMALIZATIONS[normalization])
    valid = task.dataset("valid")
    net_input = valid.collater([valid[0]])["net_input"]
    clip = _read(tmp_path, 0)[None]
    if normalization == "per_clip":  # the whole clip travels, for its statistics
        assert net_input["source"].shape == (1, 47900) and net_input["crop_start"].tolist() == [100]
    else:  # the crop's frames and the samples their windows reach (two frames' worth each side)
        assert net_input["crop_start"].tolist() == [2]
        torch.testing.assert_close(net_input["source"][0], clip[0, 98 * 160 : 199 * 160 + 200], rtol=0, atol=0)
    with torch.no_grad():
        training = model.frontend(**net_input)
        tokens = model.encode_patches(training.patches, []).reshape(1, 25, -1)
        extracted = model.hidden_states(clip, torch.tensor([47900]))[-1]
        raw, _ = model.frontend.frames(clip)
    assert extracted.shape == (1, 75, 5 * 32)
    torch.testing.assert_close(tokens, extracted[:, 25:50], rtol=1e-5, atol=1e-5)

    crop = raw[0, 100:200]
    by_hand = {
        "per_clip": (crop - raw.mean()) / raw.std(unbiased=False),
        "dataset": (crop + 5.0) / 3.0,
        "per_crop": (crop - crop.mean()) / crop.std(unbiased=False),
    }[normalization]
    torch.testing.assert_close(training.patches[0], patchify(by_hand[None], 4, 16)[0], rtol=1e-4, atol=1e-4)


def test_training_crops_are_cut_from_the_clips_own_frame_grid(tmp_path):
    """Random crops of a 3.5 s clip, with per-clip statistics from windows of at most 2 s: each
    piece is bounded, and its frames at the crop are the whole clip's (same STFT context, the
    clip's reflected ends), not a fresh STFT of a waveform excerpt."""
    _manifest(tmp_path, [56000, 8000])
    task, model = _crop_task(tmp_path, clip_seconds=2.0)
    train = task.dataset("train")
    for epoch in (1, 2, 3):
        train.set_epoch(epoch)
        batch = train.collater([train[0], train[1]])
        source, padding_mask, crop_start = (batch["net_input"][k] for k in ("source", "padding_mask", "crop_start"))
        assert source.shape[1] <= 201 * 160 + 200 + 2 * 160  # a 2 s window and its context, not 3.5 s
        with torch.no_grad():
            pieces, _ = model.frontend.frames(source, padding_mask)
            whole, _ = model.frontend.frames(_read(tmp_path, 0)[None])
        start, _, first = train.piece(0, 56000)
        assert first == crop_start[0] and start % 160 == 0
        clip_first = first + start // 160
        torch.testing.assert_close(pieces[0, first : first + 100], whole[0, clip_first : clip_first + 100])
        # The 0.5 s clip is given whole, its crop from frame 0; 51 real frames, so 12 real time
        # patches (of 4 frames) of 25 are scored, the rest reflected as chunk_padding says.
        assert crop_start[1] == 0 and (~padding_mask[1]).sum() == 8000
        valid = model.frontend(source, padding_mask, crop_start).patch_valid[1].view(25, 5)
        assert valid[:12].all() and not valid[12:].any()
    starts = set()
    for epoch in range(1, 8):
        train.set_epoch(epoch)
        start, _, first = train.piece(0, 56000)
        starts.add(first + start // 160)
    assert len(starts) > 3  # random crops over the whole clip, not always the window's start


def test_the_crop_task_needs_the_model_first_and_a_matching_crop(tmp_path):
    from audio_ssl_ext.tasks.crop_pretraining import CropPretrainingConfig, CropPretrainingTask

    _manifest(tmp_path, [16000])
    task = CropPretrainingTask.setup_task(CropPretrainingConfig(data=str(tmp_path), crop_seconds=1.0, seed=3))
    with pytest.raises(RuntimeError, match="build the model"):
        task.load_dataset("train")
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=r"task.crop_seconds=1 is 100 frames.*input_frames=200: set task.crop_seconds=2"):
        task.build_model(OmegaConf.create({"_name": "mw_mae", **TINY, "input_frames": 200}))


def test_reflected_padding_is_numpys_even_past_a_whole_clip():
    """Centring and chunk padding by reflection, per example at its own length: numpy.pad's
    'reflect', also where the padding is longer than the clip (torch's reflect pad refuses)."""
    frontend = LogMelPatches(input_frames=100, **OFFICIAL)
    for samples, padded_frames in ((20800, 200), (4800, 100)):  # 131 + 69 reflected; 31 + 69: twice over
        clip = tones(1, samples / SR)
        with torch.no_grad():
            chunks = frontend.chunks(clip)
            spec, frames = frontend.spectrogram(clip)
        assert frames.item() == 1 + samples // 160
        expected = np.pad(spec[0].numpy(), ((0, padded_frames - frames.item()), (0, 0)), mode="reflect")
        torch.testing.assert_close(chunks.patches, patchify(torch.from_numpy(expected).reshape(-1, 100, 80), 4, 16))
    # A clip in a zero-padded batch: its own frames, reflected at its own end.
    short, batch = tones(1, 0.3), torch.zeros(1, 16000)
    batch[0, :4800] = short[0]
    mask = torch.arange(16000)[None] >= 4800
    with torch.no_grad():
        alone, _ = frontend.frames(short)
        padded, _ = frontend.frames(batch, mask)
    torch.testing.assert_close(padded[:, :31], alone)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(normalization="dataset"), "needs model.norm_mean and model.norm_std.*scripts/norm_stats.py"),
        (dict(normalization="dataset", norm_mean=0.0, norm_std=0.0), "std > 0"),
        (dict(norm_mean=1.0), "model.normalization=per_clip does not use them"),
        (dict(chunk_padding="edge"), "model.chunk_padding='edge': one of zero, reflect"),
    ],
)
def test_normalization_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        LogMelPatches(**{**OFFICIAL, **fields})


def test_norm_stats_are_the_raw_log_mel_statistics_of_every_frame(tmp_path, capsys):
    """scripts/norm_stats.py over a manifest: mean and (population) std of every frame of every
    file on the model's grid, read in blocks (here 64 frames) with the same result as whole."""
    import importlib.util

    from audio_ssl_ext.data.manifest import read_manifest
    from audio_ssl_ext.tasks.crop_pretraining import logmel_statistics

    _manifest(tmp_path, [47900, 8000])
    frontend = LogMelPatches(input_frames=100, **OFFICIAL)
    with torch.no_grad():
        frames = torch.cat([frontend.frames(_read(tmp_path, i)[None])[0][0] for i in range(2)]).double()
    assert frames.shape == (300 + 51, 80)
    manifest = read_manifest(str(tmp_path / "train.tsv"))
    mean, std, count = logmel_statistics(frontend, manifest, [0, 1], block_frames=64)
    assert count == frames.numel()
    assert mean == pytest.approx(frames.mean().item(), abs=1e-4)
    assert std == pytest.approx(frames.std(unbiased=False).item(), abs=1e-4)

    spec = importlib.util.spec_from_file_location("norm_stats", os.path.join(REPO_ROOT, "scripts", "norm_stats.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--config-dir", os.path.join(REPO_ROOT, "examples", "mwmae"), "--config-name", "tiny", str(tmp_path / "train.tsv")])
    override = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split("=") for item in override.split())
    assert values["model.normalization"] == "dataset"
    assert float(values["++model.norm_mean"]) == pytest.approx(mean, rel=1e-5)
    assert float(values["++model.norm_std"]) == pytest.approx(std, rel=1e-5)


NEW_MODEL_FIELDS = ("n_fft", "center_padding", "normalization", "norm_mean", "norm_std", "chunk_padding",
                    "use_cls_token", "trainable_pos_embed")


@pytest.mark.parametrize("config", ["mwmae/mae_tiny.yaml", "audiojepa/tiny.yaml"])
def test_a_checkpoint_from_before_the_fidelity_fields_loads_as_it_was_trained(tmp_path, config):
    """A saved config without the new fields gets what that code trained with: 512-point FFT,
    zero-padded centring, each input standardized on its own, no CLS token, fixed positions; its
    extraction now standardizes each chunk as its training standardized each crop."""
    from omegaconf import OmegaConf

    from audio_ssl_ext.downstream.load import load_model
    from tests.utils import write_untrained_checkpoint

    path = str(tmp_path / "old.pt")
    write_untrained_checkpoint(os.path.join(REPO_ROOT, "examples", config), path,
                               overrides=["model.use_cls_token=false", "model.trainable_pos_embed=false"]
                               if "mae" in config else [])
    state = torch.load(path, weights_only=False)
    cfg = state["cfg"] if isinstance(state["cfg"], dict) else OmegaConf.to_container(state["cfg"])
    for key in NEW_MODEL_FIELDS:
        cfg["model"].pop(key, None)
    cfg["task"].pop("clip_seconds")
    state["cfg"] = cfg
    torch.save(state, path)

    model = load_model(path).model
    frontend = model.frontend
    assert (frontend.logmel.n_fft, frontend.center_padding, frontend.normalization, frontend.chunk_padding) == (
        512, "zero", "per_crop", "zero"
    )
    assert getattr(model, "cls_token", None) is None
    clip = tones(1, 4.5)
    frames = frontend.input_frames
    with torch.no_grad():
        states = model.hidden_states(clip, torch.tensor([clip.shape[1]]))[-1]
        crop = frontend(clip[:, frames * 160 - 320 :], crop_start=torch.tensor([2]))  # the second chunk
        tokens = model.encode_patches(crop.patches, []).reshape(1, frontend.grid[0], -1)
    torch.testing.assert_close(states[:, frontend.grid[0] : 2 * frontend.grid[0]], tokens, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- model
def test_forward_returns_the_loss_the_model_criterion_expects():
    model = tiny_mw_mae()
    out = model(tones(3, 1.0), None, torch.arange(3))
    assert set(out) == {"losses", "sample_size"}
    assert out["sample_size"] == 3 * 100  # 80% of 125 patches, all real audio
    assert out["losses"]["mse"].ndim == 0 and out["losses"]["mse"] > 0
    with pytest.raises(ValueError, match="sample_ids"):
        model(tones(1, 1.0))


def test_masks_follow_seed_update_number_and_sample_id():
    model = tiny_mw_mae()
    audio, ids = tones(2, 1.0), torch.tensor([4, 9])
    loss = lambda: model(audio, None, ids)["losses"]["mse"].item()  # noqa: E731
    first = loss()
    assert loss() == first  # no other randomness
    model.set_num_updates(1)
    assert loss() != first
    model.set_num_updates(0)
    assert loss() == first
    model.eval()  # validation masks do not move with the update number
    valid = loss()
    model.set_num_updates(5)
    assert loss() == valid


def _train(model, optimizer, audio, ids, steps, first_update):
    losses = []
    for update in range(first_update, first_update + steps):
        model.set_num_updates(update)
        out = model(audio, None, ids)
        loss = out["losses"]["mse"] / out["sample_size"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_audio_mae_loss_goes_down_on_a_fixed_batch():
    model = tiny_audio_mae()
    audio = tones(4, 1.0)
    # Predicting 0 everywhere scores the targets' mean square (about 1: they are standardized).
    zero_prediction_loss = model.frontend(audio).patches.square().mean().item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    losses = _train(model, optimizer, audio, torch.arange(4), steps=20, first_update=0)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
    assert np.mean(losses[-3:]) < 0.9 * zero_prediction_loss, (losses, zero_prediction_loss)


def test_a_resumed_run_continues_exactly(tmp_path):
    audio, ids = tones(2, 1.0), torch.tensor([0, 1])
    straight = tiny_mw_mae()
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-3)
    _train(straight, opt, audio, ids, steps=4, first_update=0)

    first = tiny_mw_mae()
    opt = torch.optim.AdamW(first.parameters(), lr=1e-3)
    _train(first, opt, audio, ids, steps=2, first_update=0)
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    torch.manual_seed(1234)  # a different process state: only the checkpoint and the update count carry over
    resumed = tiny_mw_mae()
    state = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(state["model"])
    opt = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    opt.load_state_dict(state["opt"])
    _train(resumed, opt, audio, ids, steps=2, first_update=2)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_audio_mae_is_mw_mae_with_every_head_global():
    mae = tiny_audio_mae()
    mw = tiny_mw_mae(decoder_window_sizes=[0, 0, 0, 0])
    assert isinstance(mae.decoder.blocks[0].attn, Attention)
    assert isinstance(mw.decoder.blocks[0].attn, MultiWindowAttention)
    mw.load_state_dict(mae.state_dict())  # same parameters, same names
    audio, ids = tones(2, 1.0), torch.arange(2)
    torch.testing.assert_close(mw(audio, None, ids)["losses"]["mse"], mae(audio, None, ids)["losses"]["mse"])


def test_mae_cls_token_is_encoded_and_decoded_but_never_a_feature():
    """The official MAE baseline (use_cls_token): a CLS token before the visible patches in the
    encoder and before all patches in the decoder, both with a zero position row; hidden states
    per time step (load_model, s3prl, HEAR) are the patch tokens only."""
    model = tiny_audio_mae(use_cls_token=True).eval()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model.decoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    audio = tones(2, 1.0)
    with torch.no_grad():
        out = model(audio, None, torch.arange(2))
        assert seen == [1 + 25, 1 + 125] and out["sample_size"] == 2 * 100
        states = model.hidden_states(audio, torch.tensor([SR, SR]))
        patches = model.frontend(audio).patches
        everything = model.encoder(model.with_cls(model.patch_embed(patches)))  # (2, 1 + 125, 32)
    assert [tuple(h.shape) for h in states] == [(2, 26, 5 * 32)]  # 101 frames: ceil(101 / 4) steps
    torch.testing.assert_close(states[-1][:, :25], everything[:, 1:].reshape(2, 25, 5 * 32))  # chunk 1
    # The CLS token changes what the patches attend to: a model without it gives other features.
    plain = tiny_audio_mae().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "cls_token"})
    with torch.no_grad():
        assert not torch.allclose(plain.hidden_states(audio, torch.tensor([SR, SR]))[-1], states[-1], atol=1e-3)
    with pytest.raises(ValueError, match="use_cls_token=true with mw_mae"):
        tiny_mw_mae(use_cls_token=True)


def test_trainable_positions_start_as_sine_cosine_and_are_trained():
    fixed, trained = tiny_audio_mae(use_cls_token=True), tiny_audio_mae(use_cls_token=True, trainable_pos_embed=True)
    assert "patch_embed.pos_embed" not in fixed.state_dict() and "decoder_pos_embed" not in fixed.state_dict()
    torch.testing.assert_close(trained.patch_embed.pos_embed.detach(), fixed.patch_embed.pos_embed)
    torch.testing.assert_close(trained.decoder_pos_embed.detach(), fixed.decoder_pos_embed)
    assert trained.decoder_pos_embed.shape == (1 + 125, 16) and not trained.decoder_pos_embed[0].any()
    assert not trained.cls_pos_embed.any()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    _train(trained, optimizer, tones(2, 1.0), torch.arange(2), steps=1, first_update=0)
    assert not torch.equal(trained.patch_embed.pos_embed.detach(), fixed.patch_embed.pos_embed)
    assert not torch.equal(trained.decoder_pos_embed.detach(), fixed.decoder_pos_embed)


def test_mw_mae_decoder_uses_the_window_rule_and_encoder_windows_are_optional():
    model = tiny_mw_mae(encoder_window_sizes=[5, 25])  # 25 visible of 125 patches: both divide
    assert model.decoder.blocks[0].attn.window_sizes == [5, 25, 0, 0]
    assert model.encoder.blocks[0].attn.window_sizes == [5, 25]
    out = model(tones(1, 1.0), None, torch.arange(1))
    assert math.isfinite(out["losses"]["mse"].item())
    assert isinstance(tiny_mw_mae().encoder.blocks[0].attn, Attention)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(decoder_window_sizes=[2, 0]), r"model.decoder_window_sizes=\[2, 0\]: window 2 does not divide the 125"),
        (dict(decoder_attention_heads=8), "gives 4 heads but the attention head count is 8"),
        (dict(decoder_window_sizes=[5, 0], decoder_attention_heads=4), "gives 2 heads but the attention head count is 4"),
        (dict(encoder_window_sizes=[125, 0]), "model.encoder_window_sizes.*window 125 does not divide the 25 tokens"),
        (dict(encoder_window_sizes=[5, 0, 0]), "gives 3 heads but the attention head count is 2"),
    ],
)
def test_inconsistent_window_configs_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_mw_mae(**overrides)


def test_base_configs_have_the_papers_size():
    """ViT-B encoder + the 384-wide, 4-block decoder, from examples/mwmae/{base,mae_base}.yaml.

    Expected counts, by hand from the shapes: a ViT-B block (768 wide, MLP 3072) has 7,087,872
    parameters; 12 of them, the 4 x 16 patch embedding (64 * 768 + 768) and the final norm give
    85,105,920, the ViT-B size (Dosovitskiy et al. 2021, Table 1: 86M with its 16 x 16 x 3 patch
    embedding and classifier). The decoder: 768 -> 384 embedding (295,296), 4 blocks of 1,774,464,
    its norm (768), the 384 -> 64 prediction (24,640) and the mask token (384) = 7,418,944.
    MW-MHA adds one (2 w - 1)-entry relative position table per windowed head: 428 per block.
    The official code trains the positions: 250 x 768 encoder and 250 x 384 decoder entries; the
    MAE baseline's CLS token adds its 768 values and a 768 + 384 zero position row.
    """
    import fairseq.tasks

    encoder, decoder, windows_bias = 85_105_920, 7_418_944, 4 * sum(2 * w - 1 for w in [2, 5, 10, 25, 50, 125])
    positions, decoder_positions, cls = 250 * 768, 250 * 384, 768 + 768 + 384
    for name, expected_decoder in (("mae_base", decoder + cls), ("base", decoder + windows_bias)):
        cfg = compose_example_config("mwmae", name, ["task.data=/nonexistent"])
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = fairseq.tasks.setup_task(cfg.task).build_model(cfg.model)
        count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
        assert count(model.patch_embed, model.encoder) == encoder + positions, name
        assert count(model) - encoder - positions - decoder_positions == expected_decoder, name
        assert abs(count(model.patch_embed, model.encoder) - positions - 86e6) / 86e6 < 0.02
        assert (model.frontend.logmel.n_fft, model.frontend.normalization, model.frontend.chunk_padding) == (
            400, "per_clip", "reflect"
        )
        assert (model.cls_token is not None) == (name == "mae_base")
        if name == "base":
            assert [b.attn.window_sizes for b in model.decoder.blocks] == [[2, 5, 10, 25, 50, 125, 0, 0]] * 4
            assert cfg.optimization.lr == [1.5e-5 * 1024 / 256]
            assert cfg.lr_scheduler.warmup_updates == cfg.optimization.max_update // 10


# ---------------------------------------------------------------------------- features
@pytest.mark.parametrize("normalization", ["per_clip", "per_crop"])
def test_features_are_chunks_concatenated_in_time(normalization):
    model = tiny_mw_mae(**{**OFFICIAL, "normalization": normalization}).eval()
    audio = tones(2, 2.5)  # 251 frames: chunks of 100, 100 and 51 (+49 reflected frames)
    with torch.no_grad():
        features = model.extract_features(audio)
        x = features["x"]
        assert x.shape == (2, 63, 5 * 32)  # ceil(251 / 4) steps of (5 frequency patches x 32)
        assert len(features["layer_results"]) == 1 and features["layer_results"][0] is x
        assert model.frame_rate == 25.0

        # By hand: per_clip standardizes the whole clip once, per_crop each 100-frame chunk on
        # its own; then each chunk through the encoder, the last reflected past the clip's end.
        raw, _ = model.frontend.frames(audio)
        raw = torch.from_numpy(np.pad(raw.numpy(), ((0, 0), (0, 300 - 251), (0, 0)), mode="reflect"))
        for c in range(3):
            chunk = raw[:, 100 * c : 100 * (c + 1)]
            stats = raw[:, :251] if normalization == "per_clip" else chunk[:, : min(100, 251 - 100 * c)]
            mean, std = stats.mean(dim=(1, 2), keepdim=True), stats.std(dim=(1, 2), unbiased=False, keepdim=True)
            tokens = model.patch_embed(patchify((chunk - mean) / std, 4, 16))
            encoded = model.encoder(tokens).reshape(2, 25, 5 * 32)  # 'b (t f) d -> b t (f d)'
            torch.testing.assert_close(x[:, 25 * c : 25 * (c + 1)], encoded[:, : 63 - 25 * c], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features["clip"], x.mean(dim=1))
    assert not features["padding_mask"].any()


def test_features_of_a_padded_batch_mark_the_padding():
    model = tiny_mw_mae().eval()
    audio = tones(2, 1.5)
    padding_mask = torch.zeros_like(audio, dtype=torch.bool)
    padding_mask[1, SR:] = True  # the second clip is 1 s long
    with torch.no_grad():
        features = model.extract_features(audio, padding_mask)
    assert features["x"].shape == (2, 38, 160)  # ceil(151 / 4)
    assert features["padding_mask"].sum(dim=1).tolist() == [0, 38 - 26]  # ceil(101 / 4) = 26 real steps
    torch.testing.assert_close(features["clip"][1], features["x"][1, :26].mean(dim=0))


# ---------------------------------------------------------------------------- command line
@pytest.mark.smoke
def test_fairseq_hydra_train_mwmae_tiny_lowers_the_loss(demo_manifest_dir, tmp_path):
    _, losses = run_fairseq_hydra_train(
        os.path.join(REPO_ROOT, "examples", "mwmae"),
        "tiny",
        [
            f"task.data={demo_manifest_dir}",
            f"checkpoint.save_dir={tmp_path}/checkpoints",
            f"common.tensorboard_logdir={tmp_path}/tb",
            "optimization.max_update=30",
        ],
    )
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert os.path.isfile(tmp_path / "checkpoints" / "checkpoint_last.pt")
