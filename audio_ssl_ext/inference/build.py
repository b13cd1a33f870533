"""An exported model from its ``config.json``, and an exported folder -> the model with its weights.

The folder holds JSON and safetensors only: loading it runs no pickle, so a folder from anyone
is as safe to load as its config is to read.
"""

import json
import os
from typing import Dict, Tuple

from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FAMILIES = ("waveform", "jooci", "spectrogram")


class ExportError(ValueError):
    """A folder or config that is not an export this code can load."""


def family_class(family: str) -> type:
    """The module of a family, imported on demand: a waveform model never loads the spectrogram
    code, nor the other way round."""
    if family == "waveform":
        from .waveform import WaveformModel

        return WaveformModel
    if family == "jooci":
        from .jooci import JoociModel

        return JoociModel
    if family == "spectrogram":
        from .spectrogram import SpectrogramModel

        return SpectrogramModel
    raise ExportError(f"config family={family!r}: expected one of {list(FAMILIES)}")


def build_model(config: Dict) -> nn.Module:
    """The family's module (``family``) from the fairseq model and task fields (``model``,
    ``task``), fresh weights, eval mode; ``features`` picks a learner's default set of hidden states."""
    cls = family_class(config.get("family"))
    for key in ("model", "task"):
        if not isinstance(config.get(key), dict):
            raise ExportError(f"config {key!r}: expected the fairseq {key} fields as a JSON object")
    extra = {"features": config["features"]} if config.get("features") else {}
    return cls(config["model"], config["task"], **extra).eval()


def read_config(folder: str) -> Dict:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ExportError(f"{folder}: no {CONFIG_NAME}; export a checkpoint with python -m audio_ssl_ext.export CKPT {folder}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from err


def load_folder(folder: str) -> Tuple[nn.Module, Dict]:
    """(model with the exported weights, in eval mode; its config)."""
    from safetensors.torch import load_file

    config = read_config(folder)
    weights_path = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise ExportError(f"{folder}: no {WEIGHTS_NAME} next to {CONFIG_NAME}")
    model = build_model(config)
    state = load_file(weights_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{weights_path}: the weights do not match the {config['family']} model of {CONFIG_NAME} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return model, config
