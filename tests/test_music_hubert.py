"""music_hubert: fairseq's HuBERT with several label sets and their weights, MERT's CQT loss and
in-batch noise mixture, seeded masks, the 16 kHz / 24 kHz front ends, and the configs (base, tiny,
MERT's recipe as the overlay variant/mert.yaml)."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl_ext.clustering.dump import FrontendFeatures, dump_features
from audio_ssl_ext.clustering.kmeans import learn_kmeans
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans, write_dictionary
from audio_ssl_ext.clustering.shards import read_shards, sample_rows
from audio_ssl_ext.data.make_manifest import ManifestOptions, build_manifests
from audio_ssl_ext.data.manifest import write_manifest
from audio_ssl_ext.models.music_hubert import NoiseSegment, draw_noise_segments, mix_noise_segments
from audio_ssl_ext.modules.masking import seeded_generator
from audio_ssl_ext.tools.demo_corpus import make_demo_corpus
from tests.test_clustering import write_tones
from tests.utils import compose_example_config, run_fairseq_hydra_train

SR = 16000


def make_labels(
    manifest_dir, label_dir, name, feature, n_clusters, splits=("train", "valid"), frame_rate=100, sample_rate=SR
):
    """Pseudo-labels of a manifest dir with our own pipeline (feature -> k-means -> label files)."""
    feat_dir = os.path.join(label_dir, f"features_{name}")
    source = FrontendFeatures(feature, sample_rate, frame_rate)
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


@pytest.fixture(scope="module")
def labelled_24k(tmp_path_factory):
    """Tones at 24 kHz (4 train clips of 2.5 s, 2 valid) with MFCC k=16 labels at 75 Hz: MERT's rates."""
    root = str(tmp_path_factory.mktemp("mh24"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("valid", 2)):
        names = []
        for i in range(count):
            t = np.arange(60000) / 24000
            wave = 0.3 * np.sin(2 * np.pi * 110 * 2 ** (rng.integers(0, 36) / 12) * t) + 0.01 * rng.normal(size=t.size)
            names.append(f"{split}_{i}.wav")
            sf.write(os.path.join(root, names[-1]), wave.astype(np.float32), 24000)
        write_manifest(os.path.join(root, f"{split}.tsv"), root, names, [60000] * count)
    make_labels(root, root, "mfcc", "mfcc", 16, frame_rate=75, sample_rate=24000)
    return root


# MERT's recipe (variant/mert.yaml) on tiny, with tiny's crops (task.max_sample_size: build's crop)
MERT_ON_TINY = [
    "+variant=mert",
    "task.labels=[mfcc]",
    "task.min_sample_size=24000",
]


def build(root, overrides=(), crop=16000):
    from fairseq import tasks

    cfg = compose_example_config(
        "musichubert", "tiny", [f"task.data={root}", f"task.label_dir={root}", f"task.max_sample_size={crop}", *overrides]
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


# --- MERT: the in-batch noise mixture, the CQT target, the recipe --------------------------------


def test_noise_segments_come_from_the_other_items_at_the_volume():
    # items 100+j, 200+j, 300+j (the last 8 samples long, then padding)
    source = torch.stack([100 + torch.arange(10.0), 200 + torch.arange(10.0), torch.zeros(10)])
    source[2, :8] = 300 + torch.arange(8.0)
    before = source.clone()
    segments = [
        [],
        [NoiseSegment(pool_start=8, length=4, position=3)],  # pool: item 0 (10) then item 2 (8)
        [NoiseSegment(pool_start=17, length=2, position=6)],  # pool: item 0 then item 1
    ]
    mixed = mix_noise_segments(source, [10, 10, 8], segments, volume=0.5)
    expected = before.clone()
    expected[1, 3:7] += 0.5 * torch.tensor([108.0, 109.0, 300.0, 301.0])  # spans items 0 and 2, skips item 1
    expected[2, 6:8] += 0.5 * torch.tensor([207.0, 208.0])
    assert torch.equal(mixed, expected)
    assert torch.equal(source, before)  # a copy: the batch itself is left alone


def test_noise_segment_draws_follow_merts_ranges_and_the_probability():
    def draw(seed, prob=1.0, item=30000, pool=90000):
        return draw_noise_segments(item, pool, prob, [12000, 24000], [1, 3], seeded_generator(seed))

    drawn = [draw(seed) for seed in range(200)]
    assert {len(d) for d in drawn} == {1, 2, 3}
    for segment in (s for d in drawn for s in d):
        assert 12000 <= segment.length <= 24000
        assert 0 <= segment.pool_start <= 90000 - 24000
        assert 0 <= segment.position <= 30000 - segment.length
    assert draw(7) == draw(7) and draw(7) != draw(8)  # seeded: the same generator seed, the same draw
    assert all(draw(seed, prob=0.0) == [] for seed in range(200))
    mixed = np.mean([bool(draw(seed, prob=0.5)) for seed in range(400)])
    assert 0.42 < mixed < 0.58, mixed
    # too short to hold the longest segment: the item, or the rest of the batch
    assert draw(0, item=23999) == [] and draw(0, pool=23999) == []


def test_mixture_is_seeded_training_only_and_leaves_the_batch_alone(labelled_24k):
    cfg, task, model, criterion = build(labelled_24k, [*MERT_ON_TINY, "model.mixture_prob=1.0"], crop=48000)
    batch = fixed_batch(task)
    source, ids = batch["net_input"]["source"], batch["id"]
    model.train()
    first, fraction = model.noise_mixture(source, None, ids)
    again, _ = model.noise_mixture(source, None, ids)
    assert fraction == 1.0 and torch.equal(first, again)
    assert ((first - source).abs().sum(-1) > 0).all()  # every item mixed
    model.set_num_updates(1)
    assert not torch.equal(model.noise_mixture(source, None, ids)[0], first)
    before = source.clone()
    out = model(target_list=batch["target_list"], sample_ids=ids, **batch["net_input"])
    assert out["mixed_fraction"] == 1.0 and torch.equal(source, before)
    model.eval()
    assert "mixed_fraction" not in model(target_list=batch["target_list"], sample_ids=ids, **batch["net_input"])


def test_cqt_loss_regresses_the_clean_audios_cqt_with_merts_weight(labelled_24k):
    overrides = [*MERT_ON_TINY, "model.mixture_prob=1.0", "criterion.loss_weights=[0,2]"]
    cfg, task, model, criterion = build(labelled_24k, overrides, crop=48000)
    batch = fixed_batch(task)
    source, ids = batch["net_input"]["source"], batch["id"]
    assert not batch["net_input"]["padding_mask"].any()
    with torch.no_grad():  # a zero head predicts 0: the loss is the mean square of the target
        model.cqt_head.weight.zero_()
        model.cqt_head.bias.zero_()
    model.train()
    out = model(target_list=batch["target_list"], sample_ids=ids, **batch["net_input"])
    frames = model.num_frames(source.size(1))
    masked = torch.from_numpy(model.time_mask((source.size(0), frames), None, ids))

    def mean_square_cqt(audio):
        return model.cqt(audio)[:, :frames][masked].square().mean()

    assert out["cqt"].item() == pytest.approx(mean_square_cqt(source).item(), rel=1e-5)
    mixed, _ = model.noise_mixture(source, None, ids)
    assert abs(mean_square_cqt(mixed).item() - out["cqt"].item()) > 0.01 * out["cqt"].item()
    # criterion.loss_weights=[features_pen, cqt]: the CQT loss enters as weight x mean x sample size
    loss, sample_size, log = criterion(model, batch)
    assert log["loss_cqt"] == pytest.approx(2 * out["cqt"].item() * sample_size, rel=1e-5)
    assert loss.item() == pytest.approx(log["loss_m_0"] + log["loss_cqt"], rel=1e-5)


def test_settings_that_cannot_work_are_refused(labelled_24k):
    with pytest.raises(ValueError, match=r"task.max_sample_size=16000 crops are shorter than the longest noise"):
        build(labelled_24k, MERT_ON_TINY, crop=16000)
    with pytest.raises(ValueError, match=r"model.mixture_prob=-1.0 must be in \[0, 1\]"):
        build(labelled_24k, [*MERT_ON_TINY, "model.mixture_prob=-1"], crop=48000)  # MERT's "off"
    with pytest.raises(ValueError, match=r"inbatch_noise_augment_number_range=\[3\] must be two numbers"):
        build(labelled_24k, [*MERT_ON_TINY, "model.inbatch_noise_augment_number_range=[3]"], crop=48000)
    from fairseq import tasks

    overrides = [f"task.data={labelled_24k}", f"task.label_dir={labelled_24k}", *MERT_ON_TINY, "task.label_rate=100"]
    cfg = compose_example_config("musichubert", "tiny", [*overrides, "task.max_sample_size=48000"])
    with pytest.raises(ValueError, match=r"model.label_rate=75.0 differs from task.label_rate=100.0"):
        tasks.setup_task(cfg.task).build_model(cfg.model)  # the overlay sets model.label_rate as MERT does


def test_mert_overlay_on_tiny_trains(labelled_24k):
    cfg, task, model, criterion = build(labelled_24k, MERT_ON_TINY, crop=48000)
    batch = fixed_batch(task)
    assert model.frame_rate == 75 and batch["target_list"][0].size(1) == 149  # conv frames of 2 s crops, 75 Hz
    logs = train_steps(model, criterion, batch)
    first, last = logs[0], logs[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["loss_m_0"] < first["loss_m_0"] and last["loss_cqt"] < first["loss_cqt"]
    assert masked_accuracy(last, 0) > masked_accuracy(first, 0) + 0.2
    assert 0 < first["mixed_fraction"] < 1 and "loss_u_0" not in first  # mixture 0.5; skip_nomask


def test_mert_overlay_is_merts_95m_recipe(tmp_path):
    from fairseq import tasks

    labels = [f"km{i}" for i in range(8)]  # MERT-v1: 8 EnCodec codebooks of 1024 codes
    for name in labels:
        write_dictionary(str(tmp_path), name, 1024)
    cfg = compose_example_config(
        "musichubert", "base", ["task.data=unused", f"task.label_dir={tmp_path}", f"task.labels=[{','.join(labels)}]", "+variant=mert"]
    )
    t, m = cfg.task, cfg.model
    assert (t.sample_rate, t.label_rate, t.max_sample_size, t.min_sample_size) == (24000, 75, 120000, 72000)
    assert (m.mask_prob, m.mask_length, m.final_dim, m.skip_nomask, m.logit_temp) == (0.8, 5, 64, True, 0.1)
    assert (m.audio_cqt_loss_m, m.audio_cqt_bins, m.audio_cqt_bins_per_octave) == (True, 336, 48)
    assert (m.mixture_prob, m.inbatch_noise_augment_volume) == (0.5, 1.0)
    assert (list(m.inbatch_noise_augment_len_range), list(m.inbatch_noise_augment_number_range)) == ([12000, 24000], [1, 3])
    assert list(cfg.criterion.loss_weights) == [10, 1] and cfg.criterion.pred_nomask_weight == 0
    assert (cfg.optimization.max_update, cfg.optimization.lr[0], cfg.lr_scheduler.warmup_updates) == (400000, 0.0005, 32000)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    assert model.frame_rate == 75 and model.cqt.hop_length == 320
    parameters = sum(p.numel() for p in model.parameters())
    assert 94e6 < parameters < 96e6, parameters  # MERT-v1-95M
    plain = compose_example_config("musichubert", "base", ["task.data=unused", f"task.label_dir={tmp_path}"]).model
    assert plain.mixture_prob == 0 and not plain.audio_cqt_loss_m  # base stays fairseq's HuBERT


@pytest.mark.smoke
def test_fairseq_hydra_train_mert_on_tiny_at_24khz_then_load_model(tmp_path):
    """A 24 kHz corpus with 75 Hz labels through fairseq-hydra-train (MERT's overlay on tiny), then
    load_model: 75 Hz frames from 24 kHz input, 16 kHz input resampled inside."""
    import soxr

    from audio_ssl_ext import load_model

    corpus = make_demo_corpus(str(tmp_path / "corpus"), num_clips=12, clip_seconds=2.5, sample_rate=24000, label_rate=75)
    manifest_dir = str(tmp_path / "manifest")
    build_manifests(corpus, manifest_dir, ManifestOptions(valid_percent=0.25, seed=0, progress=False))
    label_dir = str(tmp_path / "labels")
    make_labels(manifest_dir, label_dir, "mfcc", "mfcc", 20, frame_rate=75, sample_rate=24000)
    save_dir = tmp_path / "checkpoints"
    proc, losses = run_fairseq_hydra_train(
        os.path.join("examples", "musichubert"),
        "tiny",
        [
            f"task.data={manifest_dir}",
            f"task.label_dir={label_dir}",
            *MERT_ON_TINY,
            "task.max_sample_size=48000",
            "optimization.max_update=12",
            f"checkpoint.save_dir={save_dir}",
            f"common.tensorboard_logdir={tmp_path / 'tb'}",
        ],
    )
    log = proc.stdout + proc.stderr
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert "loss_cqt" in log and "mixed_fraction" in log
    model = load_model(str(save_dir / "checkpoint_last.pt"))
    assert (model.sample_rate, model.frame_rate) == (24000, 75)
    wav24 = torch.from_numpy(sf.read(os.path.join(corpus, "clip_0000.wav"), dtype="float32")[0][:24000])
    assert model.extract_features([wav24]).lengths.tolist() == [74]  # 1 s at 24 kHz: 75 Hz conv frames
    wav16 = torch.from_numpy(soxr.resample(wav24.numpy(), 24000, 16000, quality="HQ"))
    inside = model.extract_features([wav16], sample_rate=16000)
    outside = model.extract_features([torch.from_numpy(soxr.resample(wav16.numpy(), 16000, 24000, quality="HQ"))])
    assert inside.lengths.tolist() == [74]
    torch.testing.assert_close(inside.hidden_states[-1], outside.hidden_states[-1])
