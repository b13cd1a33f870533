"""HuBERT iterations end to end on the demo corpus: MFCC labels -> train -> layer labels -> train,
then a rerun that skips every finished stage and redoes only what was removed."""

import json
import os
import sys

import pytest

from audio_ssl_ext.clustering.iterations import IterationsConfig, IterationsError, run_iterations
from audio_ssl_ext.logged_run import run_logged
from audio_ssl_ext.clustering.shards import read_shard
from audio_ssl_ext.tools.demo_corpus import reference_labels
from tests.utils import REPO_ROOT


def outputs(work_dir):
    """mtime of every file under work_dir (lock files aside), to tell what a rerun wrote."""
    found = {}
    for directory, _, files in os.walk(work_dir):
        for name in files:
            if name.endswith(".lock"):
                continue
            path = os.path.join(directory, name)
            found[os.path.relpath(path, work_dir)] = os.stat(path).st_mtime_ns
    return found


@pytest.mark.integration
def test_two_iterations_end_to_end_and_resume(demo_corpus, demo_manifest_dir, tmp_path):
    work = str(tmp_path / "work")
    cfg = IterationsConfig(
        manifest_dir=demo_manifest_dir,
        work_dir=work,
        config_dir=os.path.join(REPO_ROOT, "examples", "musichubert"),
        iterations=2,
        clusters=[20, 30],
        train_overrides=["optimization.max_update=6", "task.max_sample_size=16000"],
        progress=False,
    )
    reference = reference_labels(demo_corpus, "pitch")
    checkpoints = run_iterations(cfg, reference)
    assert checkpoints == [os.path.join(work, f"iter{i}", "checkpoints", "checkpoint_last.pt") for i in (1, 2)]
    assert all(os.path.isfile(c) for c in checkpoints)

    # iteration 1 clustered MFCC at 100 Hz, iteration 2 layer 1 (of 2) of iteration 1's model at 50 Hz
    sources = [json.load(open(os.path.join(work, f"iter{i}", "features", "train_0_1.json"))) for i in (1, 2)]
    assert (sources[0]["source"]["name"], sources[0]["frame_rate"], sources[0]["dim"]) == ("mfcc", 100.0, 39)
    assert sources[1]["source"]["checkpoint"] == checkpoints[0]
    assert (sources[1]["source"]["layer"], sources[1]["frame_rate"], sources[1]["dim"]) == (1, 50.0, 64)
    for i, k in ((1, 20), (2, 30)):
        labels = os.path.join(work, f"iter{i}", "labels")
        assert len(open(os.path.join(labels, "dict.km.txt")).read().splitlines()) == k
        lengths = read_shard(os.path.join(work, f"iter{i}", "features"), "train", 0, 1).lengths
        lines = open(os.path.join(labels, "train.km")).read().splitlines()
        assert [len(line.split()) for line in lines] == lengths.tolist()
        quality = json.load(open(os.path.join(work, f"iter{i}", "quality.json")))
        assert quality["n_clusters"] == k and 0 < quality["pnmi"] < 1 and quality["used_clusters"] > k // 2
    train_log = open(os.path.join(work, "iter2", "train.log")).read()
    assert "task.label_rate=50 " in train_log.splitlines()[0]  # the command, first line of the log

    # A rerun finds everything done and writes nothing.
    before = outputs(work)
    run_iterations(cfg, reference)
    after = outputs(work)
    assert {k: v for k, v in after.items() if k != "iterations.json"} == {
        k: v for k, v in before.items() if k != "iterations.json"
    }

    # As if killed during iteration 2's labelling: only the missing stages run again, and
    # training resumes from its last checkpoint instead of starting over.
    os.remove(os.path.join(work, "iter2", "labels", "valid.km"))
    os.remove(os.path.join(work, "iter2", "train.done"))
    run_iterations(cfg, reference)
    again = outputs(work)
    assert again["iter2/labels/valid.km"] != before["iter2/labels/valid.km"]
    assert again["iter2/labels/train.km"] == before["iter2/labels/train.km"]
    assert again["iter1/checkpoints/checkpoint_last.pt"] == before["iter1/checkpoints/checkpoint_last.pt"]
    resumed_log = open(os.path.join(work, "iter2", "train.log")).read()[len(train_log):]
    assert "Loaded checkpoint" in resumed_log and "@ 6 updates" in resumed_log

    # Another reference is scored, not answered with the old report.
    run_iterations(cfg, reference_labels(demo_corpus, "event"))
    rescored = outputs(work)
    assert json.load(open(os.path.join(work, "iter1", "quality.json")))["reference"] == "event"
    assert rescored["iter1/labels/train.km"] == again["iter1/labels/train.km"]

    # Asking for other settings in the same work dir is refused, not silently mixed; the message
    # names the stage, the change and what to delete (tests/faults/test_clustering_faults.py has more).
    cfg.clusters = [20, 40]
    with pytest.raises(IterationsError, match=r"iteration 2 k-means was made from other inputs \(n_clusters: 30 -> 40\); "
                       r"delete \S+/iter2/kmeans\.npy \S+/iter2/kmeans\.json \S+/iter2/labels"):
        run_iterations(cfg, reference)
    assert json.load(open(os.path.join(work, "iterations.json")))["clusters"] == [20, 30]  # what was used


FAKE_TRAINING = r"""
import sys
print("{'optimization': {'max_update': 3}}")
print("UserWarning: deprecated keyword in package header", file=sys.stderr)
for i in (1, 2, 3):
    print(f"2026 | INFO | train_inner | epoch 001:  {i} / 3 loss=1.{i}, ntokens=2, num_updates={i}, lr=0.1")
print("2026 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 0.9 | num_updates 3")
sys.exit(int(sys.argv[1]))
"""


def test_run_logged_keeps_the_whole_output_in_the_log_and_the_terminal_quiet(tmp_path, capfd):
    log = tmp_path / "sub" / "train.log"
    command = [sys.executable, "-c", FAKE_TRAINING]
    assert run_logged(command + ["0"], str(log), progress=True, desc="fake") == 0
    captured = capfd.readouterr()
    written = log.read_text()
    assert written.splitlines()[0].startswith("$ ") and "deprecated keyword" in written and "num_updates=3" in written
    terminal = captured.out + captured.err
    assert "3/3" in terminal and "valid_loss=0.9" in terminal  # the bar
    assert "deprecated keyword" not in terminal and "train_inner" not in terminal
    assert run_logged(command + ["3"], str(log), progress=False) == 3
    assert capfd.readouterr().err == "" and log.read_text().count("$ ") == 2  # appended
