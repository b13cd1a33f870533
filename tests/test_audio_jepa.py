"""Audio-JEPA: the paper's configs, the EMA target encoder, the two target domains, training on
each masking strategy without collapse, exact resume, feature extraction, and one
fairseq-hydra-train run on the demo corpus."""

import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from audio_ssl_ext.models.audio_jepa import AudioJepaConfig, AudioJepaModel
from audio_ssl_ext.modules.ema import ema_decay_at
from audio_ssl_ext.modules.masking import ContextTargetMask
from audio_ssl_ext.modules.spectrogram_frontend import LogMelPatches
from tests.test_example_configs import flat
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train

SAMPLE_RATE = 16000
CROP = int(2.08 * SAMPLE_RATE)  # 209 centred frames, the model uses 208 = 13 x 5 patches of 16 x 16


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: one thread avoids fighting over cores on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> AudioJepaConfig:
    fields = dict(
        sample_rate=SAMPLE_RATE, seed=1, encoder_embed_dim=64, encoder_layers=2, encoder_attention_heads=4,
        predictor_embed_dim=32, predictor_layers=1, predictor_attention_heads=2,
        ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=30,
    )
    fields.update(overrides)
    return AudioJepaConfig(**fields)


def tiny_model(seed=0, **overrides) -> AudioJepaModel:
    torch.manual_seed(seed)
    return AudioJepaModel(tiny_config(**overrides))


def synthetic_batch(batch=4, samples=CROP, seed=0) -> torch.Tensor:
    """Harmonic tones with a vibrato and a little noise: structure in time and in frequency."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    waves = []
    for i in range(batch):
        f0 = 110.0 * 2 ** (i / 3)
        phase = 2 * math.pi * f0 * t + 3 * torch.sin(2 * math.pi * (1 + i) * t)
        wave = sum(torch.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * torch.sin(2 * math.pi * 2 * t))
        waves.append(wave + 0.05 * torch.randn(samples, generator=g))
    return torch.stack(waves)


def assert_close(actual, expected, atol):
    # (torch.testing.assert_close costs seconds of imports on its first call)
    error = (actual - expected).abs().max().item()
    assert error <= atol, f"max abs error {error:.3g} > {atol}"


def train(model, source, steps, lr=1e-3, optimizer=None, first_step=0):
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.arange(source.shape[0])
    losses, target_vars = [], []
    for step in range(first_step, first_step + steps):
        model.set_num_updates(step)
        out = model(source, sample_ids=ids)
        loss = out["losses"]["jepa"] / out["sample_size"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        target_vars.append(float(out["target_var"]))
    return losses, target_vars


# --- configs ----------------------------------------------------------------------------------


def vit_parameters(dim, depth, patch_dim=None):
    """Hand count: per block qkv (3d^2 + 3d), proj (d^2 + d), two LayerNorms (4d), MLP at 4x
    (8d^2 + 5d) = 12d^2 + 13d; plus the final LayerNorm (2d) and the input/output maps."""
    block = 12 * dim * dim + 13 * dim
    total = depth * block + 2 * dim
    if patch_dim is not None:
        total += patch_dim * dim + dim
    return total


def test_base_config_is_vit_b_with_the_reference_predictor():
    cfg = compose_example_config("audiojepa", "base", ["task.data=/nonexistent"])
    assert (cfg.task.crop_seconds, cfg.model.input_frames, cfg.model.masking, cfg.model.target_domain) == (
        2.08, 208, "unstructured", "audio"
    )
    assert cfg.model.ema_anneal_end_step == cfg.optimization.max_update
    model = AudioJepaModel.build_model(cfg.model)
    assert model.grid == (13, 5)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    predictor = sum(p.numel() for p in model.predictor.parameters())
    # ViT-B over 16 x 16 patches: 12 x 7,087,872 + 197,376 (patch embedding) + 1,536 (final norm)
    assert encoder == vit_parameters(768, 12, patch_dim=256) == 85_253_376
    # 512 wide, 8 blocks: 8 x 3,152,384 + 1,024 (norm) + 393,728 (in) + 393,984 (out) + 512 (mask token)
    assert predictor == vit_parameters(512, 8) + (768 * 512 + 512) + (512 * 768 + 768) + 512 == 26_008_320
    # Trainable = context encoder + predictor (111.26M); the EMA target encoder is not a parameter.
    assert sum(p.numel() for p in model.parameters()) == encoder + predictor


@pytest.mark.parametrize("seconds,frames,grid", [(3.2, 320, (20, 5)), (6.4, 640, (40, 5))])
def test_the_paper_durations_are_two_overrides(seconds, frames, grid):
    overrides = ["task.data=/nonexistent", f"task.crop_seconds={seconds}", f"model.input_frames={frames}"]
    cfg = compose_example_config("audiojepa", "base", overrides)
    m = cfg.model
    frontend = LogMelPatches(m.sample_rate, m.n_mels, m.input_frames, m.patch_time, m.patch_freq)
    assert frontend.grid == grid
    crop = round(cfg.task.crop_seconds * SAMPLE_RATE)
    assert frontend.min_input_samples() <= crop  # the crop covers the input
    # every masking strategy trains on such crops (a tiny model with the same input)
    source = synthetic_batch(2, crop)
    for masking in ["unstructured", "multi_block", "time"]:
        model = tiny_model(input_frames=m.input_frames, masking=masking)
        assert model.grid == grid
        out = model(source, sample_ids=torch.arange(2))
        assert torch.isfinite(out["losses"]["jepa"]) and out["sample_size"] > 0


@pytest.mark.parametrize(
    "variant,setting",
    [("multi_block", ("masking", "multi_block")), ("time", ("masking", "time")), ("latent", ("target_domain", "latent"))],
)
def test_variant_overlays_differ_from_base_only_in_their_setting(variant, setting):
    # examples/audiojepa/variant/<variant>.yaml composed as a user runs it: --config-name base +variant=...
    # (test_example_configs.py checks every overlay on base and tiny; here the Audio-JEPA meaning)
    def compose(*overrides):
        cfg = compose_example_config("audiojepa", "base", ["task.data=/nonexistent", *overrides])
        return flat(OmegaConf.to_container(cfg))

    base, other = compose(), compose(f"+variant={variant}")
    differences = {k for k in base.keys() | other.keys() if base.get(k) != other.get(k)}
    assert differences == {f"model.{setting[0]}", "checkpoint.save_dir", "common.tensorboard_logdir"}
    assert other[f"model.{setting[0]}"] == setting[1]
    # its own run folder: a variant never resumes the base run's checkpoint_last.pt
    assert other["checkpoint.save_dir"] == f"runs/audiojepa_{variant}/checkpoints"
    assert other["common.user_dir"] == "audio_ssl_ext" and other["optimization.max_update"] == 297600


def test_a_multi_block_setting_that_cannot_work_fails_when_the_model_is_built():
    # one target block of 90-95% of the patches leaves a context of 7 patches at most
    with pytest.raises(ValueError, match="model.masking=multi_block on the 13 x 5 patch grid"):
        tiny_model(masking="multi_block", num_target_blocks=1, target_block_scale=[0.9, 0.95])


def test_training_without_sample_ids_is_refused():
    with pytest.raises(ValueError, match="sample_ids"):
        tiny_model()(synthetic_batch(2))


# --- target encoder ---------------------------------------------------------------------------


def test_target_encoder_gets_no_gradient_and_follows_the_ema_schedule():
    model = tiny_model(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=3)
    name = "patch_embed.proj.weight"
    student = dict(model.encoder.named_parameters())[name]
    teacher = dict(model.teacher.model.named_parameters())[name]
    assert not any(p.requires_grad for p in model.teacher.model.parameters())
    assert not {id(p) for p in model.teacher.model.parameters()} & {id(p) for p in model.parameters()}

    expected = student.detach().clone()  # the target encoder starts as a copy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    source, ids = synthetic_batch(2), torch.arange(2)
    for step in range(5):
        model.set_num_updates(step)
        out = model(source, sample_ids=ids)
        if step > 0:  # the student after `step` updates is absorbed with that update's decay
            decay = ema_decay_at(step, 0.9, 0.99, 3)
            expected = decay * expected + (1 - decay) * student.detach()
        assert_close(teacher, expected, atol=1e-6)
        assert out["ema_decay"] == pytest.approx(1000 * ema_decay_at(step, 0.9, 0.99, 3))
        optimizer.zero_grad()
        (out["losses"]["jepa"] / out["sample_size"]).backward()
        assert all(p.grad is None for p in model.teacher.model.parameters())
        assert student.grad is not None and student.grad.abs().sum() > 0
        optimizer.step()
        # a second micro-batch of the same update leaves the target encoder where it is
        before = teacher.clone()
        model(source, sample_ids=ids)
        assert torch.equal(teacher, before)


def targets_seen(model, patches, masks):
    """Target embeddings, and the token counts the target encoder's transformer was given."""
    shapes = []
    hook = model.teacher.model.transformer.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape))
    try:
        return model.target_embeddings(patches, masks.targets, whole_input=model.cfg.target_domain != "audio"), shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("domain", ["audio", "latent_masked"])
def test_target_domain_decides_what_the_target_encoder_sees(domain):
    model = tiny_model(target_domain=domain).eval()
    patches = model.frontend(synthetic_batch(2)).patches  # (2, 65, 256)
    targets = torch.tensor([[[0, 1, 2, 64], [10, 11, 12, 13]]] * 2)  # two groups of 4, both edges
    masks = ContextTargetMask(torch.tensor([[20, 30, 40]] * 2), targets)
    embeddings, shapes = targets_seen(model, patches, masks)
    assert embeddings.shape == (2, 2, 4, 64)
    if domain == "audio":
        assert shapes == [torch.Size([4, 4, 64])]  # each group's 4 target patches alone
    else:
        assert shapes == [torch.Size([2, 65, 64])]  # every patch

    changed = patches.clone()
    changed[:, 30] += 1.0  # a context patch, not a target
    after, _ = targets_seen(model, changed, masks)
    if domain == "audio":
        assert torch.equal(after, embeddings)  # never seen
    else:
        assert not torch.allclose(after, embeddings, atol=1e-4)
    changed = patches.clone()
    changed[:, 64] += 1.0  # a target patch (the last of the grid)
    after, _ = targets_seen(model, changed, masks)
    assert not torch.allclose(after[:, 0], embeddings[:, 0], atol=1e-4)
    if domain == "audio":
        assert torch.equal(after[:, 1], embeddings[:, 1])  # the other group never sees it

    # targets are layer-normalised per token, without affine parameters
    assert_close(embeddings.mean(-1), torch.zeros(2, 2, 4), atol=1e-5)
    assert_close(embeddings.var(-1, unbiased=False), torch.ones(2, 2, 4), atol=1e-3)


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["audio", "latent", "latent_masked"])
@pytest.mark.parametrize("masking", ["unstructured", "multi_block", "time"])
def test_training_steps_lower_the_loss_without_collapse(masking, domain):
    model = tiny_model(masking=masking, target_domain=domain, min_context_patches=4)
    losses, target_vars = train(model, synthetic_batch(), steps=20)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
    # Collapsed targets (every token alike) would have a spread near 0; layer-normalised targets
    # start near 0.7 here.
    assert min(target_vars) > 0.3, target_vars


def test_l1_loss_is_smooth_l1_with_beta_zero_and_the_sum_over_target_patches():
    model = tiny_model(smooth_l1_beta=0.0).eval()
    source, ids = synthetic_batch(2), torch.arange(2)
    masks = model.draw_masks(ids)
    out = model(source, sample_ids=ids)
    with torch.no_grad():
        patches = model.frontend(source).patches
        context = model.encoder(patches, keep=masks.context)
        prediction = model.predictor(context, masks.context, masks.targets)
        target = model.target_embeddings(patches, masks.targets, whole_input=False)
    assert out["sample_size"] == 2 * 39  # 60% of 65 patches per example
    assert_close(out["losses"]["jepa"], (prediction - target).abs().mean(-1).sum(), atol=1e-4)


def zero_prediction_loss(domain):
    """(model output, per-position loss by hand) when the predictor's output map is zero, so every
    prediction is 0: smooth L1 (beta 1) of 0 against the layer-normalised output of the target
    encoder, which in both latent domains sees every patch."""
    model = tiny_model(target_domain=domain).eval()
    torch.nn.init.zeros_(model.predictor.head.weight)
    torch.nn.init.zeros_(model.predictor.head.bias)
    source, ids = synthetic_batch(2), torch.arange(2)
    with torch.no_grad():
        out = model(source, sample_ids=ids)
        t = torch.nn.functional.layer_norm(model.teacher.model(model.frontend(source).patches), (64,))
    per_position = torch.where(t.abs() < 1, 0.5 * t.square(), t.abs() - 0.5).mean(dim=-1)  # (2, 65)
    return model, out, per_position


def test_latent_domain_predicts_and_scores_every_position():
    """The reference's latent domain (mask_targets=False): the predictor's output at all 65
    positions, context ones included, is scored against the target encoder's view of all
    patches; latent_masked (I-JEPA's) scores the 39 target positions only."""
    _, out, per_position = zero_prediction_loss("latent")
    assert out["sample_size"] == 2 * 65
    assert_close(out["losses"]["jepa"], per_position.sum(), atol=1e-3)

    model, out, per_position = zero_prediction_loss("latent_masked")
    targets = model.draw_masks(torch.arange(2)).targets[:, 0]  # (2, 39): one group, unstructured
    assert out["sample_size"] == 2 * 39
    assert_close(out["losses"]["jepa"], per_position.gather(1, targets).sum(), atol=1e-3)


def test_resume_from_a_state_dict_continues_exactly():
    source = synthetic_batch(2)
    model = tiny_model(seed=0, masking="multi_block", min_context_patches=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, source, steps=2, optimizer=optimizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "_teacher.num_updates" in state and any(k.startswith("_teacher.params.") for k in state)
    uninterrupted, _ = train(model, source, steps=2, optimizer=optimizer, first_step=2)

    resumed = tiny_model(seed=1, masking="multi_block", min_context_patches=4)  # other initial weights
    resumed.load_state_dict(state, strict=True)
    again, _ = train(resumed, source, steps=2, optimizer=torch.optim.SGD(resumed.parameters(), lr=0.1), first_step=2)
    assert again == uninterrupted


def test_masks_depend_on_seed_update_and_sample_id_only():
    model = tiny_model(masking="time")
    model.set_num_updates(7)
    a = model.draw_masks(torch.tensor([5, 9]))
    b = model.draw_masks(torch.tensor([9]))
    assert torch.equal(a.targets[1], b.targets[0]) and torch.equal(a.context[1], b.context[0])
    model.set_num_updates(8)
    assert not torch.equal(model.draw_masks(torch.tensor([9])).targets, b.targets)
    model.eval()  # validation masks do not move with the update
    valid = model.draw_masks(torch.tensor([9]))
    model.set_num_updates(9)
    assert torch.equal(model.draw_masks(torch.tensor([9])).targets, valid.targets)


# --- features -----------------------------------------------------------------------------------


def test_extract_features_gives_every_layer_per_time_step_in_training_crop_chunks():
    model = tiny_model().eval()
    model.remove_pretraining_modules()
    assert model.frame_rate == 100 / 16
    source = synthetic_batch(2, samples=5 * SAMPLE_RATE)
    padding = torch.zeros_like(source, dtype=torch.bool)
    padding[1, 3 * SAMPLE_RATE :] = True
    with torch.no_grad():
        out = model.extract_features(source, padding)
    # 5 s = 501 frames -> 3 chunks of 208 -> ceil(501 / 16) = 32 steps of 5 x 64
    assert len(out["layer_results"]) == 2
    assert all(h.shape == (2, 32, 320) for h in out["layer_results"])
    assert out["x"] is out["layer_results"][-1] and out["clip"].shape == (2, 320)
    assert out["padding_mask"][0].sum() == 0 and out["padding_mask"][1].tolist() == [False] * 19 + [True] * 13

    # one input of exactly 208 frames: time step t is the concatenation of its 5 frequency tokens
    one = synthetic_batch(1, samples=207 * 160)
    with torch.no_grad():
        out = model.extract_features(one)
        tokens = model.encoder(model.frontend(one).patches)  # (1, 65, 64), time-major
    assert out["x"].shape == (1, 13, 320)
    assert_close(out["x"][0, 4], tokens[0, 20:25].reshape(-1), atol=1e-5)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.smoke
def test_fairseq_hydra_train_tiny_lowers_the_loss_on_the_demo_corpus(demo_manifest_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: a second thread only adds contention
    _, losses = run_fairseq_hydra_train(
        os.path.join(REPO_ROOT, "examples", "audiojepa"),
        "tiny",
        [
            f"common.user_dir={os.path.join(REPO_ROOT, 'audio_ssl_ext')}",
            f"task.data={demo_manifest_dir}",
            "checkpoint.save_dir=run/checkpoints",
            "common.tensorboard_logdir=run/tb",
            "optimization.max_update=20",
        ],
        cwd=str(tmp_path),
    )
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt")


@pytest.mark.smoke
def test_fairseq_hydra_train_tiny_with_a_variant_overlay(demo_manifest_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _, losses = run_fairseq_hydra_train(
        os.path.join(REPO_ROOT, "examples", "audiojepa"),
        "tiny",
        [
            "+variant=time",
            f"common.user_dir={os.path.join(REPO_ROOT, 'audio_ssl_ext')}",
            f"task.data={demo_manifest_dir}",
            "checkpoint.save_dir=run/checkpoints",  # the overlay names the base run's folder
            "common.tensorboard_logdir=run/tb",
            "optimization.max_update=3",
        ],
        cwd=str(tmp_path),
    )
    assert len(losses) == 3
    log = (tmp_path / "run" / "checkpoints" / "hydra_train.log").read_text()
    # tiny's model with the overlay's masking (an enum: logged without quotes)
    assert "'masking': time," in log and "'encoder_embed_dim': 64," in log


def test_the_recipe_frontend_is_the_references_nnaudio_log_mel():
    """examples/audiojepa's frontend (n_fft 400, reflected centring) against the reference's own,
    nnAudio's MelSpectrogram as src/wav_to_lms.py builds it, before normalization; only the log
    floor differs (theirs log(power + 1.19e-7), ours log(max(power, 1e-6))), so compare above it."""
    from nnAudio.features import MelSpectrogram

    reference = MelSpectrogram(
        sr=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=80, fmin=50, fmax=8000,
        center=True, pad_mode="reflect", power=2.0, verbose=False,
    )
    frontend = LogMelPatches(input_frames=208, patch_time=16, n_fft=400, center_padding="reflect")
    wave = synthetic_batch(1, 20000)
    with torch.no_grad():
        theirs = (reference(wave)[0].T + torch.finfo(torch.float32).eps).log()  # (frames, mels)
        ours, _ = frontend.frames(wave)
    assert ours[0].shape == theirs.shape == (1 + 20000 // 160, 80)
    loud = theirs > math.log(1e-6) + 2
    assert loud.float().mean() > 0.9
    error = (ours[0] - theirs).abs() * loud
    # nnAudio's float32 convolution STFT rounds the weakest bins of a few frames (up to 6e-3 here).
    assert error.mean() < 1e-4 and error.max() < 1e-2, (error.mean(), error.max())
    # The clip's ends, where reflected (not zero) padding fills half of the first and last windows.
    assert error[[0, 1, -2, -1]].max() < 2e-3, error[[0, 1, -2, -1]].max()
