"""Watching for representation collapse in learners with learned targets (an EMA teacher's).

A falling loss means nothing once the targets stop varying, so these learners log the spread of
their targets and predictions and can stop with a clear message when it falls below a floor
(a known failure mode in fairseq's data2vec tracker).
"""

import logging
from typing import Sequence, Tuple

import torch
import torch.distributed as dist


class CollapseError(RuntimeError):
    """The targets or predictions lost their variance: the run learns nothing any more."""


def mean_channel_std(y: torch.Tensor) -> torch.Tensor:
    """Std of each channel over all frames (and all data-parallel workers), averaged: data2vec's
    ``target_var`` / ``pred_var``."""
    y = y.reshape(-1, y.size(-1)).float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = torch.tensor(float(y.size(0)), device=y.device)
        total, total_sq = y.sum(dim=0), (y**2).sum(dim=0)
        for t in (count, total, total_sq):
            dist.all_reduce(t)
        var = total_sq / (count - 1) - total**2 / (count * (count - 1))
    else:
        var = y.var(dim=0)
    return torch.sqrt(var + 1e-6).mean()


def check_collapse(learner: str, num_updates: int, checks: Sequence[Tuple[str, torch.Tensor, str, float]]) -> None:
    """Raise ``CollapseError`` (and log it) when a statistic falls below its floor.

    ``checks``: (what, value, config field, floor), e.g. ("target std", target_var,
    "min_target_var", cfg.min_target_var); the message names the field that sets the floor.
    """
    for what, value, field, floor in checks:
        if value < floor:
            message = (
                f"{learner} collapsed at update {num_updates}: {what} {float(value):.4g} < model.{field}={floor} "
                f"(the targets no longer vary; lower the lr, or check the EMA decay)"
            )
            logging.getLogger(__name__).error(message)
            raise CollapseError(message)
