"""Checkpoints of untrained models, from an example config: a random-init baseline, and test inputs.

``write_untrained_checkpoint("examples/music2vec/tiny.yaml", "m2v_init.pt")`` builds the model the
config describes with fresh weights and saves it as fairseq saves a trained one (its ``cfg`` with
``task``, ``model`` and ``common``, and the ``model`` weights), so ``load_model`` reads both alike.
"""

import os
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf, open_dict


def compose_example_config(config_path: str, overrides: Sequence[str] = ()):
    """The ``common``, ``task`` and ``model`` groups of an examples/<learner>/*.yaml, resolved
    against the registered dataclasses (so every field has its default), with dotted overrides
    such as ``model.encoder_layers=4``."""
    import audio_ssl_ext  # noqa: F401  (registers our models and tasks)
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: config not found")
    raw = OmegaConf.load(config_path)
    raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    for group in ("task", "model"):
        if group not in raw or "_name" not in raw[group]:
            raise ValueError(f"{config_path}: no {group}._name")
    task_name, model_name = raw.task._name, raw.model._name
    if task_name not in TASK_DATACLASS_REGISTRY:
        raise ValueError(f"{config_path}: task {task_name!r} is not registered with fairseq")
    if model_name not in MODEL_DATACLASS_REGISTRY:
        raise ValueError(f"{config_path}: model {model_name!r} is not registered with fairseq")
    task = OmegaConf.merge(OmegaConf.structured(TASK_DATACLASS_REGISTRY[task_name]()), raw.task)
    model = OmegaConf.merge(OmegaConf.structured(MODEL_DATACLASS_REGISTRY[model_name]()), raw.model)
    for key in ("data", "label_dir"):
        if key in list(task.keys()) and OmegaConf.is_missing(task, key):
            task[key] = "unused"  # not read to build a model (label_dir: see write_untrained_checkpoint)
    # Interpolations such as the task's `tpu: ${common.tpu}` or a model's `seed: ${common.seed}`
    # resolve against fairseq's whole config, as in a training run.
    root = OmegaConf.structured(FairseqConfig())
    with open_dict(root):
        root.common = OmegaConf.merge(root.common, raw.get("common", {}))
        root.common.user_dir = None
        root.task = task
        root.model = model
    return OmegaConf.create(OmegaConf.to_container(root, resolve=True, enum_to_str=True))


def write_untrained_checkpoint(
    config_path: str, out_path: str, seed: int = 0, overrides: Sequence[str] = (), num_label_classes: int = 0
) -> str:
    """Build the config's model with weights drawn from ``seed`` and save it as a fairseq checkpoint.

    A HuBERT-style config names label sets whose dictionaries size the model: with
    ``num_label_classes`` > 0 and no ``task.label_dir`` given, dictionaries of that many classes
    are written to ``<out_path>.labels/`` and the saved config points there.
    """
    from fairseq import tasks

    cfg = compose_example_config(config_path, overrides)
    labels = list(cfg.task.get("labels") or [])
    if labels and num_label_classes > 0 and cfg.task.get("label_dir") in (None, "???", "unused"):
        label_dir = os.path.abspath(out_path) + ".labels"
        os.makedirs(label_dir, exist_ok=True)
        for name in labels:
            with open(os.path.join(label_dir, f"dict.{name}.txt"), "w") as f:
                f.writelines(f"{k} 1\n" for k in range(num_label_classes))
        cfg.task.label_dir = label_dir
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save({"cfg": OmegaConf.to_container(cfg, enum_to_str=True), "model": model.state_dict(), "args": None}, out_path)
    return out_path
