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
def _manifest(tmp_path, seconds):
    lines = [str(tmp_path)]
    for i, s in enumerate(seconds):
        wav = tones(1, s, seed=i)[0].numpy()
        sf.write(tmp_path / f"c{i}.wav", wav, SR, subtype="FLOAT")
        lines.append(f"c{i}.wav\t{len(wav)}")
    for split in ("train", "valid"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_crop_task_serves_fixed_crops(tmp_path):
    from audio_ssl_ext.tasks.crop_pretraining import CropPretrainingConfig, CropPretrainingTask

    _manifest(tmp_path, [1.5, 2.5, 0.5])
    task = CropPretrainingTask.setup_task(CropPretrainingConfig(data=str(tmp_path), crop_seconds=1.0, seed=3))
    for split in ("train", "valid"):
        task.load_dataset(split)
    train, valid = task.dataset("train"), task.dataset("valid")
    batch = train.collater([train[i] for i in range(3)])
    assert batch["net_input"]["source"].shape == (3, SR)
    assert set(batch["net_input"]) == {"source", "padding_mask"}  # fairseq's keys; ids come via the criterion
    assert batch["net_input"]["padding_mask"][2].sum() == SR // 2  # the 0.5 s file is padded
    # Validation takes the centre: samples 0.25 s .. 1.25 s of the 1.5 s file.
    centre = valid.collater([valid[0]])["net_input"]["source"][0]
    full = torch.from_numpy(sf.read(tmp_path / "c0.wav", dtype="float32")[0])
    assert torch.equal(centre, full[SR // 4 : SR // 4 + SR])


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
    """
    import fairseq.tasks

    encoder, decoder, windows_bias = 85_105_920, 7_418_944, 4 * sum(2 * w - 1 for w in [2, 5, 10, 25, 50, 125])
    for name, expected_decoder in (("mae_base", decoder), ("base", decoder + windows_bias)):
        cfg = compose_example_config("mwmae", name, ["task.data=/nonexistent"])
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = fairseq.tasks.setup_task(cfg.task).build_model(cfg.model)
        count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
        assert count(model.patch_embed, model.encoder) == encoder, name
        assert count(model) - encoder == expected_decoder, name
        assert abs(count(model.patch_embed, model.encoder) - 86e6) / 86e6 < 0.02
        if name == "base":
            assert [b.attn.window_sizes for b in model.decoder.blocks] == [[2, 5, 10, 25, 50, 125, 0, 0]] * 4
            assert cfg.optimization.lr == [1.5e-5 * 1024 / 256]
            assert cfg.lr_scheduler.warmup_updates == cfg.optimization.max_update // 10


# ---------------------------------------------------------------------------- features
def test_features_are_chunks_concatenated_in_time():
    model = tiny_mw_mae().eval()
    audio = tones(2, 2.5)  # 251 frames: chunks of 100, 100 and 51 (+49 zero frames)
    with torch.no_grad():
        features = model.extract_features(audio)
        x = features["x"]
        assert x.shape == (2, 63, 5 * 32)  # ceil(251 / 4) steps of (5 frequency patches x 32)
        assert len(features["layer_results"]) == 1 and features["layer_results"][0] is x
        assert model.frame_rate == 25.0

        # By hand: the whole clip standardized once, then each 100-frame chunk on its own.
        spec, _ = model.frontend.spectrogram(audio)
        spec = torch.nn.functional.pad(spec, (0, 0, 0, 300 - 251))
        for c in range(3):
            tokens = model.patch_embed(patchify(spec[:, 100 * c : 100 * (c + 1)], 4, 16))
            chunk = model.encoder(tokens).reshape(2, 25, 5 * 32)  # 'b (t f) d -> b t (f d)'
            torch.testing.assert_close(x[:, 25 * c : 25 * (c + 1)], chunk[:, : 63 - 25 * c])
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
