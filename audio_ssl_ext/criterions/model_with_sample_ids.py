"""fairseq's ``model`` criterion, also handing the batch's sample ids to the model.

fairseq calls ``model(**sample["net_input"])``; the ids sit next to ``net_input`` in every fairseq
batch (``sample["id"]``). Learners that draw their masks per sample (music2vec, through fairseq's
``compute_mask_indices(seed=, epoch=, indices=)``) need them so a mask is a function of
(seed, update, sample id): the same in a resumed run as in an uninterrupted one, and different on
every data-parallel worker. Passing them here keeps the datasets' ``net_input`` exactly fairseq's,
so fairseq's own HuBERT and wav2vec 2.0 models still take those batches.
"""

from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.model_criterion import ModelCriterion, ModelCriterionConfig


@dataclass
class ModelWithSampleIdsCriterionConfig(ModelCriterionConfig):
    pass  # the same options as fairseq's `model` criterion: loss_weights, log_keys, can_sum


@register_criterion("model_with_sample_ids", dataclass=ModelWithSampleIdsCriterionConfig)
class ModelWithSampleIdsCriterion(ModelCriterion):
    def forward(self, model, sample, reduce=True):
        net_input = dict(sample["net_input"], sample_ids=sample["id"])
        return super().forward(model, {**sample, "net_input": net_input}, reduce)
