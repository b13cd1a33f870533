"""Probe benchmark: frozen embeddings + HEAR's shallow classifier, several seeds, CIs, s(m).

For each model (checkpoints, the random-init model of each checkpoint's config, log-mel
statistics) and each HEAR-format scene task: one embedding per clip (the mean over time of every
hidden state), then for each seed a classifier as in HEAR's evaluation kit: embeddings
standardised with the training split's statistics, one hidden layer of 1024 units with ReLU and
dropout 0.1, Adam (lr 1e-3), cross-entropy, early stopping on validation accuracy (patience 20
epochs, the best epoch's weights kept), test accuracy. Per task: the mean over seeds and a 95%
confidence interval (Student t over the seeds). Overall: the normalised score of the MW-MAE paper,

    s(m) = 100 / |T| * sum_t (x_t(m) - min_u x_t(u)) / (max_u x_t(u) - min_u x_t(u)),

min and max over the models compared, so 100 = best on every task and 0 = worst on every task.

``layer`` picks the hidden state the classifier sees: an index, ``last``, ``mean`` (of all
layers), or ``weighted`` (a softmax weighting of the layers learned with the classifier, as
s3prl's Featurizer).
"""

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from audio_ssl_ext.data.audio import read_audio
from audio_ssl_ext.downstream.hear_tasks import SAMPLE_RATE, read_hear_task

logger = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    hidden_dim: int = 1024
    dropout: float = 0.1
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 500
    patience: int = 20  # epochs without a better validation accuracy before stopping
    seeds: int = 5
    layer: str = "weighted"


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------

Embedder = Callable[[List[np.ndarray]], np.ndarray]  # clips of one length -> (N, layers, D)


def checkpoint_embedder(model) -> Embedder:
    """Mean over real frames of every hidden state of a ``DownstreamModel``."""

    def embed(clips: List[np.ndarray]) -> np.ndarray:
        out = model.extract_features([torch.from_numpy(c) for c in clips], sample_rate=SAMPLE_RATE)
        frames = torch.arange(out.hidden_states[0].size(1))[None, :] < out.lengths[:, None]
        weight = (frames.float() / frames.sum(1, keepdim=True).clamp_min(1))[..., None].to(out.hidden_states[0].device)
        return torch.stack([(h * weight).sum(1) for h in out.hidden_states], dim=1).cpu().numpy()

    return embed


def utterance_embedder(model) -> Embedder:
    """The pooled utterance embedding of a ``DownstreamModel`` whose learner has one."""

    def embed(clips: List[np.ndarray]) -> np.ndarray:
        out = model.utterance_embedding([torch.from_numpy(c) for c in clips], sample_rate=SAMPLE_RATE)
        return out[:, None].cpu().numpy()

    return embed


def logmel_statistics_embedder() -> Embedder:
    """The classic baseline: mean and standard deviation over time of an 80-band log-mel."""
    from audio_ssl_ext.features import LogMelSpectrogram

    frontend = LogMelSpectrogram(sample_rate=SAMPLE_RATE, n_mels=80)

    def embed(clips: List[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            mel = frontend(torch.from_numpy(np.stack(clips)))
        return torch.cat([mel.mean(1), mel.std(1)], dim=-1)[:, None].numpy()

    return embed


def embed_split(embedder: Embedder, paths: Sequence[str], batch_size: int = 32, desc: str = "") -> np.ndarray:
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, leave=False):
        clips = []
        for path in paths[start : start + batch_size]:
            clips.append(read_audio(path, expected_sample_rate=SAMPLE_RATE))
        if len({len(c) for c in clips}) > 1:  # HEAR scene tasks have fixed-length clips; be safe
            out += [embedder([c]) for c in clips]
        else:
            out.append(embedder(clips))
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The shallow classifier
# ---------------------------------------------------------------------------------------------


class ShallowClassifier(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_classes: int, cfg: ProbeConfig, layer_weights: bool):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers)) if layer_weights else None
        self.mlp = nn.Sequential(
            nn.Linear(dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, layers, D)
        if self.layer_logits is not None:
            x = (torch.softmax(self.layer_logits, 0)[None, :, None] * x).sum(1)
        else:
            x = x[:, 0]
        return self.mlp(x)


def select_layer(x: np.ndarray, layer: str) -> np.ndarray:
    """(N, L, D) -> (N, L', D): one layer, the mean, or all (``weighted``). Single-layer
    embeddings (the log-mel baseline) pass through whatever ``layer`` says."""
    if layer == "weighted" or x.shape[1] == 1:
        return x
    if layer == "mean":
        return x.mean(axis=1, keepdims=True)
    index = x.shape[1] - 1 if layer == "last" else int(layer)
    if not -x.shape[1] <= index < x.shape[1]:
        raise ValueError(f"layer={layer} is out of range: the embeddings have {x.shape[1]} layers")
    return x[:, index : index + 1]


def train_classifier(splits: Dict[str, Tuple[np.ndarray, np.ndarray]], num_classes: int, cfg: ProbeConfig,
                     seed: int) -> Dict[str, float]:
    """Fit on train, stop early on valid; returns the accuracies (and the epochs run)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train = select_layer(splits["train"][0], cfg.layer)
    mean, std = x_train.mean(axis=0, keepdims=True), x_train.std(axis=0, keepdims=True) + 1e-6
    data = {k: (torch.from_numpy((select_layer(x, cfg.layer) - mean) / std).float(), torch.from_numpy(y).long())
            for k, (x, y) in splits.items()}
    model = ShallowClassifier(x_train.shape[1], x_train.shape[2], num_classes, cfg, cfg.layer == "weighted")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best, best_state, waited, epochs = -1.0, None, 0, 0
    x, y = data["train"]
    for epochs in range(1, cfg.max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(cfg.batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        valid = accuracy(model, *data["valid"])
        if valid > best:
            best, waited = valid, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    result = {"train": accuracy(model, *data["train"]), "valid": best, "test": accuracy(model, *data["test"]),
              "epochs": epochs}
    if model.layer_logits is not None:
        result["layer_weights"] = torch.softmax(model.layer_logits.detach(), 0).tolist()
    return result


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).float().mean())


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def confidence_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """Mean and half-width of the Student-t interval over seeds (0 for a single value)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0
    sem = values.std(ddof=1) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def normalized_scores(means: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """s(m) of the MW-MAE paper over ``means[model][task]`` (see the module docstring). A task on
    which every model scores the same adds 0 for all (it separates no one)."""
    models = list(means)
    tasks = sorted({t for m in models for t in means[m]})
    scores = {m: 0.0 for m in models}
    for task in tasks:
        values = [means[m][task] for m in models]
        low, high = min(values), max(values)
        for m in models:
            scores[m] += 0.0 if high == low else (means[m][task] - low) / (high - low)
    return {m: 100.0 * s / len(tasks) for m, s in scores.items()}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


LOGMEL_NAME = "log-mel stats"
RANDOM_INIT_SUFFIX = " (random init)"


def check_model_names(checkpoints: Sequence[Tuple[str, str]]) -> None:
    """Each model's row of the table is keyed by its name: two checkpoints of one name (two
    ``checkpoint_last.pt`` from different runs) would leave one model out. Refuse them, and names
    that the baselines take."""
    seen: Dict[str, str] = {}
    for name, path in checkpoints:
        if name in seen:
            raise ValueError(
                f"checkpoints {seen[name]} and {path} are both named {name!r}: name them apart with "
                f"--checkpoint NAME=PATH"
            )
        if name == LOGMEL_NAME or name.endswith(RANDOM_INIT_SUFFIX):
            raise ValueError(f"checkpoint {path}: the name {name!r} is taken by a baseline; choose another")
        seen[name] = path


def run_probe(task_dirs: Sequence[str], embedders: Dict[str, Embedder], cfg: ProbeConfig) -> dict:
    results = {"config": asdict(cfg), "tasks": {}, "models": list(embedders)}
    for task_dir in task_dirs:
        task = os.path.basename(os.path.normpath(task_dir))
        split_files = {split: read_hear_task(task_dir, split) for split in ("train", "valid", "test")}
        num_classes = len(split_files["train"][2])
        results["tasks"][task] = {}
        for name, embedder in embedders.items():
            logger.info("%s: embedding with %s", task, name)
            splits = {split: (embed_split(embedder, paths, desc=f"{task} {split} {name}"), targets)
                      for split, (paths, targets, _) in split_files.items()}
            runs = [train_classifier(splits, num_classes, cfg, seed) for seed in range(cfg.seeds)]
            mean, half = confidence_interval([r["test"] for r in runs])
            results["tasks"][task][name] = {"test_mean": mean, "test_ci95": half, "runs": runs}
            logger.info("%s | %s: test accuracy %.3f +- %.3f (%d seeds)", task, name, mean, half, cfg.seeds)
    means = {m: {t: results["tasks"][t][m]["test_mean"] for t in results["tasks"]} for m in embedders}
    results["normalized_score"] = normalized_scores(means)
    return results


def markdown_table(results: dict) -> str:
    tasks = list(results["tasks"])
    lines = ["| model | " + " | ".join(tasks) + " | s(m) |", "|---" * (len(tasks) + 2) + "|"]
    for model in results["models"]:
        cells = [f"{100 * results['tasks'][t][model]['test_mean']:.1f} ± {100 * results['tasks'][t][model]['test_ci95']:.1f}"
                 for t in tasks]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {results['normalized_score'][model]:.1f} |")
    seeds, layer = results["config"]["seeds"], results["config"]["layer"]
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± 95% CI over {seeds} seeds; layer: {layer}; "
                 "s(m): the MW-MAE paper's normalised score across the models above.")
    return "\n".join(lines)


def plot_results(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, models = list(results["tasks"]), results["models"]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(tasks), 4))
    for i, model in enumerate(models):
        means = [100 * results["tasks"][t][model]["test_mean"] for t in tasks]
        errors = [100 * results["tasks"][t][model]["test_ci95"] for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width, means, width, yerr=errors, capsize=3,
               label=f"{model} (s={results['normalized_score'][model]:.0f})")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2)
    ax.set_xticklabels(tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict, out_dir: str) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"probe.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(results) + "\n")
    plot_results(results, paths["png"])
    return paths
