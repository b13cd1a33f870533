"""A fairseq checkpoint -> a folder usable without fairseq: ``python -m audio_ssl_ext.export CKPT OUT``.

The folder holds

    model.safetensors          the encoder's weights (no optimizer, no pre-training heads, no
                               teacher; ``--teacher`` adds teacher.safetensors)
    config.json                learner, family, the fairseq model and task fields it is built
                               from, sample and frame rate, frontend (and its normalisation
                               statistics), hidden-state names, parameter count, updates
    preprocessor_config.json   transformers' Wav2Vec2FeatureExtractor: pads waveforms, gives the
                               attention mask (the model normalises inside)
    README.md                  the model card
    *.py                       the fairseq-free inference code (``inference/`` and the package
                               modules it uses, ``export/code.py``) with the transformers wrapper

and loads with ``audio_ssl_ext.load_model(OUT)`` (no fairseq, nothing unpickled) or
``transformers.AutoModel.from_pretrained(OUT, trust_remote_code=True)``. The export checks the
exported model against the checkpoint's (hidden states of every layer on a test input) and
refuses to write a folder that differs.
"""

import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import torch

from audio_ssl_ext.export.card import model_card
from audio_ssl_ext.inference.build import CONFIG_NAME, WEIGHTS_NAME, ExportError, build_model, family_class
from audio_ssl_ext.inference.extractor import DownstreamModel

PREPROCESSOR_NAME = "preprocessor_config.json"
TEACHER_NAME = "teacher.safetensors"
PARITY_TOLERANCE = 1e-4  # checked at export on a test input; the tests hold 1e-5


def family_of(model) -> str:
    """The inference family of a loaded fairseq model (what ``load_model`` wraps)."""
    from audio_ssl_ext.models.jooci import JoociModel
    from audio_ssl_ext.modules.conv_features import ConvTransformerFeatures
    from audio_ssl_ext.modules.spectrogram_frontend import PatchEncoderFeatures

    if isinstance(model, JoociModel):
        return "jooci"
    if isinstance(model, PatchEncoderFeatures):
        return "spectrogram"
    if isinstance(model, ConvTransformerFeatures):
        return "waveform"
    raise ExportError(f"{type(model).__name__}: no fairseq-free inference module for this model")


def encoder_attention_windows(model) -> Optional[List[int]]:
    """The window sizes of a multi-window encoder's heads (as built), None for global attention."""
    blocks = getattr(model.encoder, "blocks", None) or model.encoder.transformer.blocks
    windows = getattr(blocks[0].attn, "window_sizes", None)
    return list(windows) if windows is not None else None


def frontend_fields(family: str, model_cfg: Dict, task_cfg: Dict) -> Dict:
    """What a user of the folder needs to know about the model's input, in one place."""
    if family == "spectrogram":
        skip = ("encoder_", "decoder_", "predictor_", "mask", "ema_", "seed", "num_target", "target_", "context_",
                "min_context", "smooth_l1", "layer_norm_targets", "norm_pix", "mlp_ratio", "time_mask", "_name")
        fields = {k: v for k, v in model_cfg.items() if not k.startswith(skip)}
        return {"type": "log-mel patches", **fields}
    return {
        "type": "conv feature extractor on the raw waveform",
        "conv_feature_layers": model_cfg.get("conv_feature_layers"),
        "extractor_mode": model_cfg.get("extractor_mode"),
        "normalize": bool(task_cfg.get("normalize", False)),  # zero mean, unit variance per utterance
    }


def probe_waveforms(model: DownstreamModel) -> List[torch.Tensor]:
    """Two items of different lengths (one padded), long enough for several frames everywhere."""
    generator = torch.Generator().manual_seed(0)
    n = max(model.min_samples, model.sample_rate)
    return [torch.randn(n + 1234, generator=generator) * 0.1, torch.randn(n // 2 + 977, generator=generator) * 0.1]


def check_parity(reference: DownstreamModel, exported: DownstreamModel, what: str) -> float:
    wavs = probe_waveforms(reference)
    ours, theirs = exported.extract_features(wavs), reference.extract_features(wavs)
    if len(ours.hidden_states) != len(theirs.hidden_states):
        raise ExportError(f"{what}: {len(ours.hidden_states)} hidden states exported, {len(theirs.hidden_states)} in the checkpoint's model")
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        if a.shape != b.shape:
            raise ExportError(f"{what}: hidden state {i} is {tuple(a.shape)} exported, {tuple(b.shape)} in the checkpoint's model")
        worst = max(worst, (a - b).abs().max().item())
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"{what}: the exported model's hidden states differ from the checkpoint's by {worst:.3g} "
            f"(> {PARITY_TOLERANCE}); the fairseq-free module of this family no longer matches the training model"
        )
    return worst


def export_checkpoint(
    checkpoint: str,
    out_dir: str,
    features: Optional[str] = None,
    teacher: bool = False,
    task_overrides: Optional[Dict] = None,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> Dict:
    """Write the folder (see the module docstring); returns its config. ``features`` sets the
    default hidden states of a learner with several sets (JOOCI); ``task_overrides`` and
    ``trust_checkpoint`` as in ``load_model``."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from audio_ssl_ext.downstream.load import FairseqWaveformModel, load_model, read_checkpoint

    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not empty (pass --overwrite to replace its files)")
    state = read_checkpoint(checkpoint, trust_checkpoint)
    cfg = OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)
    model_cfg, task_cfg = dict(cfg["model"]), {**(cfg.get("task") or {}), **(task_overrides or {})}
    reference = load_model(checkpoint, task_overrides=task_overrides, features=features, trust_checkpoint=trust_checkpoint)
    trained = reference.model.model if isinstance(reference.model, FairseqWaveformModel) else reference.model
    family = family_of(reference.model)
    if family == "spectrogram":
        model_cfg["encoder_attention_windows"] = encoder_attention_windows(trained)

    config = {
        "learner": model_cfg.get("_name"),
        "family": family,
        "features": reference.features if family == "jooci" else None,
        "model": model_cfg,
        "task": {k: task_cfg[k] for k in ("sample_rate", "normalize") if k in task_cfg},
    }
    exported = build_model(config)
    trained_state = trained.state_dict()
    name_of = getattr(family_class(family), "trained_name", lambda name, state: name)
    weights = {}
    for name in exported.state_dict():
        source = name_of(name, trained_state)
        if source not in trained_state:
            raise ExportError(f"{checkpoint}: the {family} module needs {name} ({source}), which the checkpoint's model lacks")
        weights[name] = trained_state[source].detach().float().contiguous().clone()
    exported.load_state_dict(weights, strict=True)
    exported_features = DownstreamModel(exported, config["learner"], None)
    worst = check_parity(reference, exported_features, checkpoint)

    names = exported.hidden_state_names()
    history = state.get("optimizer_history") or [{}]
    config.update({
        "architectures": ["AudioSslModel"],
        "model_type": "audio_ssl_ext",
        "auto_map": {
            "AutoConfig": "configuration_audio_ssl.AudioSslConfig",
            "AutoModel": "modeling_audio_ssl.AudioSslModel",
        },
        "torch_dtype": "float32",
        "sample_rate": reference.sample_rate,
        "frame_rate": reference.frame_rate,
        "first_frame_seconds": reference.first_frame_seconds,
        "hidden_size": reference.hidden_dim,
        "num_hidden_layers": len(names) - 1,
        "hidden_state_names": names,
        "frontend": frontend_fields(family, model_cfg, task_cfg),
        "num_parameters": sum(p.numel() for p in exported.parameters()),  # buffers (BatchNorm statistics) not counted
        "updates": history[-1].get("num_updates"),
        "train_data": task_cfg.get("data"),
        "export_max_abs_difference": worst,
    })
    if len(names) != reference.num_layers:
        raise ExportError(f"{len(names)} hidden-state names for {reference.num_layers} hidden states")

    # Written into a temporary folder beside OUT and renamed to OUT: a failed export leaves no half
    # folder, and --overwrite leaves no file of the old export (a teacher, another family's code).
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export.", dir=parent)
    try:
        save_file(weights, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})
        if teacher:
            teacher_weights = {k[len("_teacher."):]: v.detach().float().contiguous().clone()
                               for k, v in trained_state.items() if k.startswith("_teacher.")}
            if not teacher_weights:
                raise ExportError(f"{checkpoint}: --teacher, but the model keeps no teacher")
            save_file(teacher_weights, os.path.join(staging, TEACHER_NAME), metadata={"format": "pt"})
        with open(os.path.join(staging, CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        with open(os.path.join(staging, PREPROCESSOR_NAME), "w") as f:
            json.dump(preprocessor_config(config), f, indent=2)
        from audio_ssl_ext.export.code import folder_code

        for name, text in folder_code().items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(text)
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(model_card(config, checkpoint, teacher))
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".export-old.", dir=parent)
            os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            if old is not None:  # the previous export goes back where it was
                os.replace(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config


def preprocessor_config(config: Dict) -> Dict:
    """transformers' own Wav2Vec2FeatureExtractor: pads a list of waveforms and gives the mask.
    No normalisation there: the model does what it was trained with, on real samples only."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": config["sample_rate"],
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": False,
        "return_attention_mask": True,
    }
