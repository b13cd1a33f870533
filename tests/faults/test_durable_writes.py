"""Fault suite, durability (#14 item 9): every file the clustering pipeline publishes is fsynced
before its rename and its folder after; a failed write leaves the old file and no temporary one."""

import errno
import os
import stat

import pytest

from audio_ssl_ext import atomic_checkpoint, durable
from audio_ssl_ext.clustering.iterations import run_iterations
from tests.faults.test_clustering_faults import config, fake_training, tones  # noqa: F401 (fixtures)


@pytest.fixture
def publishes(monkeypatch):
    """Every os.replace as (published paths, folder fsyncs as (inode, publishes before it));
    a rename of a file that was not fsynced fails the test."""
    real_fsync, real_replace = os.fsync, os.replace
    synced, published, folder_syncs = set(), [], []

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            folder_syncs.append((st.st_ino, len(published)))
        else:
            synced.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        st = os.stat(src)
        assert (st.st_dev, st.st_ino) in synced, f"{dst} published without fsync"
        real_replace(src, dst)
        published.append(os.path.abspath(dst))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return published, folder_syncs


def test_every_published_file_is_fsynced_before_its_rename_and_its_folder_after(tones, tmp_path, publishes, fake_training):  # noqa: F811
    published, folder_syncs = publishes
    run_iterations(config(tones, tmp_path, iterations=2, clusters=[4, 3]))
    names = {os.path.relpath(p, tmp_path / "work") for p in published}
    # shards, their .len and .json, k-means and its .json, labels, dictionary, params.json,
    # train.done of both iterations, and iterations.json
    for i in (1, 2):
        assert {f"iter{i}/{n}" for n in [
            "features/train_0_1.npy", "features/train_0_1.len", "features/train_0_1.json", "features/valid_0_1.npy",
            "kmeans.npy", "kmeans.json", "labels/train.km", "labels/valid.km", "labels/dict.km.txt",
            "params.json", "train.done",
        ]} <= names
    assert "iterations.json" in names
    for index, path in enumerate(published):  # the folder is fsynced after each rename
        folder = os.stat(os.path.dirname(path)).st_ino
        assert any(ino == folder and after > index for ino, after in folder_syncs), f"{path}: folder not fsynced"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "params.json"
    durable.atomic_write_json(str(path), {"old": 1})

    def broken(f):
        f.write("{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        durable.atomic_write(str(path), broken, mode="w")
    assert path.read_text() == '{\n  "old": 1\n}\n' and os.listdir(tmp_path) == ["params.json"]


def test_a_full_disk_during_a_write_names_the_folder(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(durable.DiskFullError, match=rf"^{tmp_path}: no space left on device"):
        durable.atomic_write(str(tmp_path / "kmeans.npy"), full)
    assert os.listdir(tmp_path) == []


def test_checkpoint_writes_use_the_one_atomic_write(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "atomic_write", lambda path, write: calls.append(os.fspath(path)))
    atomic_checkpoint.atomic_write(tmp_path / "checkpoint_last.pt", lambda f: None)
    assert calls == [str(tmp_path / "checkpoint_last.pt")]


def test_manifests_are_published_fsynced(tmp_path, publishes):
    from audio_ssl_ext.data.manifest import read_manifest, write_manifest

    write_manifest(str(tmp_path / "train.tsv"), str(tmp_path), ["a.wav", "b.wav"], [16000, 8000])
    assert publishes[0] == [str(tmp_path / "train.tsv")]
    assert read_manifest(str(tmp_path / "train.tsv")).sizes == [16000, 8000]
    assert sorted(os.listdir(tmp_path)) == ["train.tsv"]
