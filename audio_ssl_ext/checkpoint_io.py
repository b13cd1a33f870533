"""Reading checkpoints without running code from them: every reader of a checkpoint comes here.

``torch.load(weights_only=False)`` unpickles whatever the file names, so a checkpoint from a
stranger runs the stranger's code. Here checkpoints are read with torch's weights-only unpickler
and an allow-list of the classes fairseq checkpoints hold besides tensors (measured on the
checkpoints fairseq-hydra-train writes with this package, and the older layouts fairseq loads):

- ``argparse.Namespace``: the ``args`` of checkpoints from before fairseq's hydra configs
  (wav2vec 2.0, the first HuBERT releases), also nested inside ``cfg`` (``w2v_args``);
- omegaconf's ``DictConfig``/``ListConfig`` and their node and metadata classes: a ``cfg`` saved
  as a config object rather than the plain dict fairseq's trainer writes today;
- numpy scalars, dtypes and arrays: metric values and ``best`` in ``extra_state``.

Each is data, rebuilt without calling anything but its own constructor. A file that needs any
other class is refused with the class named; ``trust_checkpoint=True`` (``--trust-checkpoint``
on the command line) then reads it with the full unpickler, for files whose maker you trust.
The allow-list is applied with torch's ``safe_globals`` context manager, for the one call: the
process's global allow-list is not changed.
"""

import argparse
import collections
import logging
import os
import pickle
import typing
from typing import List, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "If you trust whoever made the file, load it with trust_checkpoint=True (load_model, HEAR's "
    "--model-options '{\"trust_checkpoint\": true}', s3prl's -g trust_checkpoint=true) or --trust-checkpoint "
    "(scripts/probe.py, scripts/dump_features.py)"
)


class CheckpointError(ValueError):
    """The file is not a checkpoint this package can use."""


def _numpy_globals() -> List[Union[type, tuple]]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    dtypes = [type(np.dtype(code)) for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")]
    # Files written under numpy 1.x name numpy.core.multiarray; numpy 2 renamed it numpy._core.
    legacy = [(multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    return [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct, *dtypes, *legacy]


def _omegaconf_globals() -> List[type]:
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    # dict, list, int and typing.Any appear as the declared types in a config's metadata.
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, BooleanNode, FloatNode, IntegerNode,
            StringNode, typing.Any, dict, list, int, collections.defaultdict]


def allowed_globals() -> List[Union[type, tuple]]:
    return [argparse.Namespace, *_numpy_globals(), *_omegaconf_globals()]


def _global_name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    name = getattr(entry, "__qualname__", None) or getattr(entry, "_name", None) or repr(entry)
    return f"{entry.__module__}.{name}"


def classes_outside_allow_list(path: str) -> List[str]:
    """Names of the globals the file's pickle refers to that the allow-list does not hold."""
    allowed = {_global_name(g) for g in allowed_globals()}
    return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]


def load_checkpoint(path: str, trust_checkpoint: bool = False) -> dict:
    """The torch-saved object in ``path``, read as the module docstring says."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    if trust_checkpoint:
        logger.warning("%s: read with the full unpickler (trust_checkpoint=True): it may run code from the file", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({err})") from err
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unknown = classes_outside_allow_list(path)
        except Exception:  # not a zip checkpoint at all: the first error says more
            unknown = []
        if unknown:
            raise CheckpointError(
                f"{path}: the checkpoint refers to {', '.join(unknown)}, outside the allow-list of classes "
                f"a checkpoint is read with (audio_ssl_ext/checkpoint_io.py); unpickling them could run code from "
                f"the file. {TRUST_HINT}"
            ) from None
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({err})") from None
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({err})") from err


def check_finite_weights(state_dict: dict, path: str) -> None:
    """Refuse a checkpoint whose floating-point weights hold NaN or inf (a diverged run), naming
    the first such parameter and how many there are."""
    bad = [name for name, value in state_dict.items()
           if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        count = int((~torch.isfinite(state_dict[bad[0]])).sum())
        raise CheckpointError(
            f"{path}: parameter {bad[0]!r} holds {count} NaN/inf values ({len(bad)} tensor(s) with non-finite values "
            f"in all): the run that wrote it diverged; use an earlier checkpoint"
        )
