#!/usr/bin/env python
"""Dataset log-mel statistics for ``model.normalization=dataset`` (Audio-JEPA's recipe).

    python scripts/norm_stats.py --config-dir examples/audiojepa --config-name base MANIFEST \
        [--max-files N] [--seed 0] [overrides ...]

Computes the mean and standard deviation of the raw log-mel of every frame of the files in
MANIFEST (a train.tsv), on the frame grid of the config's model (its n_fft, centring and mel
bands; its normalization fields are ignored), and prints the overrides to train with, e.g.

    model.normalization=dataset ++model.norm_mean=-7.0633 ++model.norm_std=4.1971

(hydra's ``++`` sets a key whether or not the config names it).

They go into the config, hence into every checkpoint, so extraction uses them too.
``--max-files`` takes a seeded random subset of the files (the reference sampled 10,000).
"""

import argparse
import os
import sys

import numpy as np
from omegaconf import OmegaConf, open_dict
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audio_ssl_ext.data.manifest import read_manifest  # noqa: E402
from audio_ssl_ext.modules.spectrogram_frontend import LogMelPatches  # noqa: E402
from audio_ssl_ext.tasks.crop_pretraining import logmel_statistics  # noqa: E402
from audio_ssl_ext.tools.configs import compose_config  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", required=True, help="a recipe folder, e.g. examples/audiojepa")
    parser.add_argument("--config-name", required=True, help="its config, e.g. base")
    parser.add_argument("manifest", help="a manifest (train.tsv) of the training audio")
    parser.add_argument("--max-files", type=int, default=None, help="a random subset of this many files")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-files subset")
    parser.add_argument("overrides", nargs="*", help="config overrides (model.n_mels=128 ...)")
    args = parser.parse_args(argv)

    cfg = compose_config(args.config_dir, args.config_name, ["task.data=" + os.path.dirname(args.manifest), *args.overrides])
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model))
    if "normalization" not in model_cfg:
        sys.exit(f"{args.config_dir}/{args.config_name}: model {model_cfg.get('_name')!r} has no log-mel frontend")
    with open_dict(model_cfg):  # the raw log-mel: whatever the config says about normalizing it
        model_cfg.normalization, model_cfg.norm_mean, model_cfg.norm_std = "per_crop", None, None
    frontend = LogMelPatches.from_config(model_cfg)

    manifest = read_manifest(args.manifest)
    entries = np.arange(len(manifest))
    if args.max_files is not None and args.max_files < len(entries):
        entries = np.sort(np.random.default_rng(args.seed).choice(entries, args.max_files, replace=False))
    progress = tqdm(entries.tolist(), desc="log-mel statistics", unit="file")
    mean, std, values = logmel_statistics(frontend, manifest, progress)
    print(f"{len(entries)} files, {values // frontend.logmel.n_mels} frames: mean {mean:.6g}, std {std:.6g}")
    print(f"model.normalization=dataset ++model.norm_mean={mean:.6g} ++model.norm_std={std:.6g}")


if __name__ == "__main__":
    main()
