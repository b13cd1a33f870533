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
    quality.json (with reference frame labels)  params.json (what each stage was made from)

The terminal shows the stages, progress bars and where the outputs went; the training output
(fairseq's config dump, hydra's warnings, every logged update) goes to ``train.log`` only.

Each stage records what it is made from in ``params.json`` before it runs: for the features,
the sha256 of both manifests and the source (frontend settings, or the sha256 of the previous
checkpoint and the layer); for k-means, the features' record and k, --percent, --max-frames,
--seed, --niter, --n-init, --nredo; for the labels, the records of both; for training, the
labels' record, --config-name, the config file's sha256 and the --train-override list. On a rerun
a stage whose outputs exist is reused when its record is identical and its outputs pass their
checks (shards readable and of this manifest, centroids of the right shape, one label line per
manifest entry); otherwise the run stops naming the stage, what changed (old -> new) and what to
delete to make it again. Outputs are published atomically (``audio_ssl_ext.durable``); training is
done when ``train.done`` exists, and fairseq resumes an interrupted run from ``checkpoint_last.pt``,
so a killed run resumes where it stopped. The work dir is locked while a run uses it, and
``iterations.json`` is written when a run has finished, with the settings it ran with.
"""

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from audio_ssl_ext.clustering.dump import (
    CheckpointFeatures,
    FrontendFeatures,
    check_shards,
    dump_features,
    read_shard_info,
)
from audio_ssl_ext.clustering.kmeans import KMeansError, KMeansModel, learn_kmeans
from audio_ssl_ext.clustering.provenance import describe_changes, digest, existing, sha256_file
from audio_ssl_ext.clustering.pseudo_labels import apply_kmeans
from audio_ssl_ext.clustering.quality import (
    ReferenceLabels,
    align_references,
    cluster_quality,
    read_label_lines,
    references_in_manifest_order,
)
from audio_ssl_ext.clustering.shards import ShardError, check_percent, read_shards, sample_rows, shard_exists
from audio_ssl_ext.data.labels import LabelError, load_label_set
from audio_ssl_ext.data.manifest import ManifestError, read_manifest
from audio_ssl_ext.durable import OutputLock, atomic_write_json, atomic_write_text
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


STAGE_NAMES = {"features": "features", "kmeans": "k-means", "labels": "labels", "train": "training"}


def stage_outputs(directory: str, stage: str) -> List[str]:
    """What a stage writes (deleted to make it again)."""
    return [os.path.join(directory, name) for name in {
        "features": ["features"],
        "kmeans": ["kmeans.npy", "kmeans.json"],
        "labels": ["labels", "quality.json"],
        "train": ["checkpoints", "train.done", "train.log", "tb"],
    }[stage]]


def redo_hint(cfg: "IterationsConfig", iteration: int, stage: str) -> str:
    """Which paths to delete so that ``stage`` of ``iteration`` and what was made from it run again."""
    stages = list(STAGE_NAMES)
    directory = iteration_dir(cfg, iteration)
    paths = [p for later in stages[stages.index(stage):] for p in stage_outputs(directory, later)]
    paths += [iteration_dir(cfg, j) for j in range(iteration + 1, cfg.iterations + 1)]
    paths = existing(paths)
    return f"delete {' '.join(paths)} to make it again" if paths else "rerun to make it"


class Provenance:
    """``params.json`` of one iteration: per stage, what its outputs were made from."""

    def __init__(self, cfg: "IterationsConfig", iteration: int):
        self.cfg, self.iteration = cfg, iteration
        self.directory = iteration_dir(cfg, iteration)
        self.path = os.path.join(self.directory, "params.json")
        self.records = {}
        if os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    self.records = json.load(f)
            except ValueError as err:
                raise IterationsError(f"{self.path}: not readable JSON ({err}); delete {self.directory} to redo the iteration") from err
            if not isinstance(self.records, dict) or not set(self.records) <= set(STAGE_NAMES):
                raise IterationsError(
                    f"{self.path}: not a record of this version's stages (made by an older version?); "
                    f"delete {self.directory} to redo the iteration, or use another work dir"
                )

    def stage(self, stage: str, record: dict, outputs_exist: bool) -> bool:
        """True when the stage's outputs exist and were made from ``record`` (reuse them); False
        when it has to run (its record is written first). Refuses outputs made from anything else."""
        name = f"iteration {self.iteration} {STAGE_NAMES[stage]}"
        if outputs_exist:
            old = self.records.get(stage)
            if old is None:
                raise IterationsError(
                    f"{name}: outputs exist in {self.directory} but {self.path} does not say what they were "
                    f"made from; {redo_hint(self.cfg, self.iteration, stage)}"
                )
            if old != record:
                raise IterationsError(
                    f"{name} was made from other inputs ({describe_changes(old, record)}); "
                    f"{redo_hint(self.cfg, self.iteration, stage)}, or use another work dir"
                )
            return True
        if self.records.get(stage) != record:
            self.records[stage] = record
            os.makedirs(self.directory, exist_ok=True)
            atomic_write_json(self.path, self.records)
        return False

    def check_output(self, stage: str, check) -> None:
        """Run ``check()`` on reused outputs; a failure names the stage and what to delete."""
        try:
            check()
        except (ShardError, KMeansError, LabelError, ManifestError, IterationsError) as err:
            raise IterationsError(
                f"iteration {self.iteration} {STAGE_NAMES[stage]}: the existing output fails its check ({err}); "
                f"{redo_hint(self.cfg, self.iteration, stage)}"
            ) from err


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


def source_record(cfg: IterationsConfig, iteration: int) -> dict:
    if iteration == 1:
        return {"kind": "frontend", "name": cfg.first_feature, "frame_rate": cfg.first_frame_rate, "sample_rate": cfg.sample_rate}
    checkpoint = last_checkpoint(cfg, iteration - 1)
    if not os.path.isfile(checkpoint):
        raise IterationsError(f"{checkpoint}: iteration {iteration - 1} has no checkpoint")
    return {"kind": "checkpoint", "checkpoint_sha256": sha256_file(checkpoint), "layer": layer_of(cfg, checkpoint)}


def manifest_path(cfg: IterationsConfig, split: str) -> str:
    return os.path.join(cfg.manifest_dir, f"{split}.tsv")


def run_iteration(cfg: IterationsConfig, iteration: int, reference: Optional[ReferenceLabels] = None) -> str:
    """All stages of one iteration, each reused when made from the same inputs; returns the last checkpoint."""
    directory = iteration_dir(cfg, iteration)
    n_clusters = cfg.clusters_of(iteration)
    provenance = Provenance(cfg, iteration)
    feat_dir = os.path.join(directory, "features")
    label_dir = os.path.join(directory, "labels")
    km_path = os.path.join(directory, "kmeans.npy")
    manifests = {split: manifest_path(cfg, split) for split in SPLITS}

    features = {"manifests_sha256": {s: sha256_file(m) for s, m in manifests.items()}, "source": source_record(cfg, iteration)}
    dumped = [split for split in SPLITS if shard_exists(feat_dir, split, 0, 1)]
    if provenance.stage("features", features, bool(dumped)):
        provenance.check_output("features", lambda: [check_features(feat_dir, split, manifests[split]) for split in dumped])
        logger.info(f"iteration {iteration}: features of {', '.join(dumped)} in {feat_dir} reused")
    if len(dumped) < len(SPLITS):
        source = feature_source(cfg, iteration)
        for split in SPLITS:
            if split not in dumped:
                dump_features(manifests[split], split, source, feat_dir, progress=cfg.progress)
    shard_info = read_shard_info(feat_dir, "train", 0, 1)
    label_rate, sample_rate = float(shard_info["frame_rate"]), int(shard_info["sample_rate"])

    kmeans = {
        "features": digest(features), "n_clusters": n_clusters, "percent": cfg.percent, "max_frames": cfg.max_frames,
        "seed": cfg.seed, "niter": cfg.niter, "n_init": cfg.n_init, "nredo": cfg.nredo,
    }
    if provenance.stage("kmeans", kmeans, os.path.isfile(km_path)):
        provenance.check_output("kmeans", lambda: check_kmeans(km_path, n_clusters, shard_info["dim"]))
        logger.info(f"iteration {iteration}: k-means {km_path} reused")
    else:
        sample = sample_rows(read_shards(feat_dir, "train", 1), cfg.percent, cfg.max_frames, cfg.seed)
        model = learn_kmeans(
            sample, n_clusters, niter=cfg.niter, n_init=cfg.n_init, nredo=cfg.nredo, seed=cfg.seed, where=feat_dir
        )
        model.info.source = shard_info["source"]
        model.save(km_path)
        logger.info(f"iteration {iteration}: wrote {km_path} (k={n_clusters}, {len(sample)} frames)")

    labels = {"features": digest(features), "kmeans": digest(kmeans)}
    labelled = [split for split in SPLITS if os.path.isfile(os.path.join(label_dir, f"{split}.{LABEL_NAME}"))]
    if provenance.stage("labels", labels, bool(labelled)):
        provenance.check_output("labels", lambda: [
            load_label_set(label_dir, split, LABEL_NAME, read_manifest(manifests[split]), sample_rate, label_rate)
            for split in labelled
        ])
        logger.info(f"iteration {iteration}: labels {', '.join(labelled)} in {label_dir} reused")
    for split in SPLITS:
        if split not in labelled:
            apply_kmeans(feat_dir, split, 1, km_path, label_dir, LABEL_NAME, manifests[split], progress=cfg.progress)

    if reference is not None:
        labels_sha256 = sha256_file(os.path.join(label_dir, f"train.{LABEL_NAME}"))
        if not quality_is_current(directory, reference, labels_sha256):
            write_quality(cfg, directory, label_dir, label_rate, n_clusters, reference, labels_sha256)

    training = {
        "labels": digest(labels), "config_name": cfg.config_name,
        "config_sha256": sha256_file(config_path(cfg)), "train_overrides": list(cfg.train_overrides),
    }
    done = os.path.join(directory, "train.done")
    started = os.path.isfile(done) or os.path.isdir(os.path.join(directory, "checkpoints"))
    if provenance.stage("train", training, started) and os.path.isfile(done):
        provenance.check_output("train", lambda: check_checkpoint(last_checkpoint(cfg, iteration)))
        logger.info(f"iteration {iteration}: training done ({done}), reused")
    else:
        train(cfg, directory, label_dir, label_rate)
        atomic_write_text(done, "")
    return last_checkpoint(cfg, iteration)


def check_features(feat_dir: str, split: str, manifest: str) -> None:
    read_shards(feat_dir, split, 1)
    if check_shards(feat_dir, split, 1, manifest) is None:
        raise ShardError(f"{feat_dir}: no {split}_0_1.json next to the shard (its manifest, source and rates)")


def check_kmeans(km_path: str, n_clusters: int, dim: int) -> None:
    model = KMeansModel.load(km_path)
    if (model.n_clusters, model.dim) != (n_clusters, dim):
        raise KMeansError(f"{km_path}: {model.n_clusters} x {model.dim} centroids, expected {n_clusters} x {dim}")


def check_checkpoint(path: str) -> None:
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise IterationsError(f"{path}: missing or empty")


def path_overrides(cfg: IterationsConfig, directory: str, label_dir: str) -> dict:
    return {
        "common.user_dir": PACKAGE_DIR,
        "task.data": os.path.abspath(cfg.manifest_dir),
        "task.label_dir": os.path.abspath(label_dir),
        "checkpoint.save_dir": os.path.abspath(os.path.join(directory, "checkpoints")),
        "common.tensorboard_logdir": os.path.abspath(os.path.join(directory, "tb")),
    }


def train_command(cfg: IterationsConfig, directory: str, label_dir: str, label_rate: float) -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return command + [
        "--config-dir", os.path.abspath(cfg.config_dir),
        "--config-name", cfg.config_name,
        *(hydra_string(key, path) for key, path in path_overrides(cfg, directory, label_dir).items()),
        f"task.labels=[{LABEL_NAME}]",
        f"task.label_rate={label_rate:g}",
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


def quality_is_current(directory: str, reference: ReferenceLabels, labels_sha256: str) -> bool:
    """quality.json exists and scored these labels against this reference (a rerun may bring
    another reference, and redone labels are other labels)."""
    path = os.path.join(directory, "quality.json")
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError:
        return False  # rewritten below
    return (saved.get("reference"), saved.get("reference_source"), saved.get("labels_sha256")) == (
        reference.name, reference.where, labels_sha256
    )


def write_quality(
    cfg: IterationsConfig,
    directory: str,
    label_dir: str,
    label_rate: float,
    n_clusters: int,
    reference: ReferenceLabels,
    labels_sha256: str,
) -> None:
    manifest = read_manifest(os.path.join(cfg.manifest_dir, "train.tsv"))
    labels = read_label_lines(os.path.join(label_dir, f"train.{LABEL_NAME}"), manifest)
    references = references_in_manifest_order(reference.by_file, manifest, reference.where)
    names = [f"{manifest.path}, line {n}" for n in manifest.line_numbers]
    aligned = align_references(labels, label_rate, references, reference.rate, names)
    report = cluster_quality(labels, n_clusters, aligned)
    path = os.path.join(directory, "quality.json")
    atomic_write_json(path, {
        "reference": reference.name, "reference_source": reference.where, "labels_sha256": labels_sha256, **report.as_dict()
    })
    logger.info(f"{os.path.basename(directory)}: train labels vs {reference.name}: {report.format()} ({path})")


def config_path(cfg: IterationsConfig) -> str:
    return os.path.join(cfg.config_dir, f"{cfg.config_name}.yaml")


def check_inputs(cfg: IterationsConfig) -> None:
    """Everything that can be checked before hours of feature dumping: the manifests (present, not
    empty), the training config, the numeric settings, and every training override as hydra
    will parse it."""
    for split in SPLITS:
        path = manifest_path(cfg, split)
        if not os.path.isfile(path):
            raise IterationsError(f"{cfg.manifest_dir}: no {split}.tsv (scripts/make_manifest.py writes them)")
        if len(read_manifest(path)) == 0:
            raise IterationsError(
                f"{path}: no audio file listed (only the root line); every iteration dumps, labels and "
                f"validates on {split}: rebuild the manifests with scripts/make_manifest.py --valid-percent > 0"
            )
    if not os.path.isfile(config_path(cfg)):
        raise IterationsError(
            f"{config_path(cfg)}: training config not found (--config-dir is the folder of the musicHuBERT "
            f"configs, examples/musichubert in the repository; --config-name one of its files)"
        )
    check_percent(cfg.percent)
    for flag, value, low in (("--iterations", cfg.iterations, 1), ("--niter", cfg.niter, 0), ("--n-init", cfg.n_init, 1),
                             ("--nredo", cfg.nredo, 1), ("--max-frames", cfg.max_frames, -1)):
        if value < low or (flag == "--max-frames" and value == 0):
            raise IterationsError(f"{flag} {value}: must be at least {low}" + (" (-1: no cap), not 0" if flag == "--max-frames" else ""))
    if cfg.nredo > cfg.n_init:
        raise IterationsError(f"--nredo {cfg.nredo} is more than --n-init {cfg.n_init} (the seedings it refines)")
    if not cfg.clusters or min(cfg.clusters) < 1:
        raise IterationsError(f"--clusters {cfg.clusters}: each k must be at least 1")
    for i in range(1, cfg.iterations + 1):  # every iteration's paths, before the first one starts
        directory = iteration_dir(cfg, i)
        label_dir = os.path.join(directory, "labels")
        check_overrides(train_command(cfg, directory, label_dir, 1.0), path_overrides(cfg, directory, label_dir))


def hydra_string(key: str, value: str) -> str:
    """``key='value'``: quoted, so that ``,`` ``=`` ``[`` ``]`` and spaces in a path stay part of it
    (unquoted, hydra reads ``a,b`` as a sweep over two values). In hydra's quoted strings a
    backslash escapes only a quote or another backslash before a quote or the end."""
    escaped = re.sub(r"(\\+)('|$)", lambda m: m.group(1) * 2 + m.group(2), value).replace("'", "\\'")
    return f"{key}='{escaped}'"


def check_overrides(command: List[str], paths: dict) -> None:
    """Parse the command's overrides as fairseq-hydra-train will (hydra's own parser), and check
    that the paths come back as they are; refuses naming the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    for text in command[command.index("--config-name") + 2 :]:
        try:
            override = parser.parse_override(text)
        except Exception as err:  # hydra's OverrideParseException and grammar errors
            raise IterationsError(
                f"training override {text!r} does not parse in hydra ({str(err).splitlines()[0]}): quote a value "
                f"holding , = [ ] ' or spaces: key='value'"
            ) from None
        value = override.value()
        if isinstance(value, (ChoiceSweep, RangeSweep, IntervalSweep, Glob)):
            raise IterationsError(
                f"training override {text!r} is a sweep for hydra (an unquoted , or range): quote the value: key='a,b'"
            )
        path = paths.get(override.key_or_group)
        if path is not None and ("${" in path or value != path):
            raise IterationsError(
                f"{path}: this path does not pass through hydra's override parser unchanged "
                f"(it reads {value!r}; ${{...}} is an interpolation): move it or link it under a plain name"
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
    with OutputLock(cfg.work_dir):
        checkpoints = []
        for i in range(1, cfg.iterations + 1):
            logger.info(f"iteration {i} of {cfg.iterations}: {iteration_dir(cfg, i)}")
            checkpoints.append(run_iteration(cfg, i, reference))
        # Only now: every stage ran with (or was reused as made with) these settings.
        settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
        atomic_write_json(os.path.join(cfg.work_dir, "iterations.json"), settings)
    return checkpoints
