"""From a fairseq checkpoint (or an exported folder) to features: ``load_model(path)`` for s3prl,
HEAR and the probe.

``load_model`` rebuilds the model the checkpoint was trained as (its saved config, its task),
loads the weights and wraps it in a ``DownstreamModel`` (``inference/extractor.py``): eval mode,
no gradients, and one call,

    features = model.extract_features(wavs, lengths)          # (B, S) float, (B,) samples
    features.hidden_states   # list of (B, T, D), one per layer
    features.lengths         # (B,) real frames per item
    features.frame_rate      # Hz
    features.sample_rate     # Hz of the input the model expects (``wavs`` may come at another
                             # rate with ``sample_rate=``; they are resampled inside)

It knows no learner by name: every learner of this package implements the feature interface of
``modules/learner.py`` (the model knows itself, s3prl's principle). Foreign fairseq checkpoints
(wav2vec 2.0, HuBERT, data2vec) go through one generic adapter, ``FairseqWaveformModel``.
What the wrapper adds: batching with padding only where padding leaves the real frames
unchanged, inputs shorter than one frame, resampling, and long inputs cut where the model asks
(``feature_chunking``).

An exported folder (``python -m audio_ssl_ext.export``) loads without fairseq and without
unpickling anything: its ``config.json`` and ``model.safetensors`` go to the fairseq-free
inference modules of ``inference/``.
"""

import logging
import os
from typing import Optional, Union

import torch
from torch import nn

from audio_ssl_ext.checkpoint_io import CheckpointError, check_finite_weights, load_checkpoint  # noqa: F401
from audio_ssl_ext.inference.extractor import DownstreamModel
from audio_ssl_ext.modules.conv_features import ConvFraming, ConvTransformerFeatures, receptive_field_and_stride
from audio_ssl_ext.modules.learner import Learner

logger = logging.getLogger(__name__)


class FairseqWaveformModel(ConvTransformerFeatures, nn.Module):
    """The feature interface over a foreign fairseq waveform model (wav2vec 2.0, HuBERT,
    data2vec): its conv extractor, layer norm, projection and encoder, run as the learners of this
    package run theirs. ``self_check`` compares the last hidden state with the model's own
    ``extract_features`` at load time, so a model whose pipeline differs fails loudly instead of
    giving wrong features."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        for name in ("feature_extractor", "layer_norm", "encoder"):
            if not hasattr(model, name):
                raise CheckpointError(
                    f"model {cfg.model._name!r} has no {name!r} and does not implement the feature interface "
                    f"of audio_ssl_ext.modules.learner.Learner: it cannot give hidden states"
                )
        self.model = model
        self.framing = ConvFraming.from_configs(cfg.model, cfg.task)
        self.name = cfg.model._name

    feature_extractor = property(lambda self: self.model.feature_extractor)
    layer_norm = property(lambda self: self.model.layer_norm)
    post_extract_proj = property(lambda self: getattr(self.model, "post_extract_proj", None))
    encoder = property(lambda self: self.model.encoder)

    @torch.no_grad()
    def self_check(self) -> None:
        field, stride = receptive_field_and_stride(self.framing.conv_layers)
        num_samples = field + 24 * stride
        source = torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
        source = source.to(next(self.model.parameters()).device)
        lengths = torch.tensor([num_samples], device=source.device)
        ours = self.hidden_states(source, lengths)[-1]
        if self.framing.normalize:
            source = self.normalize_waveform(source, lengths)
        theirs = self.model.extract_features(source, padding_mask=None, mask=False)
        theirs = theirs["x"] if isinstance(theirs, dict) else theirs[0]
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
            raise CheckpointError(
                f"model {self.name!r}: the fairseq waveform adapter does not reproduce the model's own "
                f"extract_features (shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}); implement the "
                f"feature interface of audio_ssl_ext.modules.learner.Learner in the model"
            )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_checkpoint(path: str, trust_checkpoint: bool = False) -> dict:
    """The checkpoint dict with ``cfg`` as an omegaconf DictConfig (as fairseq's loader gives it),
    read weights-only with the allow-list of ``audio_ssl_ext/checkpoint_io.py`` (the full
    unpickler only with ``trust_checkpoint=True``).
    """
    from fairseq import checkpoint_utils
    from omegaconf import DictConfig, OmegaConf

    state = load_checkpoint(path, trust_checkpoint)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if state.get("cfg") is None:
        if state.get("args") is None:
            raise CheckpointError(f"{path}: fairseq checkpoint without 'cfg' or 'args'")
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        state["cfg"] = convert_namespace_to_omegaconf(state["args"])
    elif not isinstance(state["cfg"], DictConfig):
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    # fairseq's upgrade of older training checkpoints (optimizer history, old arg names); files
    # written by the tests (tests/utils.write_untrained_checkpoint) hold a model only.
    return checkpoint_utils._upgrade_state_dict(state) if "optimizer_history" in state else state


def build_task(cfg, path: str, task_overrides: Optional[dict]):
    """The checkpoint's task, set up from its saved config (label dictionaries and all)."""
    from fairseq import tasks
    from omegaconf import open_dict

    task_cfg = cfg.task
    if task_overrides:
        with open_dict(task_cfg):
            for key, value in task_overrides.items():
                task_cfg[key] = value
    try:
        return tasks.setup_task(task_cfg)
    except (OSError, ValueError) as err:  # missing files; our label code raises ValueErrors
        raise CheckpointError(
            f"{path}: setting up its task {task_cfg._name!r} needs files that are not here ({err}); "
            f"pass task_overrides, e.g. load_model(path, task_overrides={{'label_dir': DIR}}) with the "
            f"dict.*.txt files the model was trained with"
        ) from err


def load_model(
    path: str,
    device: Union[str, torch.device] = "cpu",
    random_init: bool = False,
    seed: int = 0,
    chunk_seconds: Optional[float] = None,
    task_overrides: Optional[dict] = None,
    features: Optional[str] = None,
    trust_checkpoint: bool = False,
) -> DownstreamModel:
    """A checkpoint this package trains (or a fairseq wav2vec 2.0 / HuBERT / data2vec one), or a
    folder exported from one, -> a frozen ``DownstreamModel`` on ``device``.

    ``random_init=True`` builds the same architecture with fresh weights (``seed``): the
    random-init baseline of the probe. ``chunk_seconds`` bounds the input one forward pass sees
    (default: the model's). ``task_overrides`` changes fields of the saved task config, e.g.
    the label_dir of a HuBERT-style model whose dictionaries moved. ``features`` picks the set of
    hidden states of a learner that has several (its recipe lists them; an exported folder's
    default is the one it was exported with). ``trust_checkpoint=True`` reads a checkpoint that
    refers to classes outside the allow-list of ``audio_ssl_ext/checkpoint_io.py`` with the full
    unpickler, which runs code from the file: only for files whose maker you trust.
    """
    if os.path.isdir(path):
        model, name = load_exported_folder(path, random_init, task_overrides)
    else:
        model, name = load_fairseq_checkpoint(path, random_init, seed, task_overrides, trust_checkpoint)
    model.eval()
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = DownstreamModel(model, name, path, chunk_seconds, features).to(device)
    logger.info(
        "loaded %s (%s): %d hidden states of %d dims at %.2f Hz from %d Hz audio",
        path, name, wrapped.num_layers, wrapped.hidden_dim, wrapped.frame_rate, wrapped.sample_rate,
    )
    return wrapped


def load_fairseq_checkpoint(
    path: str, random_init: bool, seed: int, task_overrides: Optional[dict], trust_checkpoint: bool = False
):
    """(model with the feature interface, model name) from a fairseq checkpoint."""
    import audio_ssl_ext  # noqa: F401  (registers our models and tasks with fairseq)

    state = read_checkpoint(path, trust_checkpoint)
    cfg = state["cfg"]
    task = build_task(cfg, path, task_overrides)
    if random_init:
        torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    if not random_init:
        check_finite_weights(state["model"], path)
        try:
            model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not match model {cfg.model._name!r}: {err}") from err
    model.eval()
    name = cfg.model._name
    if not isinstance(model, Learner):
        model = FairseqWaveformModel(model, cfg)
        model.self_check()
    return model, name


def load_exported_folder(path: str, random_init: bool, task_overrides: Optional[dict]):
    """(model, learner name) from a folder written by ``python -m audio_ssl_ext.export``: JSON and
    safetensors only, read by the fairseq-free modules of ``inference/``."""
    from audio_ssl_ext.inference.build import ExportError, load_folder

    if random_init or task_overrides:
        raise CheckpointError(
            f"{path}: an exported folder holds trained weights and no task; random_init and task_overrides "
            f"need the fairseq checkpoint it was exported from"
        )
    try:
        model, config = load_folder(path)
    except ExportError as err:
        raise CheckpointError(str(err)) from err
    return model, config["learner"]
