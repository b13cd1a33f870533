#!/usr/bin/env python
"""Training cost of each learner against the closest stock model, on the same batch, side by side.

One training step = criterion forward (the model's masking, frontend, teacher, losses and
logging outputs) + backward + Adam step + ``set_num_updates`` (where EMA teachers move), as
fairseq's trainer runs it, minus the trainer's own bookkeeping, which is the same for both.

    learner        stock model it is compared with
    music_hubert   fairseq's HubertModel and ``hubert`` criterion (same config fields, same labels)
    music2vec      fairseq's Data2VecAudioModel (fairseq.examples.data2vec) and ``model`` criterion
    mw_mae         our MAE baseline ``audio_mae`` (mae_tiny / mae_base: same sizes, global attention)
    audio_jepa     ``audio_mae`` with Audio-JEPA's encoder, patches and crop (a plain ViT MAE step)
    jooci          musicHuBERT's config of the same size on the same labels (JOOCI adds its Other
                   branch by design: this ratio is its price, not an overhead)

Both models of a pair are built in this process and timed in interleaved pairs (which runs first
alternates), and the median of the per-pair ratios is printed, by wall clock and by this
process's CPU time: shared machines are noisy, so only a ratio measured side by side means
anything. The last line has a fixed form, our cost / stock cost per learner:

    train_bench: shape=tiny music_hubert=1.01 music2vec=0.97 ...

``--profile LEARNER`` prints torch.profiler's top operators for one step of ours and of the stock.

``--data`` measures the data path instead: items per second through fairseq's batch iterator
with ``dataset.num_workers`` 0 and 2, on 5 s files and on 10 min files (only the crop should be
read), and the fraction of a tiny and a small training loop's time spent waiting for the next
batch. Its last line: ``train_bench: data musichubert_short_w0=... wait_musichubert_tiny_w0=0.003 ...``.

Each learner's line also gives our step's FLOPs (torch's FlopCounterMode: matmuls and convolutions,
forward and backward) and the TFLOP/s achieved; with ``--peak-tflops`` the model FLOPs utilization;
and the FLOP ratio to the stock step, with the wall ratio divided by it: near 1 where a learner is
slower only by the arithmetic its method adds (Audio-JEPA's target encoder, JOOCI's Other branch).
On a GPU: ``--device cuda --bf16 --shapes base --peak-tflops 989``.

``--shapes small`` is the study's size (``make study``): each learner's tiny.yaml with
``audio_ssl_ext.tools.study.SMALL``'s overrides, and the stock model with the same table's.

Usage: python scripts/train_bench.py [--shapes tiny small base] [--learners ...] [--pairs 10] [--threads 2] [--data]
"""

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from audio_ssl_ext.tools.timing import interleaved_pairs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")

# Per shape: (batch size, crop samples for the waveform learners). Base runs a small batch and a
# 2 s crop (JOOCI 4 s: its global crops) so that a CPU gets through a few steps; the patch
# learners' crop is fixed by their config (input_frames). small is the study's size: tiny.yaml
# with audio_ssl_ext.tools.study.SMALL's overrides, and the batch those give (None: the config's
# batch_size, or max_tokens over the crop; 16 spectrograms or 8 waveform crops).
SHAPES = {"tiny": (8, 32000), "small": (None, 32000), "base": (2, 32000)}


@dataclasses.dataclass
class Pair:
    learner: str
    config_dir: str
    stock_config_dir: str
    stock_config: Callable[[str], str]  # shape -> config name
    stock_kind: str  # "hubert" | "data2vec_audio" | "same" (a registered model of ours)
    families: Tuple[str, str]  # keys of the study's SMALL table for ours and the stock
    stock_overrides: Callable[[object], List[str]] = lambda cfg: []


def jepa_encoder_as_mae(cfg) -> List[str]:
    m = cfg.model
    keys = ["n_mels", "f_min", "f_max", "input_frames", "patch_time", "patch_freq", "encoder_embed_dim",
            "encoder_layers", "encoder_attention_heads", "mlp_ratio"]
    return [f"model.{k}={m[k]}" for k in keys] + [f"task.crop_seconds={cfg.task.crop_seconds}"]


PAIRS = {
    "music_hubert": Pair("music_hubert", "musichubert", "musichubert", lambda s: s, "hubert",
                         ("musichubert", "musichubert")),
    "music2vec": Pair("music2vec", "music2vec", "music2vec", lambda s: s, "data2vec_audio", ("music2vec", "music2vec")),
    "mw_mae": Pair("mw_mae", "mwmae", "mwmae", lambda s: f"mae_{s}", "same", ("mwmae", "mae")),
    "audio_jepa": Pair("audio_jepa", "audiojepa", "mwmae", lambda s: f"mae_{s}", "same", ("audiojepa", "mae"),
                       jepa_encoder_as_mae),
    # the stock of JOOCI's Content size: SMALL["jooci"]'s encoder on musicHuBERT
    "jooci": Pair("jooci", "jooci", "musichubert", lambda s: s, "same", ("jooci", "jooci"),
                  lambda cfg: [f"task.labels=[{','.join(cfg.task.labels)}]", f"task.label_rate={cfg.task.label_rate}",
                               f"task.max_sample_size={cfg.task.max_sample_size}",
                               f"task.min_sample_size={cfg.task.min_sample_size}",
                               "criterion.label_weights=null", "criterion.loss_weights=[10]"]),
}


def write_corpus(root: str, items: int, samples: int, sample_rate: int, label_sets: Sequence[str], label_rate: float,
                 classes: int = 50) -> None:
    """``items`` wavs of ``samples`` (tones in noise), train.tsv, and random labels per set."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / sample_rate
    with open(os.path.join(root, "train.tsv"), "w") as manifest:
        manifest.write(root + "\n")
        for i in range(items):
            wav = 0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) + 0.05 * rng.standard_normal(samples)
            sf.write(os.path.join(root, f"{i}.wav"), wav.astype(np.float32), sample_rate, subtype="FLOAT")
            manifest.write(f"{i}.wav\t{samples}\n")
    frames = int(round(samples * label_rate / sample_rate))
    for name in label_sets:
        with open(os.path.join(root, f"dict.{name}.txt"), "w") as f:
            f.writelines(f"{k} 1\n" for k in range(classes))
        with open(os.path.join(root, f"train.{name}"), "w") as f:
            for _ in range(items):
                f.write(" ".join(map(str, rng.integers(0, classes, frames))) + "\n")


def build(config_dir: str, config_name: str, overrides: Sequence[str], kind: str, batch: Optional[int], crop: int,
          root: str):
    """(model, criterion, batch) of one config; ``kind`` swaps in the stock fairseq model."""
    from fairseq import tasks

    cfg = compose(config_dir, config_name, root, crop, overrides)
    if cfg.task._name == "waveform_pretraining":
        samples = cfg.task.max_sample_size
        labels, label_rate = list(cfg.task.get("labels") or []), cfg.task.get("label_rate") or 50
    else:
        samples = int(round(cfg.task.crop_seconds * cfg.task.sample_rate))
        labels, label_rate = [], 50
    if batch is None:
        batch = cfg.dataset.get("batch_size") or cfg.dataset.max_tokens // samples
    if not os.path.exists(os.path.join(root, "train.tsv")):
        write_corpus(root, batch, samples, cfg.task.sample_rate, labels, label_rate)
    task = tasks.setup_task(cfg.task)
    model_cfg, criterion_cfg = cfg.model, cfg.criterion
    if kind == "hubert":
        from fairseq.criterions.hubert_criterion import HubertCriterionConfig
        from fairseq.models.hubert.hubert import HubertConfig

        model_cfg = stock_config(model_cfg, HubertConfig, "hubert")
        criterion_cfg = stock_config(criterion_cfg, HubertCriterionConfig, "hubert")
    elif kind == "data2vec_audio":
        from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig

        model_cfg = stock_config(model_cfg, Data2VecAudioConfig, "data2vec_audio")
        model_cfg.max_update = cfg.optimization.max_update
        criterion_cfg = OmegaConf.create({"_name": "model", "log_keys": list(criterion_cfg.get("log_keys") or [])})
    torch.manual_seed(0)
    model = task.build_model(model_cfg)
    criterion = task.build_criterion(criterion_cfg)
    task.load_dataset("train")
    dataset = task.dataset("train")
    sample = dataset.collater([dataset[i] for i in range(batch)])
    return model, criterion, sample


def compose(config_dir: str, config_name: str, root: str, crop: int, overrides: Sequence[str] = ()):
    """The example config with its data (and labels) in ``root``; waveform crops of ``crop`` samples
    (at least the config's ``min_sample_size``)."""
    from audio_ssl_ext.tools.configs import compose_config

    path = os.path.join(EXAMPLES, config_dir)
    cfg = compose_config(path, config_name, ["task.data=" + root, *overrides])
    if cfg.task._name != "waveform_pretraining":
        return cfg
    samples = max(crop, cfg.task.get("min_sample_size") or 0)
    labels = ["task.label_dir=" + root] if cfg.task.get("labels") else []
    return compose_config(path, config_name, ["task.data=" + root, *labels, f"task.max_sample_size={samples}", *overrides])


def stock_config(cfg, dataclass_type, name: str):
    """Our config's values for the fields the stock dataclass has (the rest keep their defaults)."""
    names = {f.name for f in dataclasses.fields(dataclass_type)}
    return OmegaConf.create({**{k: cfg[k] for k in cfg if k in names and k != "_name"}, "_name": name})


def make_step(model, criterion, sample, device: str = "cpu", bf16: bool = False) -> Callable[[], Tuple[float, float]]:
    """One training step; with ``bf16``, forward and loss under torch.autocast (fp32 weights), as
    fairseq's ``common.amp`` with ``common.bf16`` runs it."""
    from fairseq.utils import move_to_cuda

    model.to(device)
    sample = move_to_cuda(sample, device) if device != "cpu" else sample
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    updates = [0]
    model.set_num_updates(0)  # fairseq's data2vec builds its EMA teacher here, as the trainer calls it first

    def step() -> Tuple[float, float]:
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = criterion(model, sample)
        loss.backward()
        optimizer.step()
        updates[0] += 1
        model.set_num_updates(updates[0])
        synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_flops(step: Callable) -> Optional[int]:
    """FLOPs of one step (forward and backward matmuls and convolutions, torch's count); None where
    torch cannot count them (its module tracker asserts on fairseq data2vec's EMA teacher forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
    except AssertionError:
        return None
    return counter.get_total_flops()


def small_overrides(shape: str, family: str) -> List[str]:
    """The study's overrides of ``family`` at the small shape (whose configs are tiny's)."""
    if shape != "small":
        return []
    from audio_ssl_ext.tools.study import SMALL

    return list(SMALL[family])


def bench(pair: Pair, shape: str, args) -> Dict[str, float]:
    batch, crop = SHAPES[shape]
    with tempfile.TemporaryDirectory() as ours_root, tempfile.TemporaryDirectory() as stock_root:
        config_shape = "tiny" if shape == "small" else shape
        ours_name, ours_overrides = config_shape, small_overrides(shape, pair.families[0])
        ours_model, ours_criterion, ours_sample = build(pair.config_dir, ours_name, ours_overrides, "same", batch,
                                                        crop, ours_root)
        ours_cfg = compose(pair.config_dir, ours_name, ours_root, crop, ours_overrides)
        stock_config, stock_overrides = pair.stock_config(config_shape), small_overrides(shape, pair.families[1])
        stock = build(pair.stock_config_dir, stock_config, stock_overrides + pair.stock_overrides(ours_cfg),
                      pair.stock_kind, batch, crop, stock_root)
        ours_step = make_step(ours_model, ours_criterion, ours_sample, args.device, args.bf16)
        stock_step = make_step(*stock, args.device, args.bf16)
        if args.profile == pair.learner:
            profile(pair.learner, ours_step, stock_step)
        flops, stock_flops = step_flops(ours_step), step_flops(stock_step)
        timings = interleaved_pairs(ours_step, stock_step, args.pairs, args.warmup,
                                    lambda r: tqdm(r, desc=f"{pair.learner}/{shape}", leave=False))
    wall = [a[0] / b[0] for a, b in timings]
    cpu = [a[1] / b[1] for a, b in timings]
    source = ours_sample["net_input"]["source"]
    audio_seconds = source.numel() / ours_cfg.task.sample_rate
    ours_s = statistics.median(a[0] for a, _ in timings)
    stock_s = statistics.median(b[0] for _, b in timings)
    print(
        f"{pair.learner:13s} {shape:5s} batch {tuple(source.shape)}: ours {1 / ours_s:6.2f} updates/s "
        f"{audio_seconds / ours_s:7.1f} audio s/s | stock ({stock_name(pair)}) {1 / stock_s:6.2f} updates/s | "
        f"ours/stock wall {statistics.median(wall):.3f} (spread {min(wall):.3f}-{max(wall):.3f}) "
        f"cpu {statistics.median(cpu):.3f}",
        flush=True,
    )
    achieved = flops / ours_s / 1e12
    utilization = f", {achieved / args.peak_tflops:.1%} of the {args.peak_tflops:g} TFLOP/s peak" if args.peak_tflops else ""
    # time ratio / FLOP ratio near 1: we are slower (or faster) only by the arithmetic the method adds
    per_flop = (f"ours/stock FLOPs {flops / stock_flops:.3f}, wall ratio per FLOP ratio "
                f"{statistics.median(wall) / (flops / stock_flops):.3f}") if stock_flops else "stock FLOPs not countable"
    print(f"{'':13s} ours: {flops / 1e9:.1f} GFLOP per step, {achieved:.3g} TFLOP/s{utilization}; {per_flop}", flush=True)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def stock_name(pair: Pair) -> str:
    return {"hubert": "fairseq hubert", "data2vec_audio": "fairseq data2vec_audio"}.get(
        pair.stock_kind, f"{pair.stock_config_dir}/{pair.stock_config('*')}")


def profile(learner: str, ours: Callable, stock: Callable) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for name, step in (("ours", ours), ("stock", stock)):
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"--- {learner} {name}: top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


DATA_CONFIGS = {"musichubert": "waveform crops (2 s)", "mwmae": "fixed crops (1 s)"}


def data_corpus(root: str, kind: str) -> None:
    """64 manifest lines at 16 kHz PCM16: 64 files of 5 s ("short") or 4 files of 10 min, each
    hard-linked under 16 names ("long": a manifest's entries must be distinct paths)."""
    files, seconds = (64, 5.0) if kind == "short" else (4, 600.0)
    rng = np.random.default_rng(0)
    samples = int(seconds * 16000)
    with open(os.path.join(root, "train.tsv"), "w") as manifest:
        manifest.write(root + "\n")
        for i in range(files):
            path = os.path.join(root, f"{i}.wav")
            sf.write(path, (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000, subtype="PCM_16")
            names = [f"{i}.wav"] + [f"{i}_{j}.wav" for j in range(1, 64 // files)]
            for name in names[1:]:
                os.link(path, os.path.join(root, name))
            manifest.writelines(f"{name}\t{samples}\n" for name in names)
        for name in ("km",):
            with open(os.path.join(root, f"dict.{name}.txt"), "w") as f:
                f.writelines(f"{k} 1\n" for k in range(50))
            with open(os.path.join(root, f"train.{name}"), "w") as f:
                line = " ".join(map(str, rng.integers(0, 50, int(seconds * 100)))) + "\n"
                f.writelines(line for _ in range(64))


def batches(task, workers: int, epoch: int = 1):
    dataset = task.dataset("train")
    return task.get_batch_iterator(
        dataset, max_tokens=None, max_sentences=8, num_workers=workers,
        seed=1, epoch=epoch, required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=True)


def data_bench(args) -> None:
    from fairseq import tasks

    results = {}
    for kind in ("short", "long"):
        with tempfile.TemporaryDirectory() as root:
            data_corpus(root, kind)
            for config_dir in DATA_CONFIGS:
                labels = ["task.labels=[km]"] if config_dir == "musichubert" else []
                for shape in ("tiny", "small") if kind == "short" else ("tiny",):
                    size = small_overrides(shape, config_dir)
                    cfg = compose(config_dir, "tiny", root, 32000, labels + size)
                    task = tasks.setup_task(cfg.task)
                    torch.manual_seed(0)
                    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
                    task.load_dataset("train")  # after build_model: the crop task asks the model's frame grid
                    if shape == "tiny":
                        for workers in (0, 2):
                            wall = time.perf_counter()
                            items = sum(len(b["id"]) for b in batches(task, workers))
                            rate = items / (time.perf_counter() - wall)
                            results[f"{config_dir}_{kind}_w{workers}"] = rate
                            print(f"loader {config_dir:11s} ({DATA_CONFIGS[config_dir]}) {kind:5s} files, "
                                  f"num_workers={workers}: {rate:7.1f} items/s", flush=True)
                    if kind == "short":
                        for workers in (0, 2):
                            results[f"wait_{config_dir}_{shape}_w{workers}"] = wait_fraction(
                                model, criterion, task, workers, shape)
    print("train_bench: data " + " ".join(f"{k}={v:.3g}" for k, v in results.items()), flush=True)


def wait_fraction(model, criterion, task, workers: int, shape: str) -> float:
    """Share of a training loop's wall time spent in ``next(batch iterator)``."""
    waiting, wall = 0.0, time.perf_counter()
    iterator = iter(batches(task, workers))
    steps = 0
    while True:
        start = time.perf_counter()
        sample = next(iterator, None)
        waiting += time.perf_counter() - start
        if sample is None:
            break
        make_step(model, criterion, sample)()
        steps += 1
    share = waiting / (time.perf_counter() - wall)
    print(f"wait    {type(model).__name__:11s} {shape}, num_workers={workers}: {share:.1%} of {steps} steps' time waiting for data",
          flush=True)
    return share


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny"], choices=sorted(SHAPES))
    parser.add_argument("--learners", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--pairs", type=int, default=10, help="interleaved (ours, stock) step pairs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", choices=list(PAIRS), help="print torch.profiler tables for this learner")
    parser.add_argument("--data", action="store_true", help="measure the data path instead (see above)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--bf16", action="store_true", help="forward and loss under bf16 autocast")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak for the precision used (H100/H200 SXM dense bf16: 989): prints the "
                        "model FLOPs utilization of our step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import audio_ssl_ext  # noqa: F401  (registers our tasks and models)

    logging.disable(logging.INFO)  # fairseq and hydra log every config at DEBUG/INFO level
    warnings.filterwarnings("ignore", module="hydra")  # fairseq's config style, deprecated by hydra 1.1

    if args.data:
        return data_bench(args)
    for shape in args.shapes:
        ratios = {learner: bench(PAIRS[learner], shape, args) for learner in args.learners}
        print(f"train_bench: shape={shape} " + " ".join(f"{k}={v['wall']:.2f}" for k, v in ratios.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
