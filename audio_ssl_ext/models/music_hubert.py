"""musicHuBERT: fairseq's ``HubertModel`` trained on music (recipe, options and the papers:
examples/musichubert/README.md), with three additions: several label sets at one label rate
(their weights live in the ``music_hubert`` criterion), MERT's CQT reconstruction loss
(``audio_cqt_loss_m``, an extra loss after ``features_pen``), and masks drawn from
(seed, update, sample id), where fairseq draws them from fresh OS entropy.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from omegaconf import II
from torch import nn

from audio_ssl_ext.modules.conv_features import ConvFraming, ConvTransformerFeatures

CQT_F_MIN = 32.7  # C1, MERT's lowest CQT bin


@dataclass
class MusicHubertConfig(HubertConfig):
    audio_cqt_loss_m: bool = field(
        default=False,
        metadata={"help": "MERT's auxiliary loss: regress the CQT magnitude at masked frames (needs a "
                  "second criterion.loss_weights entry)"},
    )
    audio_cqt_bins: int = field(default=336, metadata={"help": "CQT bins from 32.7 Hz (MERT: 336)"})
    audio_cqt_bins_per_octave: int = field(default=48, metadata={"help": "CQT bins per octave (MERT: 48)"})
    seed: int = II("common.seed")  # masks are drawn from (seed, update, sample id)


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

    @classmethod
    def build_model(cls, cfg: MusicHubertConfig, task):
        if task.dictionaries and cfg.label_rate <= 0:
            raise ValueError(f"task.labels={list(task.cfg.labels)} need task.label_rate > 0 (frames/s)")
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
        """fairseq's HuBERT forward; ``sample_ids`` (the batch's ``id``) seed the masks and are
        required in training (criterion ``music_hubert`` passes them)."""
        if self.training and mask:
            self.require_sample_ids(sample_ids)
        with_cqt = self.cqt is not None and not features_only and target_list is not None and mask
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
                result["cqt"] = self.cqt_loss(source, encoder_out["x"], self._mask_indices, result["padding_mask"])
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
