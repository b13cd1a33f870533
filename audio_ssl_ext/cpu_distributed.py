"""fairseq's distributed trainer on CPUs (gloo): the places where fairseq 0.12.3 assumes CUDA.

``common.cpu=true distributed_training.distributed_world_size=N`` should train N processes that
talk over gloo, as N GPUs do over NCCL: that is how CI proves, without a GPU, what a cluster run
relies on. fairseq breaks on that path in the places patched below (line numbers are fairseq
0.12.3's installed files); nothing in fairseq's files is changed, and every patch falls through to
fairseq's own code unless the run is on the CPU (``common.cpu`` or no CUDA device).

Importing ``audio_ssl_ext`` installs the patches. fairseq imports the user dir in every worker
(``fairseq_cli/train.py:48``, ``main`` calls ``import_user_module``), before it builds the trainer,
so the worker-side patches (DDP, all_gather_list) are always in place. The launcher-side ones
(``infer_init_method``, ``call_main``) run in ``fairseq-hydra-train``'s first process, which
imports the user dir only in ``main``, i.e. too late. Hydra imports this module there when the
command line (or a config's ``hydra:`` block) names the callback below::

    fairseq-hydra-train ... common.cpu=true distributed_training.distributed_world_size=2 \\
        +hydra.callbacks.cpu_distributed._target_=audio_ssl_ext.cpu_distributed.CpuDistributed

Under ``torchrun`` (one process per rank) and with ``distributed_no_spawn=true`` plus an explicit
``distributed_init_method``/``distributed_rank`` per process, the same applies.
"""

import functools
import logging
import os
import random

import torch

logger = logging.getLogger(__name__)

_TORCHRUN_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def _on_cpu(dt_cfg) -> bool:
    """``dt_cfg`` is ``cfg.distributed_training`` (its ``cpu`` field mirrors ``common.cpu``)."""
    return bool(getattr(dt_cfg, "cpu", False)) or not torch.cuda.is_available()


def _infer_init_method(original, cfg, force_distributed=False):
    if not _on_cpu(cfg) or cfg.distributed_init_method is not None or cfg.tpu or cfg.pipeline_model_parallel:
        return original(cfg, force_distributed)
    if cfg.distributed_world_size == 1 and not all(k in os.environ for k in _TORCHRUN_KEYS):
        return None
    if all(k in os.environ for k in _TORCHRUN_KEYS):
        # fairseq/distributed/utils.py:91 (_infer_torch_distributed_launch_init): device_id =
        # rank % torch.cuda.device_count(), a ZeroDivisionError without CUDA. On the CPU every
        # process is its own device 0; torchrun's env:// rendezvous as fairseq sets it.
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True
        return None
    if os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST"):
        return original(cfg, force_distributed)  # Slurm on CPUs: fairseq's own inference
    # fairseq/distributed/utils.py:160 (_infer_single_node_init) asserts world_size <=
    # torch.cuda.device_count(), and utils.py:65-66 skips the single-node init altogether when
    # distributed_port > 0 (it expects Slurm then: the run falls back to one process that believes
    # in world size N and fails); utils.py:74-76 then sets distributed_num_procs =
    # min(torch.cuda.device_count(), world_size) = 0. On the CPU: one node, one process per rank,
    # on distributed_port (a random one when unset, as fairseq does).
    if cfg.distributed_port <= 0:
        cfg.distributed_port = random.randint(10000, 60000)
    cfg.distributed_init_method = f"tcp://localhost:{cfg.distributed_port}"
    if not cfg.distributed_no_spawn:
        cfg.distributed_num_procs = cfg.distributed_world_size
    return None


def _call_main(original, cfg, main, **kwargs):
    from fairseq.distributed import utils as distributed_utils

    dt = cfg.distributed_training
    if not _on_cpu(dt) or cfg.common.tpu or dt.distributed_world_size <= 1 and not all(
        k in os.environ for k in _TORCHRUN_KEYS
    ):
        return original(cfg, main, **kwargs)
    if dt.distributed_backend == "nccl":
        # fairseq/dataclass/configs.py:272: the backend defaults to nccl, which has no CPU
        # tensors; gloo is torch's CPU backend.
        dt.distributed_backend = "gloo"
    if dt.distributed_init_method is None:
        distributed_utils.infer_init_method(dt)
    if dt.distributed_init_method is None or dt.distributed_no_spawn:
        return original(cfg, main, **kwargs)
    # fairseq/distributed/utils.py:379-385 (call_main) spawns min(torch.cuda.device_count(),
    # world_size) processes: none without CUDA. On the CPU: distributed_num_procs (the processes
    # of this node; the whole world on one node).
    nprocs = dt.distributed_num_procs if dt.distributed_num_procs and dt.distributed_num_procs > 1 else None
    nprocs = min(nprocs or dt.distributed_world_size, dt.distributed_world_size)
    kwargs["start_rank"] = dt.distributed_rank or 0
    dt.distributed_rank = None  # assigned by distributed_main: start_rank + process index
    torch.multiprocessing.spawn(
        fn=distributed_utils.distributed_main, args=(main, cfg, kwargs), nprocs=nprocs, join=True
    )


def _all_gather_list(original, data, group=None, max_size=16384):
    from fairseq import utils
    from fairseq.distributed import utils as distributed_utils

    if distributed_utils.use_xla():
        return original(data, group=group, max_size=max_size)
    if group is None:
        group = distributed_utils.get_global_group()
    if torch.cuda.is_available() and torch.distributed.get_backend(group) == "nccl":
        return original(data, group=group, max_size=max_size)
    # fairseq/distributed/utils.py:620-621 (all_gather_list) allocates a torch.cuda.ByteTensor
    # and a pinned CPU buffer (pin_memory needs CUDA); the trainer gathers logging outputs with
    # it when the criterion's cannot be summed (trainer.py:1405-1431). gloo gathers Python objects
    # directly.
    out = [None] * distributed_utils.get_world_size(group=group)
    torch.distributed.all_gather_object(out, utils.move_to_cpu(data), group=group)
    return out


def _ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    class CpuAwareDistributedDataParallel(DistributedDataParallel):
        """fairseq/models/distributed_fairseq_model.py:60-63 passes device_ids=[device_id] and
        output_device=device_id for every module; torch refuses device_ids for a CPU module
        ("device_ids can only be None or contain a single element" / "for CPU modules ...").
        A CPU module gets None, which is how torch wants it; a CUDA one is untouched."""

        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            first = next(module.parameters(), None)
            if first is not None and first.device.type == "cpu":
                device_ids, output_device = None, None
            super().__init__(module, device_ids, output_device, *args, **kwargs)

    return CpuAwareDistributedDataParallel


def _dump_rank_state(original, trainer, samples, raise_oom=False):
    """With AUDIO_SSL_EXT_RANK_STATE_DIR set, every rank writes its model's state dict (students,
    EMA teachers, buffers) after each update to DIR/rank{R}_update{N}.pt: fairseq saves
    checkpoints from rank 0 only, and this shows what the other ranks hold (tests, debugging)."""
    out = original(trainer, samples, raise_oom)
    directory = os.environ.get("AUDIO_SSL_EXT_RANK_STATE_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        rank = trainer.data_parallel_rank
        path = os.path.join(directory, f"rank{rank}_update{trainer.get_num_updates()}.pt")
        torch.save({k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}, path)
    return out


def install() -> None:
    """Patch fairseq's module attributes (idempotent). fairseq looks every patched name up through
    its module at call time (hydra_train.py:56 ``distributed_utils.call_main``, utils.py:370
    ``infer_init_method``, trainer.py:158/1430 ``distributed_utils.all_gather_list``,
    distributed_fairseq_model.py:60 ``DistributedDataParallel``)."""
    from fairseq import trainer as fairseq_trainer
    from fairseq.distributed import utils as distributed_utils
    from fairseq.models import distributed_fairseq_model

    if getattr(distributed_utils, "_audio_ssl_ext_cpu_patched", False):
        return
    import fairseq

    if not fairseq.__version__.startswith("0.12."):
        logger.warning("the CPU distributed patches follow fairseq 0.12.x's code; fairseq %s: not applied", fairseq.__version__)
        return
    for name, wrapper in (
        ("infer_init_method", _infer_init_method),
        ("call_main", _call_main),
        ("all_gather_list", _all_gather_list),
    ):
        original = getattr(distributed_utils, name)
        setattr(distributed_utils, name, functools.wraps(original)(functools.partial(wrapper, original)))
    distributed_fairseq_model.DistributedDataParallel = _ddp_class()
    if os.environ.get("AUDIO_SSL_EXT_RANK_STATE_DIR"):  # tests, debugging: not on every run's hot path
        original_step = fairseq_trainer.Trainer.train_step

        @functools.wraps(original_step)
        def train_step(self, samples, raise_oom=False):
            return _dump_rank_state(original_step, self, samples, raise_oom)

        fairseq_trainer.Trainer.train_step = train_step
    original_init = fairseq_trainer.Trainer.__init__

    @functools.wraps(original_init)
    def trainer_init(self, cfg, *args, **kwargs):
        dt = cfg.distributed_training
        if dt.distributed_world_size > 1 and _on_cpu(dt) and not torch.distributed.is_initialized():
            # fairseq/distributed/utils.py:65-66/379-385: without the launcher-side patches one
            # process trains as if it were N and fails later in torch ("Default process group
            # has not been initialized"); say what is missing instead.
            raise RuntimeError(
                f"distributed_world_size={dt.distributed_world_size} on the CPU, but fairseq started one process: "
                "add +hydra.callbacks.cpu_distributed._target_=audio_ssl_ext.cpu_distributed.CpuDistributed "
                "to the fairseq-hydra-train command (see audio_ssl_ext/cpu_distributed.py)"
            )
        original_init(self, cfg, *args, **kwargs)

    fairseq_trainer.Trainer.__init__ = trainer_init
    distributed_utils._audio_ssl_ext_cpu_patched = True


try:  # hydra is fairseq's dependency; the callback only makes hydra import this module early
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class CpuDistributed(_HydraCallback):
    """A hydra callback whose only job is to be imported in fairseq-hydra-train's first process
    (before fairseq's ``call_main``), which installs the patches there."""

    def __init__(self, *args, **kwargs):
        install()


install()
