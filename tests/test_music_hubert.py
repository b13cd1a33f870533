"""music_hubert: fairseq's HuBERT with several label sets and their weights, MERT's CQT loss,
seeded masks, the 16 kHz / 24 kHz front ends, and the configs."""

import os

import numpy as np
import pytest
import torch

from audio_ssl_ext.clustering.dump import FrontendFeatures, dump_features
from audio_ssl_ext.clustering.kmeans import learn_kmeans
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans, write_dictionary
from audio_ssl_ext.clustering.shards import read_shards, sample_rows
from tests.test_clustering import write_tones
from tests.utils import compose_example_config, run_fairseq_hydra_train

SR = 16000


def make_labels(manifest_dir, label_dir, name, feature, n_clusters, splits=("train", "valid"), frame_rate=100):
    """Pseudo-labels of a manifest dir with our own pipeline (feature -> k-means -> label files)."""
    feat_dir = os.path.join(label_dir, f"features_{name}")
    source = FrontendFeatures(feature, SR, frame_rate)
    for split in splits:
        dump_features(os.path.join(manifest_dir, f"{split}.tsv"), split, source, feat_dir, progress=False)
    model = learn_kmeans(sample_rows(read_shards(feat_dir, "train", 1)), n_clusters, seed=0)
    km = os.path.join(label_dir, f"{name}.npy")
    model.save(km)
    for split in splits:
        apply_kmeans(feat_dir, split, 1, km, label_dir, name, os.path.join(manifest_dir, f"{split}.tsv"), progress=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Tones (4 train, 2 valid clips of 2 s) with MFCC k=16 and chroma k=8 labels at 100 Hz."""
    root = str(tmp_path_factory.mktemp("mh"))
    write_tones(root, [2.0, 2.1, 2.2, 2.0], "train")
    write_tones(root, [2.0, 2.0], "valid")
    make_labels(root, root, "mfcc", "mfcc", 16)
    make_labels(root, root, "chroma", "chroma", 8)
    return root


def build(root, overrides=()):
    from fairseq import tasks

    cfg = compose_example_config(
        "musichubert", "tiny", [f"task.data={root}", f"task.label_dir={root}", "task.max_sample_size=16000", *overrides]
    )
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(0)
    return cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def fixed_batch(task):
    dataset = task.datasets["train"]
    return dataset.collater([dataset[i] for i in range(len(dataset))])


def train_steps(model, criterion, batch, steps=15, lr=3e-3):
    """Adam steps on one batch (masks fixed: same seed, update and ids); per-step logs.

    One thread: a 2-layer, 64-wide model gains nothing from intra-op threads, and on a shared
    machine two spinning OpenMP threads made these steps ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    logs = []
    try:
        for _ in range(steps):
            loss, sample_size, log = criterion(model, batch)
            optimizer.zero_grad()
            (loss / sample_size).backward()
            optimizer.step()
            logs.append({k: v / sample_size if k.startswith("loss") else v for k, v in log.items()})
    finally:
        torch.set_num_threads(threads)
    return logs


def masked_accuracy(log, i):
    return log[f"correct_m_{i}"] / log[f"count_m_{i}"]


@pytest.mark.parametrize(
    "overrides, label_sets, with_cqt",
    [
        (["task.labels=[mfcc]"], 1, False),
        (["task.labels=[mfcc,chroma]", "criterion.label_weights=[1.0,0.5]"], 2, False),
        (["task.labels=[mfcc,chroma]", "model.audio_cqt_loss_m=true", "criterion.loss_weights=[10,1]"], 2, True),
    ],
    ids=["one-label-set", "two-label-sets", "two-sets-and-cqt"],
)
def test_training_steps_lower_the_loss_and_raise_masked_accuracy(labelled, overrides, label_sets, with_cqt):
    cfg, task, model, criterion = build(labelled, overrides)
    batch = fixed_batch(task)
    assert len(batch["target_list"]) == label_sets
    logs = train_steps(model, criterion, batch)
    first, last = logs[0], logs[-1]
    assert last["loss"] < 0.6 * first["loss"]
    for i in range(label_sets):
        assert last[f"loss_m_{i}"] < first[f"loss_m_{i}"]
        assert masked_accuracy(last, i) > masked_accuracy(first, i) + 0.2
    if with_cqt:
        assert "loss_cqt" in first and last["loss_cqt"] < first["loss_cqt"]
    else:
        assert "loss_cqt" not in first


def test_label_weights_weight_each_sets_loss(labelled):
    overrides = ["task.labels=[mfcc,chroma]", "criterion.label_weights=[1.0,0.25]", "criterion.loss_weights=[0]"]
    cfg, task, model, criterion = build(labelled, overrides)
    model.train()
    loss, sample_size, log = criterion(model, fixed_batch(task))
    # the logged per-set losses are unweighted; the total is their weighted sum
    assert loss.item() == pytest.approx(1.0 * log["loss_m_0"] + 0.25 * log["loss_m_1"], rel=1e-5)
    assert sample_size == log["count_m_0"] == log["count_m_1"]


def test_criterion_and_model_refuse_what_would_silently_go_wrong(labelled):
    with pytest.raises(ValueError, match=r"label_weights=\[1.0\] has 1 weights for the 2 label sets"):
        build(labelled, ["task.labels=[mfcc,chroma]", "criterion.label_weights=[1.0]"])
    # fairseq would stretch the single weight meant for features_pen onto the CQT loss
    cfg, task, model, criterion = build(labelled, ["task.labels=[mfcc]", "model.audio_cqt_loss_m=true"])
    model.train()
    with pytest.raises(ValueError, match=r"loss_weights=\[10.0\] has 1 weights for the model's 2 extra losses"):
        criterion(model, fixed_batch(task))
    batch = fixed_batch(task)
    with pytest.raises(ValueError, match="criterion._name=music_hubert"):
        model(target_list=batch["target_list"], **batch["net_input"])  # fairseq's hubert criterion: no ids


def test_masks_are_a_function_of_seed_update_and_sample_ids(labelled):
    cfg, task, model, criterion = build(labelled, ["task.labels=[mfcc]"])
    shape, ids = (3, 100), torch.tensor([4, 9, 2])
    state = np.random.get_state()
    first = model.time_mask(shape, None, ids)
    again = model.time_mask(shape, None, ids)
    np.testing.assert_array_equal(first, again)
    assert first.sum() > 0
    model.set_num_updates(1)
    assert (model.time_mask(shape, None, ids) != first).any()
    model.set_num_updates(0)
    swapped = model.time_mask(shape, None, torch.tensor([9, 4, 2]))
    np.testing.assert_array_equal(swapped[0], first[1])  # a sample's mask follows its id, not its row
    assert np.array_equal(np.random.get_state()[1], state[1])  # global numpy state untouched


def test_24khz_front_end_gives_75hz_frames_and_cqt_at_that_rate(labelled, tmp_path):
    from fairseq import tasks

    write_dictionary(str(tmp_path), "km", 10)
    cfg = compose_example_config(
        "musichubert",
        "tiny",
        [f"task.data={labelled}", f"task.label_dir={tmp_path}", "task.sample_rate=24000", "task.label_rate=75",
         "model.audio_cqt_loss_m=true", "criterion.loss_weights=[10,1]"],
    )
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    assert model.frame_rate == 75 and model.cqt.hop_length == 320
    source = torch.randn(2, 24000) * 0.1
    targets = [torch.randint(4, 14, (2, 75))]  # dictionary indices of the 10 cluster ids
    model.train()
    out = model(source, targets, torch.zeros(2, 24000, dtype=torch.bool), sample_ids=torch.tensor([0, 1]))
    features, _ = model.extract_features(source, torch.zeros(2, 24000, dtype=torch.bool))
    assert features.shape[1] == 74  # conv frames of 1 s at 24 kHz: 75 Hz
    assert torch.isfinite(out["cqt"]) and out["cqt"] > 0


def test_base_config_is_hubert_base_with_95m_parameters(labelled, tmp_path):
    from fairseq import tasks

    write_dictionary(str(tmp_path), "km", 500)
    cfg = compose_example_config("musichubert", "base", [f"task.data={labelled}", f"task.label_dir={tmp_path}"])
    assert (cfg.model.encoder_layers, cfg.model.encoder_embed_dim, cfg.model.mask_prob, cfg.model.mask_length) == (12, 768, 0.8, 10)
    assert (cfg.optimization.max_update, cfg.optimization.lr[0], cfg.lr_scheduler._name) == (400000, 0.0005, "polynomial_decay")
    assert cfg.criterion._name == "music_hubert" and cfg.task.label_rate == 50
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    parameters = sum(p.numel() for p in model.parameters())
    assert 94e6 < parameters < 96e6, parameters
    assert model.frame_rate == 50


@pytest.mark.smoke
def test_fairseq_hydra_train_tiny_with_two_label_sets_and_the_cqt_loss(demo_manifest_dir, tmp_path):
    label_dir = str(tmp_path / "labels")
    make_labels(demo_manifest_dir, label_dir, "mfcc", "mfcc", 20)
    make_labels(demo_manifest_dir, label_dir, "chroma", "chroma", 12)
    save_dir = tmp_path / "checkpoints"
    proc, losses = run_fairseq_hydra_train(
        os.path.join("examples", "musichubert"),
        "tiny",
        [
            f"task.data={demo_manifest_dir}",
            f"task.label_dir={label_dir}",
            "task.labels=[mfcc,chroma]",
            "criterion.label_weights=[1.0,0.5]",
            "model.audio_cqt_loss_m=true",
            "criterion.loss_weights=[10,1]",
            "optimization.max_update=12",
            f"checkpoint.save_dir={save_dir}",
            f"common.tensorboard_logdir={tmp_path / 'tb'}",
        ],
    )
    log = proc.stdout + proc.stderr
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert "loss_m_1" in log and "loss_cqt" in log
    assert (save_dir / "checkpoint_last.pt").exists()
