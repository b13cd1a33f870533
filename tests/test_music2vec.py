"""music2vec: targets, loss, masks, collapse guards, base size, exact resume, a tiny training run."""

import glob
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audio_ssl_ext.models.music2vec import Music2VecConfig, Music2VecModel
from audio_ssl_ext.modules.collapse import CollapseError
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train

CONFIG_DIR = os.path.join(REPO_ROOT, "examples", "music2vec")
USER_DIR = os.path.join(REPO_ROOT, "audio_ssl_ext")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # test processes share two cores: one thread each is several times faster than contention
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides) -> Music2VecConfig:
    fields = dict(
        seed=1,
        conv_feature_layers="[(16, 10, 5), (16, 8, 4)]",
        encoder_layers=3,
        encoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        encoder_attention_heads=2,
        conv_pos=8,
        pos_conv_depth=2,
        conv_pos_groups=2,
        average_top_k_layers=2,
        mask_length=3,
        dropout=0.0,
        attention_dropout=0.0,
        encoder_layerdrop=0.0,
        ema_decay=0.5,
        ema_end_decay=0.5,
        ema_anneal_end_step=0,
    )
    fields.update(overrides)
    return Music2VecConfig(**fields)


def model_with_distinct_teacher(cfg: Music2VecConfig) -> Music2VecModel:
    """A model whose teacher differs from its student (as after some training)."""
    torch.manual_seed(0)
    model = Music2VecModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.teacher.update(model.encoder, 1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.set_num_updates(1)
    return model.eval()


# ---- targets and loss against hand-written maths ----


def reference_layer(x, layer):
    """One post-LN wav2vec 2.0 layer written out; returns (output, FFN output before residual)."""
    attn = layer.self_attn
    B, T, C = x.shape
    H, d = attn.num_heads, C // attn.num_heads

    def heads(t):
        return t.view(B, T, H, d).transpose(1, 2)

    q = heads(F.linear(x, attn.q_proj.weight, attn.q_proj.bias)) / math.sqrt(d)
    k = heads(F.linear(x, attn.k_proj.weight, attn.k_proj.bias))
    v = heads(F.linear(x, attn.v_proj.weight, attn.v_proj.bias))
    context = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    context = F.linear(context.transpose(1, 2).reshape(B, T, C), attn.out_proj.weight, attn.out_proj.bias)
    x = layer.self_attn_layer_norm(x + context)
    ffn = F.linear(F.gelu(F.linear(x, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)
    return layer.final_layer_norm(x + ffn), ffn


def reference_targets(teacher, features, top_k):
    x = features + teacher.pos_conv(features.transpose(1, 2)).transpose(1, 2)
    x = teacher.layer_norm(x)
    ffn_outputs = []
    for layer in teacher.layers:
        x, ffn = reference_layer(x, layer)
        ffn_outputs.append(ffn)
    normed = []
    for y in ffn_outputs[-top_k:]:
        mean = y.mean(dim=1, keepdim=True)
        var = y.var(dim=1, unbiased=False, keepdim=True)
        normed.append((y - mean) / torch.sqrt(var + 1e-5))  # instance norm over time
    return sum(normed) / top_k


@torch.no_grad()
def test_targets_and_loss_equal_hand_written_reference():
    model = model_with_distinct_teacher(small_config())
    source = torch.randn(2, 4000)
    features, _ = model.local_features(source, None)

    targets = model.teacher_targets(source, None, features, None)
    expected = reference_targets(model.teacher.model, features, top_k=2)
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-5)
    # the student's own layers would give other targets: the teacher is really used
    assert not torch.allclose(reference_targets(model.encoder, features, 2), expected, atol=1e-3)

    mask = torch.zeros(2, features.size(1), dtype=torch.bool)
    mask[0, 3:9] = mask[1, 20:26] = True
    out = model(source, mask_indices=mask)
    student = model(source, mask_indices=mask, features_only=True)["x"]
    prediction = model.final_proj(student[mask])
    loss = ((prediction - expected[mask]) ** 2).sum() / math.sqrt(16)
    torch.testing.assert_close(out["losses"]["regression"], loss, rtol=1e-4, atol=1e-5)
    assert out["sample_size"] == 12


@torch.no_grad()
def test_smooth_l1_loss_and_explicit_scale():
    cfg = small_config(loss_beta=0.25, loss_scale=2.0)
    model = model_with_distinct_teacher(cfg)
    source = torch.randn(2, 4000)
    features, _ = model.local_features(source, None)
    mask = torch.zeros(2, features.size(1), dtype=torch.bool)
    mask[:, 5:15] = True
    out = model(source, mask_indices=mask)
    prediction = model.final_proj(model(source, mask_indices=mask, features_only=True)["x"][mask])
    target = model.teacher_targets(source, None, features, None)[mask]
    diff = (prediction - target).abs()
    smooth_l1 = torch.where(diff < 0.25, 0.5 * diff**2 / 0.25, diff - 0.125)
    torch.testing.assert_close(out["losses"]["regression"], 2.0 * smooth_l1.sum(), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_loss_equals_fairseq_data2vec_audio():
    """Same weights, same masks: fairseq's own data2vec_audio computes the same loss."""
    from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel

    cfg = small_config()
    model = model_with_distinct_teacher(cfg)
    reference = Data2VecAudioModel(
        Data2VecAudioConfig(
            **{k: getattr(cfg, k) for k in (
                "conv_feature_layers", "extractor_mode", "encoder_layers", "encoder_embed_dim",
                "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos", "pos_conv_depth",
                "conv_pos_groups", "average_top_k_layers", "dropout", "attention_dropout",
                "encoder_layerdrop", "instance_norm_target_layer", "ema_decay", "ema_end_decay")},
            ema_anneal_end_step=1000,
            max_update=1000,
        )
    )
    reference.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("_teacher.")}
    )
    reference.set_num_updates(0)  # builds its EMA teacher
    teacher_state = {k[len("params."):]: v for k, v in model.teacher.state_dict().items() if k != "num_updates"}
    reference.ema.restore(teacher_state, build_fp32_params=True)
    reference.eval()

    source = torch.randn(2, 4000)
    mask = torch.zeros(2, model.local_features(source, None)[0].size(1), dtype=torch.bool)
    mask[0, 2:12] = mask[1, 30:40] = True
    ours, theirs = model(source, mask_indices=mask), reference(source, mask_indices=mask)
    torch.testing.assert_close(ours["losses"]["regression"], theirs["losses"]["regression"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["target_var"], theirs["target_var"], rtol=1e-5, atol=1e-6)


# ---- masks, ids, guards ----


def test_masks_are_a_function_of_seed_update_and_sample_ids():
    model = Music2VecModel(small_config(mask_length=5))
    ids = torch.tensor([7, 3, 11])
    state = np.random.get_state()[1].copy()
    model.set_num_updates(4)
    first = model.time_masks(None, (3, 100), ids)
    assert torch.equal(first, model.time_masks(None, (3, 100), ids))
    assert first.sum(1).min() > 0 and torch.equal(first.sum(1), first.sum(1)[:1].expand(3))  # same count
    model.set_num_updates(5)
    assert not torch.equal(first, model.time_masks(None, (3, 100), ids))
    model.set_num_updates(4)
    assert not torch.equal(first, model.time_masks(None, (3, 100), torch.tensor([8, 3, 11])))
    assert np.array_equal(state, np.random.get_state()[1])  # the global generator is left alone


def test_training_without_sample_ids_is_refused():
    model = Music2VecModel(small_config()).train()
    with pytest.raises(ValueError, match="model_with_sample_ids"):
        model(torch.randn(2, 4000))


def test_training_forward_leaves_global_numpy_state_alone():
    model = Music2VecModel(small_config(encoder_layerdrop=0.5)).train()
    state = np.random.get_state()[1].copy()
    model(torch.randn(2, 4000), sample_ids=torch.tensor([0, 1]))
    assert np.array_equal(state, np.random.get_state()[1])


def test_collapse_guard_stops_after_the_configured_update():
    model = Music2VecModel(small_config(min_target_var=100.0, min_var_after_updates=3)).train()
    source, ids = torch.randn(2, 4000), torch.tensor([0, 1])
    model.set_num_updates(2)
    model(source, sample_ids=ids)  # before the start: no check
    model.set_num_updates(3)
    with pytest.raises(CollapseError, match=r"update 3: target std .* < model.min_target_var=100.0"):
        model(source, sample_ids=ids)

    model = Music2VecModel(small_config(min_pred_var=100.0, min_var_after_updates=0)).train()
    with pytest.raises(CollapseError, match="prediction std"):
        model(source, sample_ids=ids)


def test_teacher_state_is_in_the_checkpoint_and_required():
    model = model_with_distinct_teacher(small_config())
    state = model.state_dict()
    assert int(state["_teacher.num_updates"]) == 1
    assert state["_teacher.params.layers.0.fc1.weight"].dtype == torch.float32

    restored = Music2VecModel(small_config())
    restored.load_state_dict(state)
    for (name, a), b in zip(model.teacher.model.state_dict().items(), restored.teacher.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert restored.teacher.num_updates == 1

    without_teacher = {k: v for k, v in state.items() if not k.startswith("_teacher.")}
    with pytest.raises(RuntimeError, match="EMA teacher"):
        Music2VecModel(small_config()).load_state_dict(without_teacher)


def test_whole_model_teacher_sees_the_waveform():
    cfg = small_config(ema_transformer_only=False, ema_layers_only=False)
    model = model_with_distinct_teacher(cfg)
    assert model.teacher.model.teacher is None  # the copy carries no teacher of its own
    out = model(torch.randn(2, 4000), sample_ids=torch.tensor([0, 1]))
    assert torch.isfinite(out["losses"]["regression"])
    with pytest.raises(ValueError, match="ema_transformer_only"):
        Music2VecModel(small_config(ema_transformer_only=False, ema_layers_only=True))


# ---- configs ----


def test_base_config_is_the_95m_data2vec_base_architecture():
    cfg = compose_example_config("music2vec", "base", ["task.data=unused"])
    assert (cfg.model.mask_prob, cfg.model.mask_length, cfg.model.average_top_k_layers) == (0.65, 10, 8)
    assert (cfg.model.ema_decay, cfg.model.ema_end_decay, cfg.model.ema_anneal_end_step) == (0.999, 0.9999, 30000)
    assert cfg.optimization.max_update == 400000 and cfg.task.sample_rate == 16000
    assert cfg.criterion._name == "model_with_sample_ids"
    model = Music2VecModel.build_model(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    # music2vec-v1 is released as "95M". Reference: fairseq's data2vec_audio built from its
    # base_librispeech.yaml has 93,754,880 parameters (93,164,288 without the regression head);
    # test_loss_equals_fairseq_data2vec_audio checks that both models have the same tensors.
    assert count == 93_754_880
    assert abs(count - 95e6) / 95e6 < 0.02
    assert sum(p.numel() for p in model.teacher.model.parameters()) == sum(
        p.numel() for p in model.encoder.parameters()
    )
    assert all(not p.requires_grad for p in model.teacher.model.parameters())


# ---- training through fairseq's trainer ----


def train_in_process(corpus, save_dir, max_update, update_freq):
    from fairseq_cli.train import main

    cfg = compose_example_config(
        "music2vec",
        "tiny",
        [
            f"task.data={corpus}",
            f"checkpoint.save_dir={save_dir}",
            f"common.user_dir={USER_DIR}",
            "common.tensorboard_logdir=null",
            "common.log_interval=100",
            f"optimization.max_update={max_update}",
            f"optimization.update_freq=[{update_freq}]",
            "lr_scheduler.phase_ratio=[0.3,0.4,0.3]",
            "checkpoint.save_interval_updates=1",
            "checkpoint.keep_interval_updates=-1",
            "checkpoint.save_interval=1",  # with the next two: a checkpoint after every update
            "checkpoint.no_epoch_checkpoints=false",
            "dataset.max_tokens=48000",  # demo corpus: 3 crops of 1 s a batch, 4 batches an epoch
            "dataset.disable_validation=true",
        ],
    )
    main(cfg)


def load_checkpoint(path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(path)


def checkpoints_by_update(save_dir):
    """{update: model state} of every checkpoint a run saved (by updates and at epoch ends)."""
    states = {}
    for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt")):
        if not path.endswith("checkpoint_last.pt"):
            state = load_checkpoint(path)
            states[state["optimizer_history"][-1]["num_updates"]] = (path, state["model"])
    return states


@pytest.mark.parametrize("update_freq", [1, 2])
def test_resume_continues_exactly_and_teacher_moves_once_per_update(demo_manifest_dir, tmp_path, update_freq):
    # 6 updates; the stop after 3 falls inside an epoch, and the runs cross epoch boundaries after it
    updates = 6
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_in_process(demo_manifest_dir, straight, updates, update_freq)

    saved = checkpoints_by_update(straight)
    assert sorted(saved) == list(range(1, updates + 1))

    # a run killed after half the updates leaves exactly the checkpoint written at that update
    os.makedirs(resumed)
    shutil.copy(saved[updates // 2][0], os.path.join(resumed, "checkpoint_last.pt"))
    train_in_process(demo_manifest_dir, resumed, updates, update_freq)

    expected = saved[updates][1]
    actual = load_checkpoint(os.path.join(resumed, "checkpoint_last.pt"))["model"]
    assert sorted(expected) == sorted(actual)
    assert int(actual["_teacher.num_updates"]) == updates - 1
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)

    # with the real trainer (update_freq micro-batches per update), the teacher of update k+1
    # is d(k) * teacher(k) + (1 - d(k)) * student(k): one EMA step per optimizer update
    for k in range(1, updates):
        before, after = saved[k][1], saved[k + 1][1]
        assert int(before["_teacher.num_updates"]) == k - 1 and int(after["_teacher.num_updates"]) == k
        decay = 0.99 + (0.999 - 0.99) * min(k / 30, 1.0)  # tiny.yaml's schedule
        for name in ("layers.0.self_attn.k_proj.weight", "layers.1.fc2.weight", "layer_norm.bias"):
            teacher, student = before[f"_teacher.params.{name}"], before[f"encoder.{name}"]
            moved = after[f"_teacher.params.{name}"] - teacher
            # (a second step in the same update would move it (1 - d^2) / (1 - d) ~ 2x as far)
            error = (moved - (1 - decay) * (student - teacher)).norm() / ((1 - decay) * (student - teacher)).norm()
            assert error < 0.1, (name, k, float(error))
        # the positional convs are copied from the student (ema_layers_only)
        assert torch.equal(after["_teacher.params.pos_conv.0.0.weight"], before["encoder.pos_conv.0.0.weight"])


# ---- the command line ----


def target_stds(log):
    return [float(v) for v in re.findall(r"\[train_inner\].*? target_var=([0-9.]+)", log)]


@pytest.mark.smoke
def test_fairseq_hydra_train_tiny_lowers_the_loss_without_collapse(demo_manifest_dir, tmp_path):
    save_dir = tmp_path / "checkpoints"
    proc, losses = run_fairseq_hydra_train(
        CONFIG_DIR,
        "tiny",
        [f"task.data={demo_manifest_dir}", f"checkpoint.save_dir={save_dir}",
         "common.tensorboard_logdir=null", "optimization.max_update=16"],
        cwd=REPO_ROOT,
    )
    stds = target_stds(proc.stdout + proc.stderr)
    assert len(losses) == len(stds) == 16
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.75 * first, losses
    # a falling loss alone can be collapse: the targets keep their spread (tiny: floor 0.1)
    assert min(stds) > 0.1, stds
    assert (save_dir / "checkpoint_last.pt").exists()
