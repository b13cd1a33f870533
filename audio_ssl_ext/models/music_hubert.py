"""musicHuBERT: fairseq's ``HubertModel`` trained on music (recipe, options and the papers:
examples/musichubert/README.md), with four additions: several label sets at one label rate
(their weights live in the ``music_hubert`` criterion), MERT's CQT reconstruction loss
(``audio_cqt_loss_m``, an extra loss after ``features_pen``), MERT's in-batch noise mixture
(``mixture_prob``: training inputs get segments of the other items of the batch added, the
targets stay the clean audio's), and masks and mixtures drawn from (seed, update, sample id),
where fairseq and MERT draw them from fresh OS entropy.
"""

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from omegaconf import II
from torch import nn

from audio_ssl_ext.modules.conv_features import ConvFraming, ConvTransformerFeatures
from audio_ssl_ext.modules.masking import seeded_generator

CQT_F_MIN = 32.7  # C1, MERT's lowest CQT bin
# The last entropy word of a sample's mixture generator; JOOCI's crops of the same sample use 0 and 1.
MIXTURE_STREAM = 2


class NoiseSegment(NamedTuple):
    """One noise segment added to an item: ``length`` samples of the item's pool from
    ``pool_start``, added at ``position`` in the item."""

    pool_start: int
    length: int
    position: int


def draw_noise_segments(
    item_samples: int,
    pool_samples: int,
    prob: float,
    length_range: Sequence[int],
    number_range: Sequence[int],
    generator: torch.Generator,
) -> List[NoiseSegment]:
    """MERT's draw (``MERTModel.inbatch_noise_augment``) for one item: mixed with probability
    ``prob``; then U{number_range} segments (bounds included), each U{length_range} samples long,
    read from U{0 .. pool - longest} of the pool and added at U{0 .. item - length} of the item.
    Segments may overlap each other. MERT mixes when its draw exceeds ``mixture_prob``, i.e. with
    probability 1 - mixture_prob; the two agree at its 0.5.

    An item or pool shorter than the longest segment gets nothing (MERT's ``try`` leaves such an
    item clean too); the model logs the fraction of items mixed. The pool of an item is the real
    samples of the batch's other items, in batch order, so a segment may span two of them (as in
    MERT, whose pool also holds the padding).
    """
    low, high = int(length_range[0]), int(length_range[1])
    if torch.rand(1, generator=generator).item() >= prob:
        return []
    if item_samples < high or pool_samples < high:
        return []
    count = int(torch.randint(int(number_range[0]), int(number_range[1]) + 1, (1,), generator=generator))
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    starts = torch.randint(0, pool_samples - high + 1, (count,), generator=generator).tolist()
    positions = [int(torch.randint(0, item_samples - n + 1, (1,), generator=generator)) for n in lengths]
    return [NoiseSegment(*segment) for segment in zip(starts, lengths, positions)]


def mix_noise_segments(
    source: torch.Tensor, lengths: Sequence[int], segments: Sequence[Sequence[NoiseSegment]], volume: float
) -> torch.Tensor:
    """A copy of ``source`` (B, S) with ``volume`` x each item's segments of its pool added (the
    pool of item i: items 0..i-1 then i+1..B-1, ``lengths`` real samples each)."""
    lengths = [int(n) for n in lengths]
    flat = torch.cat([source[b, :n] for b, n in enumerate(lengths)])
    offsets = np.cumsum([0] + lengths)
    mixed = source.clone()
    for i, item_segments in enumerate(segments):
        for segment in item_segments:
            index = segment.pool_start + torch.arange(segment.length, device=source.device)
            index = index + (index >= int(offsets[i])) * lengths[i]  # skip the item itself
            mixed[i, segment.position : segment.position + segment.length] += volume * flat[index]
    return mixed


@dataclass
class MusicHubertConfig(HubertConfig):
    audio_cqt_loss_m: bool = field(
        default=False,
        metadata={"help": "MERT's auxiliary loss: regress the CQT magnitude at masked frames (needs a "
                  "second criterion.loss_weights entry)"},
    )
    audio_cqt_bins: int = field(default=336, metadata={"help": "CQT bins from 32.7 Hz (MERT: 336)"})
    audio_cqt_bins_per_octave: int = field(default=48, metadata={"help": "CQT bins per octave (MERT: 48)"})
    # MERT's in-batch noise mixture, names as MERT's (its 95M recipe: 0.5, [12000, 24000], [1, 3], 1.0)
    mixture_prob: float = field(
        default=0.0,
        metadata={"help": "training only: probability that an item gets segments of the batch's other items "
                  "added (0: off); the labels and the CQT target stay the clean audio's"},
    )
    inbatch_noise_augment_len_range: List[int] = field(
        default_factory=lambda: [8000, 24000], metadata={"help": "[min, max] samples of a noise segment"}
    )
    inbatch_noise_augment_number_range: List[int] = field(
        default_factory=lambda: [1, 3], metadata={"help": "[min, max] noise segments per mixed item"}
    )
    inbatch_noise_augment_volume: float = field(default=1.0, metadata={"help": "scale of the added segments"})
    seed: int = II("common.seed")  # masks and mixtures are drawn from (seed, update, sample id)


@register_model("music_hubert", dataclass=MusicHubertConfig)
class MusicHubertModel(ConvTransformerFeatures, HubertModel):
    sample_ids_criterion = "music_hubert"

    def __init__(self, cfg: MusicHubertConfig, task_cfg, dictionaries) -> None:
        super().__init__(cfg, task_cfg, dictionaries)
        self.cfg = cfg
        self.framing = ConvFraming.from_configs(cfg, task_cfg)
        self._mask_sample_ids: Optional[torch.Tensor] = None
        self._mask_indices: Optional[torch.Tensor] = None
        self.cqt, self.cqt_head = None, None
        if cfg.audio_cqt_loss_m:
            from audio_ssl_ext.features import CQT

            # Raw magnitude, as MERT regresses it; the kernels are constants outside the checkpoint.
            self.cqt = CQT(
                task_cfg.sample_rate,
                self.frame_rate,
                f_min=CQT_F_MIN,
                n_bins=cfg.audio_cqt_bins,
                bins_per_octave=cfg.audio_cqt_bins_per_octave,
                log_floor=None,
            )
            self.cqt_head = nn.Linear(cfg.encoder_embed_dim, cfg.audio_cqt_bins)
        if cfg.mixture_prob:
            check_mixture_config(cfg, task_cfg)

    @classmethod
    def build_model(cls, cfg: MusicHubertConfig, task):
        if task.dictionaries and cfg.label_rate <= 0:
            raise ValueError(f"task.labels={list(task.cfg.labels)} need task.label_rate > 0 (frames/s)")
        if task.dictionaries and cfg.label_rate != task.cfg.label_rate:
            # fairseq's default makes one follow the other; an overlay that sets both can split them
            raise ValueError(
                f"model.label_rate={cfg.label_rate} differs from task.label_rate={task.cfg.label_rate}: "
                f"the labels have one frame rate, set both"
            )
        return cls(cfg, task.cfg, task.dictionaries)

    # --- masking, seeded -------------------------------------------------------------------

    def _span_mask(self, shape, padding_mask, sample_ids, prob, length, selection, other, no_overlap, min_space,
                   min_masks, stream):
        seeded = {}
        if sample_ids is not None:
            seeded = {"seed": self.cfg.seed + stream, "epoch": self.num_updates, "indices": sample_ids}
        return compute_mask_indices(
            shape, padding_mask, prob, length, selection, other,
            min_masks=min_masks, no_overlap=no_overlap, min_space=min_space, **seeded,
        )

    def time_mask(self, shape, padding_mask, sample_ids: Optional[torch.Tensor]) -> np.ndarray:
        """(B, T) bool spans, as fairseq's HuBERT draws them, from (seed, update, sample id);
        unseeded (fairseq's behaviour) only without ids, which training refuses."""
        return self._span_mask(
            shape, padding_mask, sample_ids, self.mask_prob, self.mask_length, self.mask_selection,
            self.mask_other, self.no_mask_overlap, self.mask_min_space, min_masks=2, stream=0,
        )

    def apply_mask(self, x, padding_mask, target_list):
        """fairseq's HubertModel.apply_mask with the spans drawn from (seed, update, sample id)."""
        B, T, C = x.shape
        mask_indices = None
        if self.mask_prob > 0:
            mask_indices = torch.from_numpy(self.time_mask((B, T), padding_mask, self._mask_sample_ids)).to(x.device)
            x[mask_indices] = self.mask_emb.to(x.dtype)  # under autocast (common.amp) x is half
        if self.mask_channel_prob > 0:
            channels = self._span_mask(
                (B, C), None, self._mask_sample_ids, self.mask_channel_prob, self.mask_channel_length,
                self.mask_channel_selection, self.mask_channel_other, self.no_mask_channel_overlap,
                self.mask_channel_min_space, min_masks=0, stream=1,
            )
            x[torch.from_numpy(channels).to(x.device).unsqueeze(1).expand(-1, T, -1)] = 0
        self._mask_indices = mask_indices
        return x, mask_indices

    # --- in-batch noise mixture, seeded ------------------------------------------------------

    def noise_mixture(self, source, padding_mask, sample_ids) -> Tuple[torch.Tensor, float]:
        """(mixed copy of ``source``, fraction of items mixed); each item's draw comes from
        (seed, update, its sample id), its pool from the rest of this batch."""
        lengths = [source.size(1)] * source.size(0)
        if padding_mask is not None:
            lengths = (source.size(1) - padding_mask.sum(-1)).tolist()
        total = sum(lengths)
        segments = [
            draw_noise_segments(
                n, total - n, self.cfg.mixture_prob, self.cfg.inbatch_noise_augment_len_range,
                self.cfg.inbatch_noise_augment_number_range,
                seeded_generator(*self.mask_entropy(), int(sample_id), MIXTURE_STREAM),
            )
            for n, sample_id in zip(lengths, sample_ids.tolist())
        ]
        mixed = mix_noise_segments(source, lengths, segments, self.cfg.inbatch_noise_augment_volume)
        return mixed, sum(bool(s) for s in segments) / len(segments)

    # --- forward ------------------------------------------------------------------------------

    def forward(
        self,
        source: torch.Tensor,
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        sample_ids: Optional[torch.Tensor] = None,
    ):
        """fairseq's HuBERT forward; ``sample_ids`` (the batch's ``id``) seed the masks and the
        mixture and are required in training (criterion ``music_hubert`` passes them)."""
        if self.training and mask:
            self.require_sample_ids(sample_ids)
        pretraining = not features_only and target_list is not None and mask
        with_cqt = self.cqt is not None and pretraining
        clean, mixed_fraction = source, None
        if self.cfg.mixture_prob and self.training and pretraining:
            # MERT mixes in every forward, validation and feature extraction included; here only
            # training inputs are mixed.
            with torch.no_grad():
                source, mixed_fraction = self.noise_mixture(source, padding_mask, sample_ids)
        encoder_out = {}
        hook = None
        if with_cqt:
            # The CQT head reads the encoder's output at the masked frames; fairseq's forward does
            # not return it, so it is kept on its way out rather than re-implementing the forward.
            hook = self.encoder.register_forward_hook(lambda module, args, out: encoder_out.update(x=out[0]))
        self._mask_sample_ids = None if sample_ids is None else sample_ids.detach().cpu()
        try:
            result = super().forward(source, target_list, padding_mask, mask, features_only, output_layer)
            if with_cqt:
                # the clean audio's CQT, as MERT's (computed before its mixture)
                result["cqt"] = self.cqt_loss(clean, encoder_out["x"], self._mask_indices, result["padding_mask"])
            if mixed_fraction is not None:
                result["mixed_fraction"] = mixed_fraction
        finally:
            if hook is not None:
                hook.remove()
            self._mask_sample_ids, self._mask_indices = None, None
        return result

    def cqt_loss(self, source, x, mask_indices, padding_mask) -> torch.Tensor:
        """Mean squared error of the CQT magnitude predicted at masked, unpadded frames.

        CQT frame i is centred on sample i * hop; conv frame i starts there (MERT pairs them the
        same way). The CQT has 1 + samples // hop frames, at least the conv frames.
        """
        with torch.no_grad():
            target = self.cqt(source.float())[:, : x.size(1)]
        selected = mask_indices & ~padding_mask
        prediction = self.cqt_head(x[selected])
        return F.mse_loss(prediction.float(), target[selected])

    def get_extra_losses(self, net_output):
        losses, names = super().get_extra_losses(net_output)
        if "cqt" in net_output:
            losses.append(net_output["cqt"])
            names.append("cqt")
        return losses, names

    def remove_pretraining_modules(self):
        super().remove_pretraining_modules()
        self.cqt, self.cqt_head = None, None


def check_mixture_config(cfg: MusicHubertConfig, task_cfg) -> None:
    for name in ("inbatch_noise_augment_len_range", "inbatch_noise_augment_number_range"):
        if len(getattr(cfg, name)) != 2:
            raise ValueError(f"model.{name}={list(getattr(cfg, name))} must be two numbers: [min, max]")
    low, high = (int(v) for v in cfg.inbatch_noise_augment_len_range)
    fewest, most = (int(v) for v in cfg.inbatch_noise_augment_number_range)
    if not 0 < cfg.mixture_prob <= 1:
        raise ValueError(f"model.mixture_prob={cfg.mixture_prob} must be in [0, 1] (0: no mixture)")
    if not 1 <= low <= high:
        raise ValueError(f"model.inbatch_noise_augment_len_range=[{low}, {high}] must be [min, max] samples, 1 <= min <= max")
    if not 1 <= fewest <= most:
        raise ValueError(
            f"model.inbatch_noise_augment_number_range=[{fewest}, {most}] must be [min, max] segments, 1 <= min <= max"
        )
    crop = getattr(task_cfg, "max_sample_size", None)
    if crop is not None and crop < high:
        raise ValueError(
            f"model.inbatch_noise_augment_len_range=[{low}, {high}]: task.max_sample_size={crop} crops are shorter "
            f"than the longest noise segment, so no item would ever be mixed; lower the range or raise the crop"
        )
