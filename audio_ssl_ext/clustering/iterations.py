"""HuBERT's iterations end to end: features -> k-means -> labels -> train, again on the new model.

Iteration 1 clusters a frontend's features (MFCC at 100 Hz, k=100 by default); iteration i > 1
clusters layer L of iteration i-1's last checkpoint (k=500 by default) at the model's frame rate.
Each iteration trains with ``fairseq-hydra-train`` (the user's own command, as a subprocess) on
the labels it made, with a config from ``config_dir`` (``examples/musichubert`` in the repository;
nothing is looked up beside the package, so an installed package works the same). Everything lives
under ``work_dir/iter{i}/``::

    features/{train,valid}_0_1.{npy,len,json}   kmeans.npy + kmeans.json
    labels/{train,valid}.km + dict.km.txt       checkpoints/ (+ hydra_train.log)   tb/
    train.log (the whole output of training)    train.done
    quality.json (with reference frame labels)  params.json (what this iteration was asked for)

The terminal shows the stages, progress bars and where the outputs went; the training output
(fairseq's config dump, hydra's warnings, every logged update) goes to ``train.log`` only.

Every stage is skipped when its outputs exist (each is written under a temporary name and renamed
when complete; training is done when ``train.done`` exists, and fairseq resumes an interrupted
run from ``checkpoint_last.pt``), so a killed run resumes where it stopped. ``params.json`` makes
a rerun with other settings fail loudly instead of reusing outputs made with the old ones.
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from audio_ssl_ext.clustering.dump import CheckpointFeatures, FrontendFeatures, dump_features, read_shard_info
from audio_ssl_ext.clustering.kmeans import learn_kmeans
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans
from audio_ssl_ext.clustering.quality import (
    ReferenceLabels,
    align_references,
    cluster_quality,
    read_label_lines,
    references_in_manifest_order,
)
from audio_ssl_ext.clustering.shards import read_shards, sample_rows, shard_exists
from audio_ssl_ext.data.manifest import read_manifest
from audio_ssl_ext.logged_run import log_tail, run_logged

logger = logging.getLogger(__name__)

LABEL_NAME = "km"
SPLITS = ("train", "valid")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fairseq's common.user_dir


@dataclass
class IterationsConfig:
    manifest_dir: str  # train.tsv and valid.tsv
    work_dir: str
    config_dir: str  # the training configs (examples/musichubert in the repository)
    iterations: int = 2
    clusters: List[int] = field(default_factory=lambda: [100, 500])  # per iteration; the last repeats
    first_feature: str = "mfcc"  # frontend of iteration 1
    first_frame_rate: float = 100.0  # HuBERT's MFCC labels: 100 Hz
    sample_rate: int = 16000
    layer: Optional[int] = None  # layer of the previous model (default: half its depth, HuBERT's 6 of 12)
    config_name: str = "tiny"
    train_overrides: List[str] = field(default_factory=list)
    percent: float = -1.0  # of the training utterances used to learn k-means (-1: all)
    max_frames: int = 1_000_000  # cap on the frames k-means is learned from
    niter: int = 20
    n_init: int = 3
    nredo: int = 1
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def clusters_of(self, iteration: int) -> int:
        return self.clusters[min(iteration, len(self.clusters)) - 1]


class IterationsError(RuntimeError):
    pass


def iteration_dir(cfg: IterationsConfig, iteration: int) -> str:
    return os.path.join(cfg.work_dir, f"iter{iteration}")


def last_checkpoint(cfg: IterationsConfig, iteration: int) -> str:
    return os.path.join(iteration_dir(cfg, iteration), "checkpoints", "checkpoint_last.pt")


def check_params(directory: str, params: dict) -> None:
    """Record what the iteration is asked for; refuse a rerun that asks for something else."""
    path = os.path.join(directory, "params.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != params:
            changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
            raise IterationsError(
                f"{path}: this iteration was run with other settings ({', '.join(changed)}: "
                f"{[previous.get(k) for k in changed]} then, {[params.get(k) for k in changed]} now); "
                f"remove {directory} to redo it, or use another work dir"
            )
        return
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(params, f, indent=2)
        f.write("\n")


def feature_source(cfg: IterationsConfig, iteration: int):
    if iteration == 1:
        return FrontendFeatures(cfg.first_feature, cfg.sample_rate, cfg.first_frame_rate, device=cfg.device)
    checkpoint = last_checkpoint(cfg, iteration - 1)
    if not os.path.isfile(checkpoint):
        raise IterationsError(f"{checkpoint}: iteration {iteration - 1} has no checkpoint")
    return CheckpointFeatures(checkpoint, layer_of(cfg, checkpoint), device=cfg.device)


def layer_of(cfg: IterationsConfig, checkpoint: str) -> int:
    if cfg.layer is not None:
        return cfg.layer
    from audio_ssl_ext.downstream.load import read_checkpoint

    layers = int(read_checkpoint(checkpoint)["cfg"].model.encoder_layers)
    return max(1, layers // 2)


def source_params(cfg: IterationsConfig, iteration: int) -> dict:
    if iteration == 1:
        return {"feature": cfg.first_feature, "frame_rate": cfg.first_frame_rate, "sample_rate": cfg.sample_rate}
    return {"checkpoint": last_checkpoint(cfg, iteration - 1), "layer": cfg.layer}


def run_iteration(cfg: IterationsConfig, iteration: int, reference: Optional[ReferenceLabels] = None) -> str:
    """All stages of one iteration, each skipped when done; returns the last checkpoint."""
    directory = iteration_dir(cfg, iteration)
    n_clusters = cfg.clusters_of(iteration)
    check_params(directory, {"source": source_params(cfg, iteration), "n_clusters": n_clusters})
    feat_dir = os.path.join(directory, "features")
    label_dir = os.path.join(directory, "labels")
    km_path = os.path.join(directory, "kmeans.npy")

    if all(shard_exists(feat_dir, split, 0, 1) for split in SPLITS):
        logger.info(f"iteration {iteration}: features in {feat_dir} exist, skipped")
    else:
        source = feature_source(cfg, iteration)
        for split in SPLITS:
            if not shard_exists(feat_dir, split, 0, 1):
                manifest = os.path.join(cfg.manifest_dir, f"{split}.tsv")
                dump_features(manifest, split, source, feat_dir, progress=cfg.progress)
    label_rate = float(read_shard_info(feat_dir, "train", 0, 1)["frame_rate"])

    if os.path.isfile(km_path):
        logger.info(f"iteration {iteration}: k-means {km_path} exists, skipped")
    else:
        sample = sample_rows(read_shards(feat_dir, "train", 1), cfg.percent, cfg.max_frames, cfg.seed)
        model = learn_kmeans(
            sample, n_clusters, niter=cfg.niter, n_init=cfg.n_init, nredo=cfg.nredo, seed=cfg.seed, where=feat_dir
        )
        model.info.source = read_shard_info(feat_dir, "train", 0, 1)["source"]
        model.save(km_path)
        logger.info(f"iteration {iteration}: wrote {km_path} (k={n_clusters}, {len(sample)} frames)")

    for split in SPLITS:
        if os.path.isfile(os.path.join(label_dir, f"{split}.{LABEL_NAME}")):
            logger.info(f"iteration {iteration}: labels {split}.{LABEL_NAME} exist, skipped")
            continue
        apply_kmeans(
            feat_dir, split, 1, km_path, label_dir, LABEL_NAME,
            os.path.join(cfg.manifest_dir, f"{split}.tsv"), progress=cfg.progress,
        )

    if reference is not None and not quality_is_current(directory, reference):
        write_quality(cfg, directory, label_dir, label_rate, n_clusters, reference)

    done = os.path.join(directory, "train.done")
    if os.path.isfile(done):
        logger.info(f"iteration {iteration}: training done ({done}), skipped")
    else:
        train(cfg, directory, label_dir, label_rate)
        open(done, "w").close()
    return last_checkpoint(cfg, iteration)


def train_command(cfg: IterationsConfig, directory: str, label_dir: str, label_rate: float) -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return command + [
        "--config-dir", os.path.abspath(cfg.config_dir),
        "--config-name", cfg.config_name,
        f"common.user_dir={PACKAGE_DIR}",
        f"task.data={os.path.abspath(cfg.manifest_dir)}",
        f"task.label_dir={os.path.abspath(label_dir)}",
        f"task.labels=[{LABEL_NAME}]",
        f"task.label_rate={label_rate:g}",
        f"checkpoint.save_dir={os.path.abspath(os.path.join(directory, 'checkpoints'))}",
        f"common.tensorboard_logdir={os.path.abspath(os.path.join(directory, 'tb'))}",
        *cfg.train_overrides,
    ]


def train(cfg: IterationsConfig, directory: str, label_dir: str, label_rate: float) -> None:
    command = train_command(cfg, directory, label_dir, label_rate)
    log_path = os.path.join(directory, "train.log")
    logger.info(f"training with {cfg.config_dir}/{cfg.config_name}.yaml (whole output: {log_path})")
    returncode = run_logged(command, log_path, cfg.progress, desc=f"{os.path.basename(directory)} training")
    if returncode != 0:
        raise IterationsError(f"training failed (exit {returncode}); end of {log_path}:\n{log_tail(log_path)}")
    if not os.path.isfile(os.path.join(directory, "checkpoints", "checkpoint_last.pt")):
        raise IterationsError(f"training finished without {directory}/checkpoints/checkpoint_last.pt")


def quality_is_current(directory: str, reference: ReferenceLabels) -> bool:
    """quality.json exists and was scored against this reference (a rerun may bring another)."""
    path = os.path.join(directory, "quality.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        saved = json.load(f)
    return (saved.get("reference"), saved.get("reference_source")) == (reference.name, reference.where)


def write_quality(
    cfg: IterationsConfig, directory: str, label_dir: str, label_rate: float, n_clusters: int, reference: ReferenceLabels
) -> None:
    manifest = read_manifest(os.path.join(cfg.manifest_dir, "train.tsv"))
    labels = read_label_lines(os.path.join(label_dir, f"train.{LABEL_NAME}"), manifest)
    references = references_in_manifest_order(reference.by_file, manifest, reference.where)
    names = [f"{manifest.path}, line {n}" for n in manifest.line_numbers]
    aligned = align_references(labels, label_rate, references, reference.rate, names)
    report = cluster_quality(labels, n_clusters, aligned)
    path = os.path.join(directory, "quality.json")
    with open(path + ".partial", "w") as f:
        json.dump({"reference": reference.name, "reference_source": reference.where, **report.as_dict()}, f, indent=2)
        f.write("\n")
    os.replace(path + ".partial", path)
    logger.info(f"{os.path.basename(directory)}: train labels vs {reference.name}: {report.format()} ({path})")


def check_inputs(cfg: IterationsConfig) -> None:
    """The manifests and the training config exist (before any work is done)."""
    for split in SPLITS:
        if not os.path.isfile(os.path.join(cfg.manifest_dir, f"{split}.tsv")):
            raise IterationsError(f"{cfg.manifest_dir}: no {split}.tsv (scripts/make_manifest.py writes them)")
    config = os.path.join(cfg.config_dir, f"{cfg.config_name}.yaml")
    if not os.path.isfile(config):
        raise IterationsError(
            f"{config}: training config not found (--config-dir is the folder of the musicHuBERT "
            f"configs, examples/musichubert in the repository; --config-name one of its files)"
        )


def dry_run(cfg: IterationsConfig) -> str:
    """Check the inputs and let fairseq-hydra-train compose iteration 1's training config
    (hydra's ``--cfg job``: nothing is trained or written); returns the composed config."""
    check_inputs(cfg)
    directory = iteration_dir(cfg, 1)
    command = train_command(cfg, directory, os.path.join(directory, "labels"), cfg.first_frame_rate) + ["--cfg", "job"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise IterationsError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def run_iterations(cfg: IterationsConfig, reference: Optional[ReferenceLabels] = None) -> List[str]:
    """Run iterations 1..cfg.iterations; returns each iteration's last checkpoint. With
    ``reference``, each iteration's train labels are scored against it (``quality.json``)."""
    check_inputs(cfg)
    os.makedirs(cfg.work_dir, exist_ok=True)
    with open(os.path.join(cfg.work_dir, "iterations.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
        f.write("\n")
    checkpoints = []
    for i in range(1, cfg.iterations + 1):
        logger.info(f"iteration {i} of {cfg.iterations}: {iteration_dir(cfg, i)}")
        checkpoints.append(run_iteration(cfg, i, reference))
    return checkpoints
