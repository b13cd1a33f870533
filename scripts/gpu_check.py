#!/usr/bin/env python
"""Every learner on a CUDA GPU: a few updates in fp32, fp16 and bf16 (autocast), bf16-model (fairseq's
common.bf16: the whole model cast), and one DDP step.

    python scripts/gpu_check.py [--config tiny|base] [--updates 5] [--batch 4] [--seconds 2]

For each learner's config (examples/<learner>/<config>.yaml; the MAE baseline's mae_<config>), the
model and criterion are built as fairseq builds them and trained on random waveforms (and random
frame labels where the learner predicts labels) with torch.autocast and, for fp16, a gradient
scaler; then one update through DistributedDataParallel at world size 1. One line per learner and
precision: median step time after the first update, peak memory, and whether every loss was
finite. Exit status 1 when a loss was not finite. Without CUDA it says so and exits 0;
``--device cpu`` runs the same code path on the CPU (fp32 and bf16), as the tests do.
"""

import argparse
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNERS = ("musichubert", "music2vec", "mwmae", "mae", "audiojepa", "jooci")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "bf16-model": torch.bfloat16}
# bf16-model is fairseq's common.bf16: no autocast, the model, the criterion and the batch's floats
# cast to bf16 (fairseq's Trainer); the others are torch.autocast around the loss.


def build(learner: str, config: str, label_dir: str):
    from fairseq import tasks

    from audio_ssl_ext.tools.configs import compose_config

    folder, name = ("mwmae", f"mae_{config}") if learner == "mae" else (learner, config)
    cfg = compose_config(os.path.join(REPO, "examples", folder), name, ["task.data=/unused"])
    if "label_dir" in cfg.task:
        cfg.task.label_dir = label_dir
    task = tasks.setup_task(cfg.task)
    return cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def write_dictionaries(label_dir: str, names, classes: int = 100) -> None:
    for name in names:
        with open(os.path.join(label_dir, f"dict.{name}.txt"), "w") as f:
            f.writelines(f"{k} 1\n" for k in range(classes))


def random_batch(cfg, task, batch: int, seconds: float, device, generator: torch.Generator):
    rate = int(cfg.task.sample_rate)
    samples = int(round(float(cfg.task.get("crop_seconds") or seconds) * rate))
    sample = {
        "id": torch.arange(batch, device=device),
        "net_input": {
            "source": (torch.randn(batch, samples, generator=generator) * 0.1).to(device),
            "padding_mask": torch.zeros(batch, samples, dtype=torch.bool, device=device),
        },
    }
    dictionaries = getattr(task, "dictionaries", None) or []
    if dictionaries:
        frames = int(samples * float(cfg.task.label_rate) / rate)
        sample["target_list"] = [
            torch.randint(d.nspecial, len(d), (batch, frames), generator=generator).to(device) for d in dictionaries
        ]
    return sample


def apply_to_sample(fn, sample):
    from fairseq.utils import apply_to_sample as fairseq_apply

    return fairseq_apply(fn, sample)


def train_steps(model, criterion, sample, dtype, updates: int, device) -> dict:
    """``updates`` optimizer updates under autocast(dtype); step times (s), peak memory, finiteness."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, finite = [], True
    model.train()
    for update in range(updates):
        model.set_num_updates(update)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, sample_size, _ = criterion(model, sample)
        finite = finite and bool(torch.isfinite(loss.detach()).item())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss / max(sample_size, 1)).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return {"step_ms": 1000 * statistics.median(times[1:] or times), "peak_mib": peak, "finite": finite}


def ddp_step(model, criterion, sample, device) -> bool:
    """One update through torch's DistributedDataParallel at world size 1 (fairseq's proxy wrapper
    forwards the model's own methods, as fairseq's trainer does)."""
    import torch.distributed as dist
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        wrapped = ModuleProxyWrapper(DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None, find_unused_parameters=True
        ))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        loss, sample_size, _ = criterion(wrapped, sample)
        loss.backward()
        optimizer.step()
        return bool(torch.isfinite(loss.detach()).item())
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated subset of {LEARNERS}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated subset of {list(DTYPES)}")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="waveform length for the waveform learners")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)  # fairseq's import set the root logger to DEBUG
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (--device cpu runs the code path on the CPU)")
        return 0
    learners = [l for l in args.learners.split(",") if l]
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = sorted(set(learners) - set(LEARNERS)) + sorted(set(dtypes) - set(DTYPES))
    if unknown:
        parser.error(f"unknown learners or dtypes: {unknown}")
    if device.type == "cuda":
        print(f"gpu_check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, config {args.config}")
    failed = []
    with tempfile.TemporaryDirectory() as label_dir:
        write_dictionaries(label_dir, ["km", "km100", "km500"])  # the label sets the configs name
        for learner in learners:
            for name in dtypes:
                torch.manual_seed(0)
                cfg, task, model, criterion = build(learner, args.config, label_dir)
                model.to(device)
                criterion.to(device)
                sample = random_batch(cfg, task, args.batch, args.seconds, device, torch.Generator().manual_seed(0))
                autocast = DTYPES[name]
                if name == "bf16-model":
                    model.to(torch.bfloat16)
                    criterion.to(torch.bfloat16)
                    sample = apply_to_sample(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, sample)
                    autocast = torch.float32
                result = train_steps(model, criterion, sample, autocast, args.updates, device)
                peak = "" if math.isnan(result["peak_mib"]) else f" peak {result['peak_mib']:.0f} MiB"
                print(f"{learner:12s} {name}: {result['step_ms']:8.1f} ms/update{peak} "
                      f"loss {'finite' if result['finite'] else 'NOT FINITE'}", flush=True)
                if not result["finite"]:
                    failed.append(f"{learner}/{name}")
            if name == "bf16-model":  # the DDP step in fp32, on a freshly built model
                cfg, task, model, criterion = build(learner, args.config, label_dir)
                model.to(device)
                criterion.to(device)
                sample = random_batch(cfg, task, args.batch, args.seconds, device, torch.Generator().manual_seed(0))
            finite = ddp_step(model, criterion, sample, device)
            print(f"{learner:12s} DDP (world size 1): loss {'finite' if finite else 'NOT FINITE'}", flush=True)
            if not finite:
                failed.append(f"{learner}/ddp")
    print(f"gpu_check: {'all finite' if not failed else 'not finite: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
