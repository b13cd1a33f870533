"""JOOCI: split-and-append with a stop gradient, the two phases, multi-crop, the Content start from
a HuBERT-style checkpoint, exact resume, the base size, downstream feature sets, and tiny through
fairseq-hydra-train (every loss it can lower, lowered, without collapse)."""

import glob
import os
import re
import shutil

import numpy as np
import pytest
import torch

from audio_ssl_ext.models.jooci import crop_frames
from tests.test_music_hubert import make_labels
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train, write_untrained_checkpoint

USER_DIR = os.path.join(REPO_ROOT, "audio_ssl_ext")
CONFIG_DIR = os.path.join(REPO_ROOT, "examples", "jooci")


@pytest.fixture(scope="module")
def labelled(demo_manifest_dir, tmp_path_factory):
    """The demo manifests with MFCC k=16 labels at 100 Hz (a first HuBERT iteration's)."""
    root = str(tmp_path_factory.mktemp("jooci_labels"))
    make_labels(demo_manifest_dir, root, "km", "mfcc", 16)
    return demo_manifest_dir, root


def build(labelled, overrides=()):
    from fairseq import tasks

    data, labels = labelled
    cfg = compose_example_config("jooci", "tiny", [f"task.data={data}", f"task.label_dir={labels}", *overrides])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(0)
    return cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def batch(task, size=4):
    dataset = task.datasets["train"]
    return dataset.collater([dataset[i] for i in range(size)])


def content_and_other(model):
    content = model.content_parameters()
    other = {n: p for n, p in model.named_parameters() if n not in content}
    return content, other


def test_crop_frames_takes_each_items_window():
    x = torch.arange(2 * 6).reshape(2, 6, 1).float()
    crops = crop_frames(x, torch.tensor([1, 3]), 3)
    assert crops[..., 0].tolist() == [[1, 2, 3], [9, 10, 11]]


def test_crops_are_seeded_per_sample_and_stay_inside_the_real_frames(labelled):
    _, _, model, _ = build(labelled)
    model.train()
    model.set_num_updates(5)
    frames = torch.tensor([60, 100, 51])
    a = model.crop_starts(frames, torch.tensor([3, 8, 9]), 50, 4, kind=0)
    assert a.shape == (4, 3)
    assert (a >= 0).all() and (a + 50 <= frames[None, :]).all()
    b = model.crop_starts(frames[1:], torch.tensor([8, 9]), 50, 4, kind=0)
    assert torch.equal(a[:, 1:], b)  # the batch composition does not matter
    assert not torch.equal(model.crop_starts(frames, torch.tensor([3, 8, 9]), 50, 4, kind=1), a)
    model.set_num_updates(6)
    assert not torch.equal(model.crop_starts(frames, torch.tensor([3, 8, 9]), 50, 4, kind=0), a)


def test_no_gradient_from_other_reaches_content_but_other_reads_content(labelled):
    _, task, model, _ = build(labelled, ["model.content_frozen_updates=0"])
    model.train()
    sample = batch(task)
    content, other = content_and_other(model)
    for name in ("dino", "regularizer", "grl"):
        model.zero_grad()
        out = model(target_list=sample["target_list"], sample_ids=sample["id"], **sample["net_input"])
        out[name].backward()
        reached = sorted(n for n, p in content.items() if p.grad is not None and p.grad.abs().sum() > 0)
        assert not reached, f"{name} reached Content: {reached[:3]}"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in other.values()), name

    # ... while the Other branch's output depends on the Content activations (split-and-append)
    model.eval()
    model.select_features("other")
    wav, lengths = sample["net_input"]["source"][:2], torch.tensor([sample["net_input"]["source"].size(1)] * 2)
    before = model.hidden_states(wav, lengths)
    with torch.no_grad():
        model.encoder.layers[-1].fc2.weight.mul_(1.5)
    after = model.hidden_states(wav, lengths)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # stem, block 1: Content groups 1 only
    assert not torch.allclose(before[-1], after[-1])  # the last block reads the last Content group


def test_phase_one_trains_other_alone_and_phase_two_both(labelled):
    _, task, model, criterion = build(labelled, ["model.content_frozen_updates=3"])
    model.train()
    sample = batch(task)
    content, other = content_and_other(model)
    for update, content_trains in ((0, False), (2, False), (3, True)):
        model.zero_grad()
        model.set_num_updates(update)
        loss, _, _ = criterion(model, sample)
        loss.backward()
        moved = [n for n, p in content.items() if p.grad is not None and p.grad.abs().sum() > 0]
        assert bool(moved) == content_trains, (update, moved[:3])
        if content_trains:
            assert {"feature_extractor.conv_layers.0.0.weight", "encoder.layers.2.fc2.weight", "final_proj.weight"} <= set(moved)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in other.values())


def test_content_starts_from_a_hubert_style_checkpoint_and_stays_frozen(labelled, tmp_path):
    data, labels = labelled
    musichubert = write_untrained_checkpoint(
        os.path.join(REPO_ROOT, "examples/musichubert/tiny.yaml"), str(tmp_path / "mh.pt"), seed=7,
        overrides=["model.encoder_layers=3", f"task.label_dir={labels}"],
    )
    _, task, model, criterion = build(labelled, [f"model.content_checkpoint={musichubert}", "model.content_frozen_updates=5"])
    reference = torch.load(musichubert, weights_only=False)["model"]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for update in range(3):
        model.set_num_updates(update)
        optimizer.zero_grad()
        loss, _, _ = criterion(model, batch(task))
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    for name in ("feature_extractor.conv_layers.0.0.weight", "encoder.layers.2.fc2.weight", "post_extract_proj.weight"):
        torch.testing.assert_close(state[name], reference[name], rtol=0, atol=0)
    assert bool(state["content_initialized"])


@pytest.mark.parametrize("override,message", [
    ("task.sample_rate=24000", "was trained with"),  # frames at another rate: no shape tells
    ("model.encoder_ffn_embed_dim=96", "encoder.layers.0.fc1.weight is"),
])
def test_a_content_checkpoint_of_another_front_end_or_width_is_refused(labelled, tmp_path, override, message):
    data, labels = labelled
    other = write_untrained_checkpoint(
        os.path.join(REPO_ROOT, "examples/musichubert/tiny.yaml"), str(tmp_path / "mh.pt"),
        overrides=["model.encoder_layers=3", f"task.label_dir={labels}", override],
    )
    _, task, model, criterion = build(labelled, [f"model.content_checkpoint={other}"])
    model.train()
    with pytest.raises(ValueError, match=message):
        criterion(model, batch(task))


def test_base_counts_the_papers_size(tmp_path):
    from fairseq import tasks

    for name, k in (("km100", 100), ("km500", 500)):
        (tmp_path / f"dict.{name}.txt").write_text("".join(f"{i} 1\n" for i in range(k)))
    cfg = compose_example_config("jooci", "base", [f"task.data={tmp_path}", f"task.label_dir={tmp_path}"])
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    pretraining_only = ("other.head.", "grl_decoders.", "final_proj.", "label_embs_concat")
    features = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(pretraining_only))
    # HuBERT base's front end and Content encoder (94,371,712) + the 640-wide Other encoder
    assert features == 94_371_712 + 14_610_160 == 108_981_872


def test_downstream_feature_sets(labelled, tmp_path):
    from audio_ssl_ext.downstream.load import load_model

    path = write_untrained_checkpoint(os.path.join(CONFIG_DIR, "tiny.yaml"), str(tmp_path / "j.pt"), num_label_classes=20)
    wavs, lengths = torch.randn(2, 24000) * 0.1, torch.tensor([24000, 17000])
    sets = {name: load_model(path, features=name) for name in ("content", "other", "both")}
    assert load_model(path).num_layers == sets["both"].num_layers == 4  # default: both
    out = {name: m.extract_features(wavs, lengths).hidden_states for name, m in sets.items()}
    assert [h.size(-1) for h in out["content"]] == [64] * 4 and [h.size(-1) for h in out["other"]] == [32] * 4
    for i in range(4):  # Content state i with the Other state at its depth (stem for the input)
        torch.testing.assert_close(out["both"][i], torch.cat([out["content"][i], out["other"][i]], dim=-1))
    embedding = sets["both"].utterance_embedding(wavs, lengths)
    assert embedding.shape == (2, 16)
    torch.testing.assert_close(embedding[1], sets["both"].utterance_embedding(wavs[1:, :17000])[0], atol=1e-5, rtol=1e-5)


# ---- through fairseq's trainer ----


def train_in_process(labelled, save_dir, max_update):
    from fairseq_cli.train import main

    data, labels = labelled
    cfg = compose_example_config("jooci", "tiny", [
        f"task.data={data}", f"task.label_dir={labels}", f"checkpoint.save_dir={save_dir}",
        f"common.user_dir={USER_DIR}", "common.tensorboard_logdir=null", "common.log_interval=100",
        f"optimization.max_update={max_update}", "model.content_frozen_updates=3",
        "checkpoint.save_interval_updates=1", "checkpoint.keep_interval_updates=-1", "checkpoint.save_interval=1",
        "checkpoint.no_epoch_checkpoints=false", "dataset.max_tokens=96000", "dataset.disable_validation=true",
    ])
    main(cfg)


def checkpoints_by_update(save_dir):
    from fairseq import checkpoint_utils

    states = {}
    for path in glob.glob(os.path.join(save_dir, "checkpoint*.pt")):
        if not path.endswith("checkpoint_last.pt"):
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
            states[state["optimizer_history"][-1]["num_updates"]] = (path, state["model"])
    return states


def test_resume_inside_either_phase_continues_exactly(labelled, tmp_path):
    updates = 6  # phase 1: updates 1-3, phase 2: 4-6
    straight = str(tmp_path / "straight")
    train_in_process(labelled, straight, updates)
    saved = checkpoints_by_update(straight)
    assert sorted(saved) == list(range(1, updates + 1))
    first, last = saved[1][1], saved[updates][1]
    assert torch.equal(saved[3][1]["encoder.layers.0.fc1.weight"], first["encoder.layers.0.fc1.weight"])  # frozen
    assert not torch.equal(last["encoder.layers.0.fc1.weight"], first["encoder.layers.0.fc1.weight"])
    assert not torch.equal(last["_teacher.params.encoder.stem.conv.weight"], first["_teacher.params.encoder.stem.conv.weight"])

    for stop in (2, 4):  # killed inside phase 1, inside phase 2
        resumed = str(tmp_path / f"resumed_{stop}")
        os.makedirs(resumed)
        shutil.copy(saved[stop][0], os.path.join(resumed, "checkpoint_last.pt"))
        train_in_process(labelled, resumed, updates)
        from fairseq import checkpoint_utils

        actual = checkpoint_utils.load_checkpoint_to_cpu(os.path.join(resumed, "checkpoint_last.pt"))["model"]
        assert sorted(actual) == sorted(last)
        for name in last:  # the teacher, its centre and the BatchNorm statistics included
            torch.testing.assert_close(actual[name], last[name], rtol=0, atol=1e-6, msg=f"stop {stop}: {name}")


# ---- the command line ----


def logged(log, key):
    return [float(v) for v in re.findall(rf"\[train_inner\].*? {key}=([-0-9.e]+)", log)]


@pytest.mark.smoke
def test_fairseq_hydra_train_tiny_lowers_its_losses_without_collapse(labelled, tmp_path):
    data, labels = labelled
    proc, _ = run_fairseq_hydra_train(CONFIG_DIR, "tiny", [
        f"task.data={data}", f"task.label_dir={labels}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
        "common.tensorboard_logdir=null",
    ], cwd=REPO_ROOT)
    log = proc.stdout + proc.stderr
    content, dino = logged(log, "loss_m_0"), logged(log, "loss_dino")
    information, spread = logged(log, "teacher_information"), logged(log, "embed_std")
    assert len(content) == len(dino) == 100
    # Content: phase 1 (updates 1-10) frozen, then masked prediction improves
    assert np.mean(content[-20:]) < np.mean(content[10:20]) - 0.3, content
    # Other: the DINO loss falls once the centre has caught up (its first updates are the
    # trivial agreement of a fresh student and teacher), and the teacher's outputs keep
    # telling inputs apart (the collapse guard is on from update 50)
    assert np.mean(dino[-20:]) < np.mean(dino[15:35]) - 0.3, dino
    assert min(information[50:]) > 0.1 and min(spread) > 0.1, (information, spread)
    # the regularizers' unweighted value (the logged loss carries the ramped weight)
    diversity = logged(log, "diversity")
    assert np.mean(diversity[-20:]) < np.mean(diversity[:20]), diversity
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint_last.pt")
