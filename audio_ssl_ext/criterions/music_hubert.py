"""``music_hubert``: fairseq's ``hubert`` criterion with a loss weight per label set.

fairseq's criterion sums the label sets' prediction losses with weight 1 each (its
``loss_weights`` apply to the model's extra losses only). Here ``label_weights`` (one per entry of
``task.labels``, default 1 each) weight them, e.g. MFCC k=100 at 1.0 and chroma k=24 at 0.5. It
also hands the batch's sample ids to the model (its masks are seeded with them), and refuses
``loss_weights`` that do not give one weight per extra loss: fairseq would silently stretch a
single weight (MERT's ``[10]`` meant for ``features_pen``) onto the CQT loss as well.

Everything else is fairseq's: the same sample size (masked frames), the same logged keys
(``loss_m_i`` unweighted per set, ``correct_m_i`` / ``count_m_i`` for accuracies) and the same
``reduce_metrics``.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.hubert_criterion import HubertCriterion, HubertCriterionConfig

_BUILTIN_KEYS = {"loss", "ntokens", "nsentences", "sample_size"}


@dataclass
class MusicHubertCriterionConfig(HubertCriterionConfig):
    label_weights: Optional[List[float]] = field(
        default=None,
        metadata={"help": "weight of each label set's prediction loss, in task.labels order (default 1 each)"},
    )


def count_correct(logits: torch.Tensor):
    """fairseq's hubert accuracy: the positive (column 0) is the unique arg max."""
    if logits.numel() == 0:
        return 0, 0
    is_max = logits.argmax(-1) == 0
    is_min = logits.argmin(-1) == 0  # all-equal logits: argmax and argmin both 0, not a hit
    return int((is_max & ~is_min).sum()), is_max.numel()


@register_criterion("music_hubert", dataclass=MusicHubertCriterionConfig)
class MusicHubertCriterion(HubertCriterion):
    def __init__(
        self,
        task,
        pred_masked_weight,
        pred_nomask_weight,
        loss_weights=None,
        log_keys=None,
        label_weights=None,
    ):
        super().__init__(task, pred_masked_weight, pred_nomask_weight, loss_weights, log_keys)
        names = list(getattr(task.cfg, "labels", []) or [])
        if not names:
            raise ValueError("criterion music_hubert needs frame labels: set task.labels, task.label_dir, task.label_rate")
        self.label_weights = [1.0] * len(names) if label_weights is None else [float(w) for w in label_weights]
        if len(self.label_weights) != len(names):
            raise ValueError(
                f"criterion.label_weights={list(self.label_weights)} has {len(self.label_weights)} weights "
                f"for the {len(names)} label sets task.labels={names}: give one per set"
            )

    def forward(self, model, sample, reduce=True, log_pred=False):
        net_output = model(target_list=sample["target_list"], sample_ids=sample["id"], **sample["net_input"])
        reduction = "sum" if reduce else "none"
        loss, sample_size, logging_output = 0.0, 0, {}

        for kind, weight, masked in (("m", self.pred_masked_weight, True), ("u", self.pred_nomask_weight, False)):
            logits_list = model.get_logits(net_output, masked)
            targets_list = model.get_targets(net_output, masked)
            if weight > 0 and not logits_list:
                raise ValueError(
                    f"pred_{'masked' if masked else 'nomask'}_weight > 0 but the model skipped those frames "
                    f"(model.skip_{'masked' if masked else 'nomask'})"
                )
            weighted = []
            for i, (logits, targets) in enumerate(zip(logits_list, targets_list)):
                set_loss = F.cross_entropy(logits, targets, reduction=reduction)
                logging_output[f"loss_{kind}_{i}"] = set_loss.detach().item()
                weighted.append(self.label_weights[i] * set_loss)
                with torch.no_grad():
                    correct, count = count_correct(logits)
                logging_output[f"correct_{kind}_{i}"] = correct
                logging_output[f"count_{kind}_{i}"] = count
            if weight > 0:
                loss = loss + weight * sum(weighted)
                sample_size += targets_list[0].numel()

        if self.loss_weights is None and "cqt" in net_output:
            raise ValueError("model.audio_cqt_loss_m=true needs criterion.loss_weights, one per extra loss, e.g. [10,1]")
        if self.loss_weights is not None:
            extra_losses, names = model.get_extra_losses(net_output)
            if len(extra_losses) != len(self.loss_weights):
                raise ValueError(
                    f"criterion.loss_weights={list(self.loss_weights)} has {len(self.loss_weights)} weights for the "
                    f"model's {len(extra_losses)} extra losses {names}: give one per loss (e.g. [10,1] with the CQT loss)"
                )
            for value, name, coef in zip(extra_losses, names, self.loss_weights):
                if coef != 0 and value is not None:
                    value = coef * value.float() * sample_size  # a mean, scaled to the summed losses
                    loss = loss + value
                    logging_output[f"loss_{name}"] = value.item()

        logging_output = {
            "loss": loss.item() if reduce else loss,
            "ntokens": sample_size,
            "nsentences": sample["id"].numel(),
            "sample_size": sample_size,
            **logging_output,
        }
        for key in self.log_keys:
            if key in net_output:
                logging_output[key] = float(net_output[key])
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        HubertCriterion.reduce_metrics(logging_outputs)
        # criterion.log_keys: fairseq's hubert criterion collects them but never logs them.
        for key in logging_outputs[0]:
            if key not in _BUILTIN_KEYS and not key.startswith(("loss_", "correct_", "count_")):
                value = sum(log.get(key, 0) for log in logging_outputs) / len(logging_outputs)
                metrics.log_scalar(key, value, round=4)
