"""An exponential-moving-average teacher: fp32, no gradients, one step per optimizer update.

Shared by the teacher-student learners (music2vec, Audio-JEPA, JOOCI). The
averaging itself is fairseq's ``EMAModule`` (``ema_fp32=True``: the running average is kept in
fp32 master copies, whatever precision the student trains in; ``skip_keys`` are copied from the
student instead of averaged). ``EMAModule`` alone does not fit a resumable fairseq run, and this
class adds the missing pieces:

- the decay schedule (data2vec / I-JEPA: linear from ``ema_decay`` to ``ema_end_decay`` over
  ``ema_anneal_end_step`` updates, then constant; DINO: the same along a cosine), as a function
  of the update count;
- once per optimizer update: ``update(student, num_updates)`` moves the teacher only when
  ``num_updates`` has advanced since its last step. fairseq calls ``model.set_num_updates(n)``
  once per *micro-batch* (``FairseqTask.train_step``), so data2vec_audio, which steps on every
  call, moves its teacher ``update_freq`` times per update;
- the step count, saved with the fp32 weights (``state_dict`` / ``load_state_dict``, strict), so
  a resumed run continues exactly;
- following the student's device and dtype: the teacher is not a registered submodule (fairseq's
  ``model.half()`` would turn the fp32 masters into fp16, and the optimizer and DDP must not see
  its parameters), so ``.to(device)`` does not reach it; it moves itself on the next ``update``.
"""

from typing import Dict, Iterable

import torch
import torch.nn as nn
from fairseq.modules import EMAModule, EMAModuleConfig

from audio_ssl_ext.modules.collapse import mean_channel_std
from audio_ssl_ext.modules.schedules import cosine_ramp, linear_ramp


RAMPS = {"linear": linear_ramp, "cosine": cosine_ramp}


def ema_decay_at(
    num_updates: int, ema_decay: float, ema_end_decay: float, anneal_end_step: int, schedule: str = "linear"
) -> float:
    """``ema_decay`` at update 0, ``ema_end_decay`` from ``anneal_end_step`` on, in between along
    ``schedule``: ``linear`` (data2vec's ``get_annealed_rate``, I-JEPA) or ``cosine`` (DINO)."""
    return RAMPS[schedule](ema_decay, ema_end_decay, num_updates, anneal_end_step)


class EMATeacher:
    """EMA copy of ``student`` (an ``nn.Module``), built from the student's current weights.

    ``update(student, n)`` after ``n`` optimizer updates applies, once,
    ``teacher = d * teacher + (1 - d) * student`` with ``d = ema_decay_at(n, ...)`` to every
    parameter not in ``skip_keys`` (those, and the buffers, are copied from the student).
    """

    def __init__(
        self,
        student: nn.Module,
        ema_decay: float,
        ema_end_decay: float,
        ema_anneal_end_step: int,
        skip_keys: Iterable[str] = (),
        schedule: str = "linear",
    ):
        if not 0.0 <= ema_decay <= 1.0 or not 0.0 <= ema_end_decay <= 1.0:
            raise ValueError(
                f"EMA decays must lie in [0, 1], got ema_decay={ema_decay}, "
                f"ema_end_decay={ema_end_decay}"
            )
        self.ema_decay = ema_decay
        self.ema_end_decay = ema_end_decay
        self.ema_anneal_end_step = ema_anneal_end_step
        if schedule not in RAMPS:
            raise ValueError(f"EMA schedule must be one of {sorted(RAMPS)}, got {schedule!r}")
        self.schedule = schedule
        names = {name for name, _ in student.named_parameters()}
        unknown = sorted(set(skip_keys) - names)
        if unknown:
            raise KeyError(f"EMA skip_keys name no parameter of the student: {unknown}")
        self._ema = EMAModule(
            student,
            EMAModuleConfig(ema_decay=ema_decay, ema_fp32=True, add_missing_params=False),
            copy_model=True,
            skip_keys=set(skip_keys),
        )
        self._ema.model.eval()
        self.num_updates = 0  # the student update count the teacher has absorbed

    @property
    def model(self) -> nn.Module:
        """The teacher network (eval mode, no gradients), in the student's device and dtype."""
        return self._ema.model

    def decay_at(self, num_updates: int) -> float:
        return ema_decay_at(num_updates, self.ema_decay, self.ema_end_decay, self.ema_anneal_end_step, self.schedule)

    @property
    def decay(self) -> float:
        """The decay of the teacher's last step (``ema_decay`` before any), for logging."""
        return self.decay_at(self.num_updates)

    @torch.no_grad()
    def update(self, student: nn.Module, num_updates: int) -> bool:
        """Absorb the student after ``num_updates`` optimizer updates; True if the teacher moved.

        Calls with a count the teacher has already absorbed (the other micro-batches of the same
        update, a validation pass) leave it unchanged, so it moves once per update whatever
        ``update_freq`` is.
        """
        self.follow(student)
        if num_updates <= self.num_updates:
            return False
        self._ema.set_decay(self.decay_at(num_updates))
        if self._ema.get_decay() < 1.0:
            self._ema.step(student)
        self.num_updates = num_updates
        return True

    def follow(self, student: nn.Module) -> None:
        """Put the teacher on the student's device and in its dtype; fp32 masters on the device."""
        reference = next(student.parameters())
        current = next(self._ema.model.parameters())
        if current.device != reference.device or current.dtype != reference.dtype:
            self._ema.model.to(device=reference.device, dtype=reference.dtype)
        masters = self._ema.fp32_params
        for key, value in masters.items():
            if value.device != reference.device:
                masters[key] = value.to(reference.device)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The fp32 weights (and buffers) by parameter name, and ``num_updates``."""
        # EMAModule keeps buffers among its fp32 masters but refreshes only the model's copy.
        buffers = dict(self._ema.model.named_buffers())
        state = {f"params.{k}": buffers.get(k, v) for k, v in self._ema.fp32_params.items()}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.long)
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore from ``state_dict()``; every key must be there and nothing else."""
        expected = {f"params.{k}" for k in self._ema.fp32_params} | {"num_updates"}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"EMA teacher state does not match the model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        params = {k[len("params.") :]: v for k, v in state.items() if k.startswith("params.")}
        device = next(iter(self._ema.fp32_params.values())).device
        params = {k: v.to(device) for k, v in params.items()}
        self._ema.restore(params, build_fp32_params=True)
        self.num_updates = int(state["num_updates"])


class TeacherCheckpointMixin:
    """For a fairseq model holding ``self.teacher`` (an ``EMATeacher``, or None once
    ``remove_pretraining_modules`` dropped it): the teacher's fp32 weights and step count travel
    in the model's state dict under ``_teacher.``, so fairseq's checkpoints carry them and a
    resumed run continues exactly; a checkpoint without them fails a strict load.

    The model steps its teacher in ``forward`` (``teacher.update(student, self.num_updates)``),
    which moves it once per update although fairseq calls ``set_num_updates`` per micro-batch.
    Put it before the other bases.
    """

    teacher_description = "the EMA teacher"

    def teacher_logs(self, target: torch.Tensor, prediction: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What fairseq logs of a teacher-student step: the spread of targets and predictions
        (``mean_channel_std``, data2vec's ``target_var`` / ``pred_var``) and the decay."""
        with torch.no_grad():
            logs = {"target_var": mean_channel_std(target), "pred_var": mean_channel_std(prediction)}
        logs["ema_decay"] = self.teacher.decay * 1000  # x1000: fairseq logs 3 decimals
        return logs

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.teacher is not None:
            for key, value in self.teacher.state_dict().items():
                destination[f"{prefix}_teacher.{key}"] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        head = f"{prefix}_teacher."
        teacher_state = {k[len(head) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(head)}
        if self.teacher is not None:
            if teacher_state:
                self.teacher.load_state_dict(teacher_state)
            else:
                missing_keys.append(f"{head}* ({self.teacher_description})")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
