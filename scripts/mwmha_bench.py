#!/usr/bin/env python
"""Time MW-MHA (forward + backward) against the per-head reference and global attention.

At the paper's decoder shape (batch 64, 250 tokens, 384 wide, 8 heads with the rule's windows
[2, 5, 10, 25, 50, 125, 0, 0]), for (a) the attention module and (b) one whole decoder block:

    ours       audio_ssl_ext.modules.multi_window_attention.MultiWindowAttention (grouped heads on a CPU,
               one SDPA call with a windowed bias mask on a GPU)
    reference  multi_window_attention_reference: the same parameters, one head at a time
    global     standard multi-head attention (what MAE uses), same width and head count

Shared machines are noisy, so each comparison is a series of interleaved pairs (ours and the
other back to back, which one first alternating) and reports the median of the per-pair ratios
with their spread (min-max), by wall clock and, on the CPU, by this process's CPU time.
The last lines, one per device, are

    mwmha_bench: device=<cpu|cuda> block_vs_global=<ours/global> attn_vs_reference=<reference/ours>

Usage: python scripts/mwmha_bench.py [--pairs 10] [--threads 2] [--devices cpu cuda]
"""

import argparse
import copy
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn
from tqdm import tqdm

from audio_ssl_ext.modules.multi_window_attention import (
    MultiWindowAttention,
    multi_window_attention_reference,
    paper_window_sizes,
)
from audio_ssl_ext.modules.vit import Attention, Block, init_vit_weights
from audio_ssl_ext.tools.timing import interleaved_pairs


class ReferenceAttention(nn.Module):
    """A MultiWindowAttention run through the per-head reference loop."""

    def __init__(self, module: MultiWindowAttention):
        super().__init__()
        self.module = module

    def forward(self, x):
        return multi_window_attention_reference(self.module, x)


def build(args, device) -> Dict[str, nn.Module]:
    windows = paper_window_sizes(args.tokens)
    if len(windows) != args.heads:
        sys.exit(f"the rule gives {len(windows)} heads for {args.tokens} tokens, not --heads {args.heads}")
    torch.manual_seed(0)
    ours = MultiWindowAttention(args.dim, windows)
    block = Block(args.dim, MultiWindowAttention(args.dim, windows))
    modules = {
        "attn/ours": ours,
        "attn/global": Attention(args.dim, args.heads),
        "block/ours": block,
        "block/global": Block(args.dim, Attention(args.dim, args.heads)),
    }
    for m in modules.values():
        m.apply(init_vit_weights)
    # The references share their weights with "ours" (the same modules, run head by head).
    modules["attn/reference"] = ReferenceAttention(ours)
    reference_block = copy.deepcopy(block)
    reference_block.attn = ReferenceAttention(reference_block.attn)
    modules["block/reference"] = reference_block
    return {name: m.to(device) for name, m in modules.items()}


def make_timer(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, device) -> Callable[[], Tuple[float, float]]:
    """One forward + backward; returns (wall seconds, this process's CPU seconds)."""

    def run() -> Tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        module(x).backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    return run


def summary(ratios: List[float]) -> str:
    return f"{statistics.median(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f})"


def bench_device(args, device) -> Dict[str, float]:
    modules = build(args, device)
    x = torch.randn(args.batch, args.tokens, args.dim, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    timers = {name: make_timer(m, x, grad, device) for name, m in modules.items()}
    with torch.no_grad():
        diff = (modules["attn/ours"](x) - modules["attn/reference"](x)).abs().max().item()
    print(f"[{device.type}] max |ours - reference| on this input: {diff:.2e}")

    # (label, the other module, whether the ratio is ours / other rather than other / ours)
    comparisons = [
        ("attn: reference / ours", "attn/reference", False),
        ("attn: ours / global", "attn/global", True),
        ("block: reference / ours", "block/reference", False),
        ("block: ours / global", "block/global", True),
    ]
    medians = {}
    for label, other, ours_over_other in tqdm(comparisons, desc=f"{device.type} comparisons", file=sys.stderr):
        ours = timers[label.split(":")[0] + "/ours"]
        timings = interleaved_pairs(ours, timers[other], args.pairs, args.warmup)
        wall, cpu = (
            [(a[clock] / b[clock]) if ours_over_other else (b[clock] / a[clock]) for a, b in timings]
            for clock in (0, 1)
        )
        medians[label] = statistics.median(wall)
        line = f"[{device.type}] {label:<24} wall {summary(wall)}"
        if device.type == "cpu":  # CPU time: less sensitive to other processes on a shared machine
            line += f"  cpu-time {summary(cpu)}"
        print(f"{line}  ({args.pairs} pairs)")
    for name in ("attn/ours", "attn/global", "attn/reference", "block/ours", "block/global", "block/reference"):
        times = [timers[name]()[0] for _ in range(3)]
        print(f"[{device.type}] {name:<16} {1000 * statistics.median(times):8.1f} ms forward+backward (wall, median of 3)")
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=250)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=10, help="interleaved pairs per comparison (>= 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the machines are shared)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped when absent")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if args.pairs < 10:
        parser.error("--pairs must be at least 10: fewer pairs make the median meaningless here")
    torch.set_num_threads(args.threads)
    print(
        f"mwmha_bench: batch {args.batch}, {args.tokens} tokens, width {args.dim}, {args.heads} heads, "
        f"windows {paper_window_sizes(args.tokens)}, torch {torch.__version__}, {args.threads} CPU threads"
    )
    results = {}
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("mwmha_bench: no CUDA device, skipping cuda")
            continue
        results[name] = bench_device(args, torch.device(name))
    for name, medians in results.items():
        print(
            f"mwmha_bench: device={name} block_vs_global={medians['block: ours / global']:.3f} "
            f"attn_vs_reference={medians['attn: reference / ours']:.3f}"
        )


if __name__ == "__main__":
    main()
