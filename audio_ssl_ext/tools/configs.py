"""Compose an example config in-process exactly as ``fairseq-hydra-train`` does (tests, scripts)."""

import os
from typing import Sequence


def compose_config(config_dir: str, config_name: str, overrides: Sequence[str] = ()):
    """``--config-dir config_dir --config-name config_name overrides...`` -> the resolved DictConfig
    after fairseq's ``add_defaults`` (the registered dataclass defaults merged in), i.e. what
    ``fairseq_cli.train.main`` receives. ``overrides`` are hydra's (``task.data=DIR``,
    ``+variant=NAME``, ``++key=value``)."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import audio_ssl_ext  # noqa: F401  (registers what the config names)

    config_dir = os.path.abspath(config_dir)
    if not os.path.isfile(os.path.join(config_dir, f"{config_name}.yaml")):
        raise FileNotFoundError(f"{config_dir}/{config_name}.yaml: config not found")
    GlobalHydra.instance().clear()
    hydra_init(config_name)
    with initialize_config_dir(config_dir=config_dir, version_base="1.1"):  # as fairseq's hydra.main
        cfg = compose(config_name=config_name, overrides=list(overrides))
    add_defaults(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
