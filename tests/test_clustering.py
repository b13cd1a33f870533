"""The clustering pipeline: shards, k-means, label files, cluster quality, and their bad inputs."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_ssl_ext.clustering.dump import FrontendFeatures, dump_features, read_shard_info
from audio_ssl_ext.clustering.kmeans import KMeansError, KMeansModel, assign, kmeans_plusplus, learn_kmeans
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans, write_dictionary
from audio_ssl_ext.clustering.quality import (
    align_references,
    cluster_quality,
    cluster_purity,
    entropy_bits,
    frame_labels_at_rate,
    joint_counts,
    pnmi,
    purity,
    read_label_lines,
)
from audio_ssl_ext.clustering.shards import (
    ShardError,
    ShardWriter,
    read_shard,
    read_shards,
    sample_rows,
    shard_range,
)
from audio_ssl_ext.data.labels import LabelError, load_label_set
from audio_ssl_ext.data.manifest import read_manifest, write_manifest
from tests.utils import REPO_ROOT

SR = 16000


def write_shard(feat_dir, split, utterances, rank=0, nshard=1):
    with ShardWriter(str(feat_dir), split, rank, nshard) as writer:
        for i, u in enumerate(utterances):
            writer.append(u, f"utterance {i}")


def mixture(n, dim, components, seed, spread=3.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(components, dim)) * spread
    z = rng.integers(0, components, n)
    return (means[z] + rng.normal(size=(n, dim))).astype(np.float32)


def write_tones(root, seconds, name="train"):
    """Sine tones with vibrato and noise, one pitch per file; manifest {root}/{name}.tsv."""
    rng = np.random.default_rng(len(seconds))
    files, sizes = [], []
    for i, s in enumerate(seconds):
        n = int(s * SR)
        t = np.arange(n) / SR
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t + 2 * np.sin(2 * np.pi * 5 * t)) + 0.01 * rng.normal(size=n)
        files.append(f"{name}_{i}.wav")
        sizes.append(n)
        sf.write(os.path.join(root, files[-1]), wave.astype(np.float32), SR)
    write_manifest(os.path.join(root, f"{name}.tsv"), str(root), files, sizes)
    return os.path.join(root, f"{name}.tsv")


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- shards --------------------------------------------------------------------------------


def test_shard_round_trip_is_fairseq_format(tmp_path):
    utterances = [np.random.default_rng(i).normal(size=(n, 5)).astype(np.float32) for i, n in enumerate([3, 7, 1])]
    write_shard(tmp_path, "train", utterances)
    features = np.load(tmp_path / "train_0_1.npy")  # plain numpy reads it, as fairseq's scripts do
    np.testing.assert_array_equal(features, np.concatenate(utterances))
    assert (tmp_path / "train_0_1.len").read_text() == "3\n7\n1\n"
    shard = read_shard(str(tmp_path), "train", 0, 1)
    np.testing.assert_array_equal(shard.utterance(1), utterances[1])
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_shard_ranges_cover_the_manifest_in_order():
    ranges = [shard_range(10, r, 3) for r in range(3)]
    assert ranges == [(0, 3), (3, 7), (7, 10)]  # fairseq's get_shard_range
    with pytest.raises(ValueError, match="empty"):
        shard_range(2, 1, 3)  # lines [1, 1)


def test_len_that_does_not_sum_to_rows_names_the_len_file(tmp_path):
    write_shard(tmp_path, "train", [np.zeros((4, 2), np.float32), np.ones((3, 2), np.float32)])
    (tmp_path / "train_0_1.len").write_text("4\n2\n")
    with pytest.raises(ShardError, match=r"train_0_1\.len: frame counts sum to 6, but .*train_0_1\.npy has 7 rows"):
        read_shard(str(tmp_path), "train", 0, 1)


def test_empty_shard_is_refused_when_written_and_when_read(tmp_path):
    with pytest.raises(ShardError, match=r"train_0_1\.npy: no utterance to write \(empty shard\)"):
        with ShardWriter(str(tmp_path), "train", 0, 1):
            pass
    # nothing that looks like a shard is left (the lock file stays; the kernel released the lock)
    assert [p.name for p in tmp_path.iterdir()] == [".train_0_1.lock"]
    np.save(tmp_path / "valid_0_1.npy", np.zeros((0, 39), np.float32))
    (tmp_path / "valid_0_1.len").write_text("")
    with pytest.raises(ShardError, match=r"valid_0_1\.npy: empty shard"):
        read_shard(str(tmp_path), "valid", 0, 1)


def test_non_finite_features_are_refused_naming_the_file(tmp_path):
    bad = np.zeros((5, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ShardError, match=r"clip_7\.wav: non-finite feature value \(NaN or inf\) at frame 2, dim 1"):
        with ShardWriter(str(tmp_path), "train", 0, 1) as writer:
            writer.append(bad, "clip_7.wav")
    # A shard made elsewhere with an inf in it: refused when sampled for k-means.
    features = np.zeros((6, 3), np.float32)
    features[4, 0] = np.inf
    np.save(tmp_path / "train_0_1.npy", features)
    (tmp_path / "train_0_1.len").write_text("3\n3\n")
    with pytest.raises(ShardError, match=r"train_0_1\.npy: non-finite feature value .* at row 4, dim 0"):
        sample_rows(read_shards(str(tmp_path), "train", 1))
    with pytest.raises(KMeansError, match="non-finite value"):
        learn_kmeans(features, 2)


def test_sample_rows_reads_the_requested_subset(tmp_path):
    rows = np.arange(2 * 28, dtype=np.float32).reshape(28, 2)  # every row distinct
    utterances = np.split(rows, np.cumsum([5, 8, 6]))
    write_shard(tmp_path, "train", utterances[:2], rank=0, nshard=2)
    write_shard(tmp_path, "train", utterances[2:], rank=1, nshard=2)
    shards = read_shards(str(tmp_path), "train", 2)
    everything = np.concatenate(utterances)
    np.testing.assert_array_equal(sample_rows(shards), everything)
    half = sample_rows(shards, percent=0.5, seed=1)  # one utterance of each shard
    assert len(half) in {5 + 6, 5 + 9, 8 + 6, 8 + 9}
    capped = sample_rows(shards, max_frames=10, seed=2)
    assert capped.shape == (10, 2)
    distinct = {tuple(r) for r in everything.tolist()}
    assert all(tuple(r) in distinct for r in capped.tolist())
    assert len({tuple(r) for r in capped.tolist()}) == 10  # without replacement


# --- k-means ---------------------------------------------------------------------------------


def test_more_clusters_than_frames_is_refused():
    with pytest.raises(KMeansError, match="n_clusters=20 is more than the 10 frames"):
        learn_kmeans(np.zeros((10, 3), np.float32), 20)


def test_greedy_kmeans_plusplus_seeds_as_well_as_sklearns():
    from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

    x = mixture(3000, 6, 24, seed=0)
    x -= x.mean(0)
    ours, theirs = [], []
    for seed in range(5):
        centres = kmeans_plusplus(torch.from_numpy(x), 16, torch.Generator().manual_seed(seed)).numpy()
        assert {tuple(c) for c in centres} <= {tuple(r) for r in x}  # seeds are data points
        ours.append(assign(x, centres)[1].sum())
        reference, _ = sklearn_kmeans_plusplus(x, 16, random_state=seed)
        theirs.append(assign(x, reference.astype(np.float32))[1].sum())
    # Seedings stepped together (learn_kmeans's n_init) are as many independent seedings.
    runs = kmeans_plusplus(torch.from_numpy(x), 16, torch.Generator().manual_seed(0), runs=5).numpy()
    assert runs.shape == (5, 16, x.shape[1]) and len({r.tobytes() for r in runs}) == 5
    batched = [assign(x, centres)[1].sum() for centres in runs]
    # The same algorithm (greedy, 2 + ln k trials): the same potential up to seed noise.
    assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.05)
    assert np.mean(batched) == pytest.approx(np.mean(theirs), rel=0.05)
    # and far better than uniform seeding
    uniform = [assign(x, x[np.random.default_rng(s).choice(len(x), 16, replace=False)])[1].sum() for s in range(5)]
    assert np.mean(ours) < 0.8 * np.mean(uniform)


def test_kmeans_inertia_matches_sklearn_on_a_small_case():
    from sklearn.cluster import KMeans

    x = mixture(4000, 8, 30, seed=1, spread=2.0)
    reference = KMeans(20, n_init=3, random_state=0).fit(x).inertia_
    model = learn_kmeans(x, 20, niter=30, n_init=3, nredo=3, seed=0)
    assert model.inertia(x) <= 1.02 * reference
    assert model.info.inertia_per_frame == pytest.approx(model.inertia(x) / len(x), rel=1e-4)


def test_kmeans_save_load_round_trip(tmp_path):
    x = mixture(500, 4, 5, seed=2)
    model = learn_kmeans(x, 5, seed=3)
    json_path = model.save(str(tmp_path / "km.npy"))
    loaded = KMeansModel.load(str(tmp_path / "km.npy"))
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert json.load(open(json_path))["n_clusters"] == 5 and loaded.info.seed == 3
    np.testing.assert_array_equal(loaded.predict(x), assign(x, model.centroids)[0])
    # fairseq's joblib files are refused: tests/faults/test_clustering_faults.py


# --- cluster quality on hand-computed cases ---------------------------------------------------


def test_pnmi_and_purities_on_hand_computed_cases():
    z = np.array([0, 0, 0, 1])
    y = np.array([0, 0, 1, 1])
    table = joint_counts(z, y)
    # p(y,z): (0,0)=1/2, (1,0)=1/4, (1,1)=1/4; p(y)=(1/2,1/2), p(z)=(3/4,1/4)
    mutual = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert pnmi(table) == pytest.approx(mutual / math.log(2))
    assert purity(table) == pytest.approx(3 / 4)  # cluster 0 -> label 0 (2 of 3), cluster 1 -> 1
    assert cluster_purity(table) == pytest.approx(3 / 4)  # label 0 all in 0; label 1 split 1/1
    # identical partitions (names differ): everything is 1; independent ones: PNMI 0
    same = joint_counts(np.array([3, 3, 7, 7]), np.array([1, 1, 0, 0]))
    assert (pnmi(same), purity(same), cluster_purity(same)) == pytest.approx((1.0, 1.0, 1.0))
    independent = joint_counts(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))
    assert pnmi(independent) == pytest.approx(0.0, abs=1e-12)
    assert purity(independent) == pytest.approx(0.5)


def test_usage_report_and_entropy():
    report = cluster_quality([np.array([0, 0, 1]), np.array([1, 2, 2, 2])], n_clusters=4)
    assert (report.frames, report.used_clusters) == (7, 3)
    p = np.array([2, 2, 3]) / 7
    assert report.entropy_bits == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert report.max_entropy_bits == pytest.approx(2.0)
    assert entropy_bits(np.array([5, 5, 0])) == pytest.approx(1.0)


def test_references_are_aligned_by_time_and_mismatched_durations_refused():
    labels = [np.arange(4)]  # 4 frames at 100 Hz = 40 ms
    aligned = align_references(labels, 100, [np.array([10, 20])], 50, ["clip"])  # 2 frames at 50 Hz
    np.testing.assert_array_equal(aligned[0], [10, 10, 20, 20])
    with pytest.raises(LabelError, match=r"clip: 4 labels at 100 Hz .* vs 40 reference labels at 50 Hz"):
        align_references(labels, 100, [np.zeros(40, np.int64)], 50, ["clip"])


def test_frame_labels_at_rate_takes_the_label_under_each_frame_centre():
    labels = np.array([1, 2, 3, 4])  # 50 Hz: frames of 20 ms
    np.testing.assert_array_equal(
        frame_labels_at_rate(labels, 50, 100, 8), [1, 1, 2, 2, 3, 3, 4, 4]
    )
    np.testing.assert_array_equal(
        frame_labels_at_rate(labels, 50, 25, 2), [2, 4]
    )  # centres at 20 and 60 ms
    np.testing.assert_array_equal(
        frame_labels_at_rate(labels, 50, 50, 5), [1, 2, 3, 4, 4]
    )  # overhang


def test_label_file_with_more_or_fewer_lines_than_the_manifest_is_refused(tmp_path):
    manifest_path = write_tones(str(tmp_path), [0.5, 0.5])
    (tmp_path / "train.km").write_text("1 2 3\n")
    with pytest.raises(LabelError, match=r"train\.km: 1 lines, but the manifest .*train\.tsv has 2 entries"):
        read_label_lines(str(tmp_path / "train.km"), read_manifest(manifest_path))


# --- dump -> learn -> apply ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tones"))
    return root, write_tones(root, [1.0, 1.3, 0.8, 1.1])


@pytest.mark.parametrize("name", ["mfcc", "chroma"])
def test_chunked_frontend_features_equal_one_pass(tones, name):
    root, manifest_path = tones
    wav = sf.read(os.path.join(root, "train_1.wav"), dtype="float32")[0]
    whole = FrontendFeatures(name, SR, 100, chunk_seconds=1000)
    chunked = FrontendFeatures(name, SR, 100, chunk_seconds=0.21, context_seconds=0.1)
    one_pass = whole.features(wav)
    assert one_pass.shape == (whole.num_frames(len(wav)), whole.dim)
    np.testing.assert_allclose(chunked.features(wav), one_pass, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block_frames", [1 << 16, 150])  # every utterance in one predict; about one each
def test_dump_learn_apply_round_trip_feeds_the_training_task(tones, tmp_path, monkeypatch, block_frames):
    import audio_ssl_ext.clustering.pseudo_labels as pseudo_labels

    monkeypatch.setattr(pseudo_labels, "PREDICT_BLOCK_FRAMES", block_frames)
    root, manifest_path = tones
    feat_dir, label_dir = str(tmp_path / "feat"), str(tmp_path / "labels")
    source = FrontendFeatures("mfcc", SR, 100)
    for rank in range(2):
        dump_features(manifest_path, "train", source, feat_dir, rank=rank, nshard=2, progress=False)
    assert read_shard_info(feat_dir, "train", 1, 2)["manifest_entries"] == [2, 4]
    shards = read_shards(feat_dir, "train", 2)
    model = learn_kmeans(sample_rows(shards), 8, seed=0)
    model.save(str(tmp_path / "km.npy"))
    path = apply_kmeans(feat_dir, "train", 2, str(tmp_path / "km.npy"), label_dir, "mfcc", manifest_path, progress=False)
    lines = open(path).read().splitlines()
    manifest = read_manifest(manifest_path)
    assert len(lines) == len(manifest)
    expected = [model.predict(s.utterance(i)) for s in shards for i in range(len(s))]
    assert [list(map(int, line.split())) for line in lines] == [e.tolist() for e in expected]
    assert open(os.path.join(label_dir, "dict.mfcc.txt")).read().splitlines() == [f"{i} 1" for i in range(8)]
    # What the waveform_pretraining task loads accepts them at the rate they were dumped at...
    label_set = load_label_set(label_dir, "train", "mfcc", manifest, SR, 100.0)
    assert [len(l) for l in label_set.labels] == [len(e) for e in expected]
    # ...and apply_kmeans refuses to write them for a config at another rate.
    with pytest.raises(LabelError, match="dumped at 100 frames/s, but the labels are meant for label_rate 50"):
        apply_kmeans(feat_dir, "train", 2, str(tmp_path / "km.npy"), label_dir, "mfcc", manifest_path, label_rate=50)


def test_apply_checks_frames_against_the_manifest_and_the_dictionary(tones, tmp_path):
    root, manifest_path = tones
    manifest = read_manifest(manifest_path)
    feat_dir = str(tmp_path / "feat")
    # Shards made elsewhere at 50 Hz (no .json), labelled as if they were 100 Hz.
    write_shard(feat_dir, "train", [np.zeros((int(n / SR * 50), 3), np.float32) + i for i, n in enumerate(manifest.sizes)])
    KMeansModel(np.arange(12, dtype=np.float32).reshape(4, 3)).save(str(tmp_path / "km.npy"))
    with pytest.raises(LabelError, match=r"train_0_1\.len, line 1: 50 frames for .*train\.tsv, line 2 .* expected about 100\.0"):
        apply_kmeans(feat_dir, "train", 1, str(tmp_path / "km.npy"), str(tmp_path / "l"), "km", manifest_path,
                     label_rate=100, sample_rate=SR)
    # More utterances in the shards than lines in the manifest.
    write_manifest(str(tmp_path / "short.tsv"), manifest.root, manifest.files[:3], manifest.sizes[:3])
    with pytest.raises(LabelError, match=r"hold 4 utterances .* but .*short\.tsv has 3 entries"):
        apply_kmeans(feat_dir, "train", 1, str(tmp_path / "km.npy"), str(tmp_path / "l"), "km", str(tmp_path / "short.tsv"),
                     label_rate=50, sample_rate=SR)
    # A dictionary of another clustering under the same name is not overwritten.
    write_dictionary(str(tmp_path / "l2"), "km", 7)
    with pytest.raises(LabelError, match=r"dict\.km\.txt exists and lists 7 symbols"):
        write_dictionary(str(tmp_path / "l2"), "km", 4)


def test_command_line_round_trip_with_quality_against_the_demo_corpus(demo_corpus, demo_manifest_dir, tmp_path, capsys):
    feat_dir, label_dir, km = str(tmp_path / "feat"), str(tmp_path / "labels"), str(tmp_path / "km.npy")
    assert load_script("dump_features").main([demo_manifest_dir, "train", feat_dir, "--feature", "chroma", "--frame-rate", "50"]) == 0
    assert load_script("learn_kmeans").main([feat_dir, "train", km, "--n-clusters", "12", "--max-frames", "1000"]) == 0
    assert json.load(open(str(tmp_path / "km.json")))["training_frames"] == 1000
    assert load_script("apply_kmeans").main([feat_dir, "train", km, label_dir, "--manifest-dir", demo_manifest_dir, "--name", "chroma"]) == 0
    labels = os.path.join(label_dir, "train.chroma")
    quality = load_script("cluster_quality")
    out_json = str(tmp_path / "q.json")
    args = [labels, "--manifest", os.path.join(demo_manifest_dir, "train.tsv"), "--label-rate", "50"]
    assert quality.main(args + ["--demo-corpus", demo_corpus, "--json", out_json]) == 0
    report = json.load(open(out_json))
    assert report["n_clusters"] == 12 and 0 < report["pnmi"] < 1 and 0 < report["purity"] <= 1
    # a bad input is a message and exit status 1, not a traceback
    assert load_script("learn_kmeans").main([feat_dir, "train", km, "--n-clusters", "100000"]) == 1
    assert "n_clusters=100000 is more than the" in capsys.readouterr().err


@pytest.mark.parametrize("dim", [39, 64])  # |c|^2 folded into the product (D < K) and added after it
def test_predict_in_chunks_and_threads_gives_the_l2_nearest_centroid(monkeypatch, dim):
    """predict, chunk by chunk over threads, labels every frame with its L2-nearest centroid
    (sklearn's predict), also on features far from the origin."""
    from sklearn.metrics import pairwise_distances_argmin

    import audio_ssl_ext.clustering.kmeans as kmeans

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1000, dim)) * 3 + 50).astype(np.float32)
    model = KMeansModel(x[rng.choice(1000, 48, replace=False)] + rng.normal(size=(48, dim)).astype(np.float32))
    expected = pairwise_distances_argmin(x, model.centroids)
    monkeypatch.setattr(kmeans, "CHUNK_FRAMES", 128)  # 8 chunks, the last one short
    np.testing.assert_array_equal(model.predict(x), expected)
    for threads in (1, 3):
        np.testing.assert_array_equal(kmeans.nearest_centroids(x, model.centroids, threads=threads), expected)
    assert model.predict(x[:0]).shape == (0,)  # an empty utterance has no labels (faiss's answer too)
