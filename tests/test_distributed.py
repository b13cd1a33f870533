"""fairseq's distributed trainer on CPUs (gloo), through fairseq-hydra-train: for every learner, two
processes that each see different batches end with the same parameters and EMA teachers on both
ranks, equal to one process that sees both ranks' batches in each update (update_freq=[2])."""

import os
import socket

import pytest
import torch

from tests.test_music_hubert import make_labels
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train

UPDATES = 3
CALLBACK = "+hydra.callbacks.cpu_distributed._target_=audio_ssl_ext.cpu_distributed.CpuDistributed"

# learner: (examples/ folder, config, overrides). Layerdrop and dropout draw from each process's
# own random stream (fairseq seeds every rank alike at each update, trainer.py:1371), so a rank's
# second batch gets other draws than the same batch second in one process: off here. Layerdrop also
# leaves parameters without gradients on one rank only, which DDP cannot reduce
# (find_unused_parameters=true is needed for it on a cluster).
LEARNERS = {
    "musichubert": ("musichubert", "tiny", []),
    "music2vec": ("music2vec", "tiny", [
        "model.dropout=0", "model.attention_dropout=0", "model.encoder_layerdrop=0",
        "++lr_scheduler.max_update=40",  # tri_stage needs >= 10 updates of schedule
    ]),
    "mwmae": ("mwmae", "tiny", []),
    "mae": ("mwmae", "mae_tiny", []),
    "audiojepa": ("audiojepa", "tiny", ["model.ema_anneal_end_step=40"]),
    # phase 1 freezes Content: its parameters get no gradient, which DDP must be told about
    "jooci": ("jooci", "tiny", ["model.content_frozen_updates=1", "distributed_training.find_unused_parameters=true"]),
}
NEEDS_LABELS = {"musichubert", "jooci"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def labels(demo_manifest_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dist_labels"))
    make_labels(demo_manifest_dir, root, "km", "mfcc", 16)
    return root


def overrides(learner, data, labels, save_dir, world_size):
    folder, config, extra = LEARNERS[learner]
    args = [
        f"task.data={data}", f"checkpoint.save_dir={save_dir}", "common.tensorboard_logdir=null",
        f"optimization.max_update={UPDATES}", "dataset.disable_validation=true",
        f"distributed_training.distributed_world_size={world_size}", *extra,
    ]
    if learner in NEEDS_LABELS:
        args.append(f"task.label_dir={labels}")
    return folder, config, args


def train_two_ranks(learner, data, labels, save_dir):
    """fairseq-hydra-train spawns two gloo workers; rank r trains on batches r, r + 2, ..."""
    folder, config, args = overrides(learner, data, labels, save_dir, 2)
    args += [f"distributed_training.distributed_port={free_port()}", CALLBACK]
    proc, _ = run_fairseq_hydra_train(os.path.join(REPO_ROOT, "examples", folder), config, args, timeout=300)
    return proc.stdout + proc.stderr


def train_one_process(learner, data, labels, save_dir):
    """The same global batches in one process: fairseq shards batch i to rank i % world_size and
    groups update_freq consecutive batches, so update_freq=[2] sees batches 2k and 2k+1 in update
    k, as the two ranks do. In-process (fairseq_cli.train.main), as fairseq-hydra-train calls it."""
    from fairseq_cli.train import main

    folder, config, args = overrides(learner, data, labels, save_dir, 1)
    args += ["optimization.update_freq=[2]", f"common.user_dir={os.path.join(REPO_ROOT, 'audio_ssl_ext')}"]
    main(compose_example_config(folder, config, args))


def load(path):
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    assert state["optimizer_history"][-1]["num_updates"] == UPDATES
    return state["model"]


# JOOCI computes statistics per forward and reduces them over the ranks: the DINO centre (two ranks
# move it once per update by the global batch's mean; one process with update_freq=[2] twice, by
# each half's) and the Other encoder's masked SyncBatchNorm (two ranks normalise over the global
# batch, one process over each half; its running statistics then also count other batches).
# Gradient accumulation and data parallelism differ there by design, and Adam turns the slightly
# different gradients into parameter differences of about one lr step. A single process over one
# doubled batch (dataset.max_tokens x 2) is no closer (all parameters differ, by up to 4e-4).
PER_FORWARD_STATISTICS = {"jooci": ("center", "running_mean", "running_var", "num_batches_tracked")}
# Every other learner is bit-exact: DDP divides each rank's gradient by 2 and sums two of them
# (exact in binary floating point), fairseq then multiplies by 2 / sample_size where one process
# multiplies the sum of the same two gradients by 1 / sample_size; forwards see the same batches,
# masks are seeded by (seed, update, sample id) and nothing else draws random numbers here.
LOOSE_ATOL = {"jooci": 2e-3}  # tiny's lr is 3e-4


@pytest.mark.integration
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_two_ranks_agree_with_each_other_and_with_one_process(learner, demo_manifest_dir, labels, tmp_path, monkeypatch):
    ranks = tmp_path / "ranks"
    monkeypatch.setenv("AUDIO_SSL_EXT_RANK_STATE_DIR", str(ranks))  # every rank dumps its state
    log = train_two_ranks(learner, demo_manifest_dir, labels, tmp_path / "two")
    monkeypatch.delenv("AUDIO_SSL_EXT_RANK_STATE_DIR")
    assert "training on 2 devices" in log, log[-3000:]
    train_one_process(learner, demo_manifest_dir, labels, tmp_path / "one")

    two = load(tmp_path / "two" / "checkpoint_last.pt")  # rank 0 saves
    one = load(tmp_path / "one" / "checkpoint_last.pt")
    rank0 = torch.load(ranks / f"rank0_update{UPDATES}.pt")
    rank1 = torch.load(ranks / f"rank1_update{UPDATES}.pt")
    assert sorted(two) == sorted(one) == sorted(rank0) == sorted(rank1)
    if learner not in ("musichubert", "mwmae", "mae"):  # the learners with an EMA teacher
        assert any(k.startswith("_teacher.") for k in two)
    skip = PER_FORWARD_STATISTICS.get(learner, ())
    atol, rtol = (LOOSE_ATOL[learner], 1e-5) if learner in LOOSE_ATOL else (0.0, 0.0)
    for name in two:
        # the ranks hold the same state, bit for bit (students, EMA teachers, buffers)
        assert torch.equal(rank0[name], rank1[name]), f"{learner}: {name} differs across ranks"
        assert torch.equal(rank0[name], two[name]), f"{learner}: {name}: the checkpoint is not rank 0's state"
        if not name.endswith(skip):
            torch.testing.assert_close(two[name], one[name], rtol=rtol, atol=atol, msg=f"{learner}: {name} vs one process")


def torchrun_command():
    import sys

    return [os.path.join(os.path.dirname(sys.executable), "torchrun")]


@pytest.mark.integration
def test_torchrun_with_legacy_ddp(demo_manifest_dir, tmp_path):
    """torchrun starts the processes (fairseq reads RANK/WORLD_SIZE, env://) and legacy_ddp reduces
    the gradients: both ranks end alike and rank 0 saves."""
    import subprocess

    from tests.utils import fairseq_hydra_train_command

    _, config, args = overrides("mwmae", demo_manifest_dir, None, tmp_path / "ckpt", 2)
    command = torchrun_command() + ["--nproc_per_node=2", f"--master_port={free_port()}"]
    script = fairseq_hydra_train_command()
    command += script if len(script) == 1 else ["-m", "fairseq_cli.hydra_train"]
    command += ["--config-dir", os.path.join(REPO_ROOT, "examples", "mwmae")]
    command += ["--config-name", config, *args, "distributed_training.ddp_backend=legacy_ddp", CALLBACK]
    env = dict(os.environ, AUDIO_SSL_EXT_RANK_STATE_DIR=str(tmp_path / "ranks"), OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "distributed init (rank 1): env://" in log, log[-3000:]
    rank0 = torch.load(tmp_path / "ranks" / f"rank0_update{UPDATES}.pt")
    rank1 = torch.load(tmp_path / "ranks" / f"rank1_update{UPDATES}.pt")
    saved = load(tmp_path / "ckpt" / "checkpoint_last.pt")
    for name in saved:
        assert torch.equal(rank0[name], rank1[name]) and torch.equal(rank0[name], saved[name]), name


def _gather(rank, init_file, out_dir):
    from fairseq.distributed import utils as distributed_utils

    import audio_ssl_ext  # noqa: F401  (the patches)

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", world_size=2, rank=rank)
    gathered = distributed_utils.all_gather_list({"rank": rank, "t": torch.full((2,), float(rank))})
    torch.save(gathered, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_all_gather_list_on_gloo(tmp_path):
    """fairseq's all_gather_list (logging outputs that cannot be summed) allocates CUDA buffers;
    on the CPU it gathers over gloo."""
    torch.multiprocessing.spawn(_gather, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        gathered = torch.load(tmp_path / f"{rank}.pt")
        assert [g["rank"] for g in gathered] == [0, 1]
        assert torch.equal(gathered[1]["t"], torch.ones(2))


@pytest.mark.smoke
def test_without_the_callback_the_error_says_what_is_missing(demo_manifest_dir, tmp_path):
    import subprocess

    from tests.utils import fairseq_hydra_train_command

    _, config, args = overrides("mwmae", demo_manifest_dir, None, tmp_path / "ckpt", 2)
    command = fairseq_hydra_train_command() + ["--config-dir", os.path.join(REPO_ROOT, "examples", "mwmae")]
    command += ["--config-name", config, *args, f"distributed_training.distributed_port={free_port()}"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "audio_ssl_ext.cpu_distributed.CpuDistributed" in proc.stdout + proc.stderr
