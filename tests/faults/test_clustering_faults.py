"""Fault suite, clustering half of #14: stale outputs, mixed shards, two writers, bad label files,
bad inputs to the scripts, pickled k-means. Each test fails if its check is removed.

The HuBERT iterations run here on a few seconds of tones with training replaced by a stand-in
that writes a checkpoint of random bytes (and iteration 2 reading MFCC instead of a model): the
provenance logic is the same, and a run takes about a second.
"""

import contextlib
import errno
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audio_ssl_ext import durable
from audio_ssl_ext.clustering import iterations
from audio_ssl_ext.clustering.dump import FrontendFeatures, dump_features, shard_info_path, write_shard_info
from audio_ssl_ext.clustering.iterations import IterationsConfig, IterationsError, hydra_string, run_iterations
from audio_ssl_ext.clustering.kmeans import KMeansError, KMeansModel, learn_kmeans
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans
from audio_ssl_ext.clustering.shards import ShardError, ShardWriter
from audio_ssl_ext.data.labels import LabelError, load_dictionary, load_label_set
from audio_ssl_ext.data.make_manifest import ManifestOptions, build_manifests
from audio_ssl_ext.data.manifest import read_manifest, write_manifest
from audio_ssl_ext.durable import OutputLock, OutputLockedError
from tests.utils import REPO_ROOT

SR = 16000


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tones(root, seconds, name, seed=0):
    rng = np.random.default_rng(seed)
    files, sizes = [], []
    for i, s in enumerate(seconds):
        n = int(s * SR)
        wave = 0.3 * np.sin(2 * np.pi * (110 + 60 * i) * np.arange(n) / SR) + 0.01 * rng.normal(size=n)
        files.append(f"{name}_{i}.wav")
        sizes.append(n)
        sf.write(os.path.join(root, files[-1]), wave.astype(np.float32), SR)
    write_manifest(os.path.join(root, f"{name}.tsv"), str(root), files, sizes)
    return os.path.join(root, f"{name}.tsv")


@pytest.fixture
def tones(tmp_path):
    """train.tsv (4 files) and valid.tsv (2 files) of 0.5 s tones."""
    root = tmp_path / "data"
    root.mkdir()
    write_tones(str(root), [0.5, 0.5, 0.5, 0.5], "train")
    write_tones(str(root), [0.5, 0.5], "valid", seed=1)
    return str(root)


@pytest.fixture
def fake_training(monkeypatch):
    """Training writes a checkpoint of random bytes; iteration i > 1 clusters MFCC, not a model."""

    def train(cfg, directory, label_dir, label_rate):
        os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
        with open(os.path.join(directory, "checkpoints", "checkpoint_last.pt"), "wb") as f:
            f.write(os.urandom(64))

    monkeypatch.setattr(iterations, "train", train)
    monkeypatch.setattr(iterations, "feature_source", lambda cfg, i: FrontendFeatures("mfcc", SR, 100.0))


def config(tones, tmp_path, **changes):
    config_dir = tmp_path / "configs"
    config_dir.mkdir(exist_ok=True)
    for name in ("tiny", "other"):
        (config_dir / f"{name}.yaml").write_text(f"# {name}\n")
    settings = dict(
        manifest_dir=tones, work_dir=str(tmp_path / "work"), config_dir=str(config_dir), iterations=1,
        clusters=[4], layer=1, niter=2, n_init=1, progress=False,
    )
    settings.update(changes)
    return IterationsConfig(**settings)


def files_under(folder):
    return {
        os.path.relpath(os.path.join(d, n), folder): os.stat(os.path.join(d, n)).st_mtime_ns
        for d, _, names in os.walk(folder) for n in names if not n.endswith(".lock")
    }


# --- 1. provenance of the iteration stages --------------------------------------------------


CHANGES = [
    # (setting changed, the stage that must be refused, the change named in the message)
    (dict(percent=0.5), "k-means", "percent: -1.0 -> 0.5"),
    (dict(max_frames=100), "k-means", "max_frames: 1000000 -> 100"),
    (dict(seed=1), "k-means", "seed: 0 -> 1"),
    (dict(niter=3), "k-means", "niter: 2 -> 3"),
    (dict(n_init=2), "k-means", "n_init: 1 -> 2"),
    (dict(clusters=[5]), "k-means", "n_clusters: 4 -> 5"),
    (dict(first_feature="logmel"), "features", 'source.name: "mfcc" -> "logmel"'),
    (dict(train_overrides=["optimization.max_update=9"]), "training", 'train_overrides: [] -> ["optimization.max_update=9"]'),
    (dict(config_name="other"), "training", 'config_name: "tiny" -> "other"'),
]


def test_rerun_reuses_identical_stages_and_refuses_every_changed_setting(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path)
    run_iterations(cfg)
    before = files_under(cfg.work_dir)
    used = json.load(open(os.path.join(cfg.work_dir, "iterations.json")))
    run_iterations(cfg)  # identical: everything reused, nothing rewritten
    assert {k: v for k, v in files_under(cfg.work_dir).items() if k != "iterations.json"} == {
        k: v for k, v in before.items() if k != "iterations.json"
    }
    for change, stage, named in CHANGES:
        with pytest.raises(IterationsError) as refused:
            run_iterations(config(tones, tmp_path, **change))
        message = str(refused.value)
        assert f"iteration 1 {stage} was made from other inputs ({named}" in message, message
        assert "delete " in message and "/iter1/" in message
        # iterations.json records what was used, never the refused settings
        assert json.load(open(os.path.join(cfg.work_dir, "iterations.json"))) == used
    assert files_under(cfg.work_dir) == {**before, "iterations.json": files_under(cfg.work_dir)["iterations.json"]}


def test_a_manifest_in_another_order_is_refused_though_counts_and_lengths_match(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path)
    run_iterations(cfg)
    manifest = read_manifest(os.path.join(tones, "train.tsv"))
    write_manifest(manifest.path, manifest.root, manifest.files[::-1], manifest.sizes[::-1])
    with pytest.raises(IterationsError, match=r"iteration 1 features was made from other inputs \(manifests_sha256\.train: "):
        run_iterations(cfg)


def test_a_redone_checkpoint_is_not_clustered_with_the_old_features(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path, iterations=2, clusters=[4, 3])
    run_iterations(cfg)
    # iteration 1's training is redone (another checkpoint, same path)
    with open(iterations.last_checkpoint(cfg, 1), "wb") as f:
        f.write(os.urandom(64))
    with pytest.raises(IterationsError, match=r"iteration 2 features was made from other inputs \(source\.checkpoint_sha256: "
                       r"\"\w+\" -> \"\w+\"\); delete \S+/iter2/features"):
        run_iterations(cfg)


@pytest.mark.parametrize("damage", ["truncate kmeans.npy", "truncate features", "drop a label line"])
def test_an_existing_output_that_fails_its_check_is_refused_with_its_stage(tones, tmp_path, fake_training, damage):
    cfg = config(tones, tmp_path)
    run_iterations(cfg)
    iter1 = os.path.join(cfg.work_dir, "iter1")
    path, stage = {
        "truncate kmeans.npy": ("kmeans.npy", "k-means"),
        "truncate features": ("features/train_0_1.npy", "features"),
        "drop a label line": ("labels/valid.km", "labels"),
    }[damage]
    with open(os.path.join(iter1, path), "r+b") as f:
        size = os.path.getsize(f.name)
        f.truncate(size - 20 if damage != "drop a label line" else size // 2)
    with pytest.raises(IterationsError, match=rf"iteration 1 {stage}: the existing output fails its check .*{re.escape(path)}.*; delete "):
        run_iterations(cfg)


def test_labels_made_again_are_scored_again(tones, tmp_path, fake_training):
    from audio_ssl_ext.clustering.quality import ReferenceLabels

    files = read_manifest(os.path.join(tones, "train.tsv")).files
    reference = ReferenceLabels("tone", {f: np.full(50, i % 2) for i, f in enumerate(files)}, 100.0, "test")
    run_iterations(config(tones, tmp_path), reference)
    quality = os.path.join(tmp_path, "work", "iter1", "quality.json")
    first = json.load(open(quality))["labels_sha256"]
    # as if the k-means and the labels were deleted and made again with another seed
    for name in ("kmeans.npy", "kmeans.json", "labels", "checkpoints", "train.done"):
        shutil.rmtree(tmp_path / "work" / "iter1" / name, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path / "work" / "iter1" / name)
    run_iterations(config(tones, tmp_path, seed=5), reference)
    labels = tmp_path / "work" / "iter1" / "labels" / "train.km"
    assert iterations.sha256_file(str(labels)) != first  # other labels (a permutation at least)
    assert json.load(open(quality))["labels_sha256"] == iterations.sha256_file(str(labels))


# --- 2. shard metadata checked wherever shards are read --------------------------------------


def test_apply_kmeans_refuses_shards_dumped_from_a_manifest_in_another_order(tones, tmp_path):
    feat_dir, km = str(tmp_path / "feats"), str(tmp_path / "km.npy")
    train = os.path.join(tones, "train.tsv")
    dump_features(train, "train", FrontendFeatures("mfcc", SR, 100.0), feat_dir, progress=False)
    learn_kmeans(np.random.default_rng(0).normal(size=(50, 39)).astype(np.float32), 3).save(km)
    manifest = read_manifest(train)
    reordered = os.path.join(tones, "reordered", "train.tsv")
    os.makedirs(os.path.dirname(reordered))
    write_manifest(reordered, manifest.root, manifest.files[::-1], manifest.sizes[::-1])
    with pytest.raises(ShardError, match=r"feats: the features of train were dumped from \S+/data/train\.tsv with other "
                       r"content .* than \S+/reordered/train\.tsv now .*another order"):
        apply_kmeans(feat_dir, "train", 1, km, str(tmp_path / "labels"), "km", reordered, progress=False)
    assert not os.path.exists(tmp_path / "labels" / "train.km")


def fake_layer_shards(feat_dir, layer, ranks=(0,), nshard=1, checkpoint_sha="aa"):
    for rank in ranks:
        with ShardWriter(feat_dir, "train", rank, nshard) as writer:
            for i in range(3):
                writer.append(np.random.default_rng(i).normal(size=(10, 8)).astype(np.float32), f"u{i}")
            write_shard_info(shard_info_path(feat_dir, "train", rank, nshard), {
                "source": {"kind": "checkpoint", "checkpoint_sha256": checkpoint_sha, "layer": layer},
                "manifest_sha256": "m", "sample_rate": SR, "frame_rate": 50.0, "dim": 8,
            })


def test_shards_of_different_layers_do_not_mix(tmp_path, capsys):
    feat_dir = str(tmp_path / "feats")
    fake_layer_shards(feat_dir, 6, ranks=(0,), nshard=2)
    fake_layer_shards(feat_dir, 9, ranks=(1,), nshard=2)  # same width, another layer
    code = load_script("learn_kmeans").main([feat_dir, "train", str(tmp_path / "km.npy"), "--n-clusters", "2", "--nshard", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "train_1_2.json: shard 1 of train was dumped from another feature source than shard 0 (source.layer: 6 -> 9)" in err


def test_apply_kmeans_refuses_a_kmeans_learned_on_another_source(tmp_path):
    fake_layer_shards(str(tmp_path / "l6"), 6)
    fake_layer_shards(str(tmp_path / "l9"), 9)
    km = str(tmp_path / "km.npy")
    assert load_script("learn_kmeans").main([str(tmp_path / "l6"), "train", km, "--n-clusters", "2"]) == 0
    manifest = write_tones(str(tmp_path), [0.2, 0.2, 0.2], "train")
    with pytest.raises(ShardError, match=r"l9: the features of train come from another source than the k-means \S+km\.npy "
                       r"\(layer: 6 -> 9\)"):
        apply_kmeans(str(tmp_path / "l9"), "train", 1, km, str(tmp_path / "labels"), "km", manifest, progress=False)


# --- 3. two runs writing one output ------------------------------------------------------------


@contextlib.contextmanager
def held_by_another_process(folder, name="folder"):
    """A forked child holds the output lock until the block ends; yields its pid."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: lock, tell the parent, wait to be released
        try:
            with OutputLock(folder, name):
                os.write(ready_w, b"x")
                os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def km_model():
    return learn_kmeans(np.random.default_rng(0).normal(size=(50, 39)).astype(np.float32), 3)


WRITERS = {
    "shard": (lambda d: (d / "feats", "train_0_1"),
              lambda d, tones: dump_features(os.path.join(tones, "train.tsv"), "train", FrontendFeatures("mfcc"), str(d / "feats"), progress=False)),
    "k-means": (lambda d: (d, "km.npy"), lambda d, tones: km_model().save(str(d / "km.npy"))),
    "labels": (lambda d: (d / "labels", "train.km"),
               lambda d, tones: apply_kmeans(str(d / "feats"), "train", 1, str(d / "km.npy"), str(d / "labels"), "km",
                                             os.path.join(tones, "train.tsv"), progress=False)),
    "manifests": (lambda d: (d / "manifests", "folder"),
                  lambda d, tones: build_manifests(tones, str(d / "manifests"), ManifestOptions(progress=False))),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_second_writer_is_refused_naming_the_first(tones, tmp_path, writer):
    if writer == "labels":
        dump_features(os.path.join(tones, "train.tsv"), "train", FrontendFeatures("mfcc"), str(tmp_path / "feats"), progress=False)
        km_model().save(str(tmp_path / "km.npy"))
    where, write = WRITERS[writer]
    folder, name = where(tmp_path)
    with held_by_another_process(str(folder), name) as pid:
        before = files_under(str(tmp_path))
        with pytest.raises(OutputLockedError, match=rf"{re.escape(str(folder))} is being written by another run "
                           rf"\(pid {pid} on {re.escape(os.uname().nodename)}, started \S+, command: "):
            write(tmp_path, tones)
        assert files_under(str(tmp_path)) == before  # nothing written, no temporary file left
    write(tmp_path, tones)  # the first run has finished: free again


def test_two_iteration_drivers_on_one_work_dir(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path)
    with held_by_another_process(cfg.work_dir):
        with pytest.raises(OutputLockedError, match="work is being written by another run"):
            run_iterations(cfg)
    assert not os.path.exists(os.path.join(cfg.work_dir, "iter1"))


def test_temporary_names_are_unique_to_the_writer(tmp_path):
    names = {durable.temp_path(str(tmp_path / "train_0_1.npy")) for _ in range(20)}
    assert len(names) == 20 and all(f".train_0_1.npy.{os.getpid()}." in n for n in names)


# --- 4. label files ----------------------------------------------------------------------------


def test_label_files_refuse_fairseqs_special_symbols(tmp_path):
    root = tmp_path
    manifest_path = write_tones(str(root), [0.5, 0.5], "train")
    (root / "dict.km.txt").write_text("0 1\n1 1\n")
    frames = 25  # 0.5 s at 50 Hz
    (root / "train.km").write_text(" ".join(["0"] * frames) + "\n" + " ".join(["1"] * (frames - 1) + ["<pad>"]) + "\n")
    with pytest.raises(LabelError, match=r"train\.km, line 2: <pad> is one of fairseq's special symbols"):
        load_label_set(str(root), "train", "km", read_manifest(manifest_path), SR, 50.0)


@pytest.mark.parametrize("text, line, problem", [
    ("0 1\n1\n", 2, "expected '<symbol> <count>'"),
    ("0 1\n<unk> 1\n", 2, "<unk> is one of fairseq's special symbols"),
    ("0 1\n1 1\n0 1\n", 3, "symbol '0' again"),
    ("0 x\n", 1, "expected '<symbol> <count>'"),
])
def test_a_malformed_dictionary_is_refused_naming_its_line(tmp_path, text, line, problem):
    (tmp_path / "dict.km.txt").write_text(text)
    with pytest.raises(LabelError, match=rf"dict\.km\.txt, line {line}: {re.escape(problem)}"):
        load_dictionary(str(tmp_path), "km")


def test_more_clusters_than_distinct_frames_warns_with_the_counts(caplog):
    x = np.repeat(np.random.default_rng(0).normal(size=(3, 4)), 10, axis=0).astype(np.float32)  # 30 frames, 3 distinct
    with caplog.at_level(logging.WARNING, logger="audio_ssl_ext.clustering.kmeans"):
        learn_kmeans(x, 5, niter=1, n_init=1)
    assert "k=5 clusters but only 3 distinct frames among 30: at least 2 clusters will label nothing" in caplog.text


# --- 5. the scripts answer with one line ------------------------------------------------------


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert code == 1, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_iterations_refuse_an_empty_valid_manifest_before_any_work(tones, tmp_path, capsys):
    write_manifest(os.path.join(tones, "valid.tsv"), tones, [], [])
    work = tmp_path / "work"
    code = load_script("hubert_iterations").main([tones, str(work), "--config-dir", os.path.join(REPO_ROOT, "examples", "musichubert")])
    assert "valid.tsv: no audio file listed (only the root line)" in one_line_error(capsys, code)
    assert not work.exists()


def test_learn_kmeans_and_the_iterations_refuse_percent_zero(tones, tmp_path, capsys):
    fake_layer_shards(str(tmp_path / "feats"), 6)
    code = load_script("learn_kmeans").main([str(tmp_path / "feats"), "train", str(tmp_path / "km.npy"), "--n-clusters", "2", "--percent", "0"])
    assert "--percent 0: the share of utterances must be in (0, 1], or -1 for all" in one_line_error(capsys, code)
    work = tmp_path / "work"  # before any work
    code = load_script("hubert_iterations").main([tones, str(work), "--config-dir", os.path.join(REPO_ROOT, "examples", "musichubert"),
                                                   "--percent", "0"])
    assert "--percent 0: the share of utterances must be in (0, 1], or -1 for all" in one_line_error(capsys, code)
    assert not work.exists()


@pytest.mark.parametrize("damage", ["truncated npy", "extra key in json", "missing key in json"])
def test_apply_kmeans_answers_a_damaged_kmeans_in_one_line(tmp_path, capsys, damage):
    fake_layer_shards(str(tmp_path / "feats"), 6)
    km = str(tmp_path / "km.npy")
    assert load_script("learn_kmeans").main([str(tmp_path / "feats"), "train", km, "--n-clusters", "2"]) == 0
    capsys.readouterr()
    info = json.load(open(tmp_path / "km.json"))
    if damage == "truncated npy":
        with open(km, "r+b") as f:
            f.truncate(os.path.getsize(km) - 8)
        expected = r"km\.npy: truncated or damaged \.npy"
    elif damage == "extra key in json":
        json.dump({**info, "colour": "blue"}, open(tmp_path / "km.json", "w"))
        expected = r"km\.json: unknown key\(s\) \['colour'\]"
    else:
        del info["seed"]
        json.dump(info, open(tmp_path / "km.json", "w"))
        expected = r"km\.json: missing key\(s\) \['seed'\]"
    code = load_script("apply_kmeans").main([str(tmp_path / "feats"), "train", km, str(tmp_path / "labels"), "--manifest-dir", str(tmp_path)])
    assert re.search(expected, one_line_error(capsys, code))


def test_cluster_quality_answers_a_malformed_dictionary_in_one_line(tmp_path, capsys):
    manifest = write_tones(str(tmp_path), [0.5], "train")
    (tmp_path / "train.km").write_text(" ".join(["0"] * 25) + "\n")
    (tmp_path / "dict.km.txt").write_text("0 1\n1 one\n")
    code = load_script("cluster_quality").main([str(tmp_path / "train.km"), "--manifest", manifest, "--label-rate", "50"])
    assert "dict.km.txt, line 2: expected '<symbol> <count>', got '1 one'" in one_line_error(capsys, code)


def test_a_full_disk_is_one_line_naming_the_folder(tones, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where ENOSPC surfaces on network file systems
    feats = tmp_path / "feats"
    code = load_script("dump_features").main([tones, "train", str(feats), "--feature", "mfcc"])
    assert f"{feats}: no space left on device" in one_line_error(capsys, code)
    assert sorted(os.listdir(feats)) == [".train_0_1.lock"]  # no shard, no temporary file


def test_hydra_characters_in_paths_are_quoted(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for path in ["/data/a,b=c[1]", "/data/it's here", "/data/back\\slash\\", "/data/q\\'x"]:
        assert parser.parse_override(hydra_string("task.data", path)).value() == path


def test_a_bad_override_is_refused_before_feature_dumping(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path, train_overrides=["task.data=/a,b"])
    with pytest.raises(IterationsError, match=r"training override 'task.data=/a,b' is a sweep for hydra .*key='a,b'"):
        run_iterations(cfg)
    cfg = config(tones, tmp_path, work_dir=str(tmp_path / "w${x}"))
    with pytest.raises(IterationsError, match=r"w\$\{x\}/iter1/labels: this path does not pass through hydra's override parser"):
        run_iterations(cfg)
    assert not (tmp_path / "work").exists() and not (tmp_path / "w${x}" / "iter1").exists()


def test_iterations_run_in_a_work_dir_whose_name_hydra_would_parse(tones, tmp_path, fake_training):
    cfg = config(tones, tmp_path, work_dir=str(tmp_path / "run,k=4 [a]'s"))
    run_iterations(cfg)
    command = iterations.train_command(cfg, iterations.iteration_dir(cfg, 1), "/l", 100.0)
    iterations.check_overrides(command, iterations.path_overrides(cfg, iterations.iteration_dir(cfg, 1), "/l"))
    assert os.path.isfile(os.path.join(cfg.work_dir, "iter1", "train.done"))


# --- 6. k-means only from its numpy format -----------------------------------------------------


def test_a_pickled_kmeans_is_refused_and_the_advice_converts_it(tmp_path):
    import joblib
    from sklearn.cluster import MiniBatchKMeans

    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    sklearn_model = MiniBatchKMeans(3, n_init=1, random_state=0).fit(x)
    joblib.dump(sklearn_model, tmp_path / "fairseq_km.bin")
    with pytest.raises(KMeansError, match=r"fairseq_km\.bin: not a numpy \.npy file .* pickles are not loaded") as refused:
        KMeansModel.load(str(tmp_path / "fairseq_km.bin"))
    advice = re.search(r'python -c "([^"]+)"', str(refused.value)).group(1)
    subprocess.run([sys.executable, "-c", advice], cwd=tmp_path, check=True, timeout=120)
    converted = KMeansModel.load(str(tmp_path / "km.npy"))
    np.testing.assert_allclose(converted.centroids, sklearn_model.cluster_centers_, rtol=1e-6)


def test_a_redump_cut_short_leaves_no_old_shard_under_the_new_info(tones, tmp_path, monkeypatch):
    """A re-dump into the same folder with another source, killed after its info and .len are
    published but before its .npy: the old source's .npy must not stay under the new info
    (readers trust the info), so that the shard counts as missing and is redone."""
    import audio_ssl_ext.clustering.shards as shards

    train, feat_dir = os.path.join(tones, "train.tsv"), str(tmp_path / "feats")
    dump_features(train, "train", FrontendFeatures("mfcc", SR, 100.0), feat_dir, progress=False)
    assert shards.shard_exists(feat_dir, "train", 0, 1)
    real_publish = shards.publish

    def killed_before_the_npy(tmp, path):
        if path.endswith(".npy"):
            raise KeyboardInterrupt
        real_publish(tmp, path)

    monkeypatch.setattr(shards, "publish", killed_before_the_npy)
    with pytest.raises(KeyboardInterrupt):
        dump_features(train, "train", FrontendFeatures("chroma", SR, 100.0), feat_dir, progress=False)
    assert not shards.shard_exists(feat_dir, "train", 0, 1)
