"""JOOCI: a Content encoder and an Other encoder over one conv front end, joined by split-and-append
(recipe, every choice and what the paper says: examples/jooci/README.md).

Content is musicHuBERT (fairseq's HuBERT: multi-cluster masked prediction, seeded masks). Other is
an ECAPA-TDNN (modules/ecapa.py) on the front end's frames whose block inputs carry the Content
layers (split into one group per block, each group's mean appended, gradient stopped), trained
as an RDINO student against its EMA teacher (modules/dino.py) on frame crops of each utterance,
with a gradient-reversed decoder that tries to predict the Content targets from Other.
Content never receives a gradient from an Other loss: the front end and the Content layers reach
Other detached. Phase 1 (``content_frozen_updates``) trains Other alone.
"""

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.models import register_model
from omegaconf import II
from torch import nn

from audio_ssl_ext.inference.jooci import FEATURE_SETS, JoociFeatures, content_groups
from audio_ssl_ext.models.music_hubert import MusicHubertConfig, MusicHubertModel
from audio_ssl_ext.modules.collapse import check_collapse, mean_channel_std
from audio_ssl_ext.modules.conv_features import ConvFraming
from audio_ssl_ext.modules.dino import DINOHead, DINOLoss, diversity_loss, grad_reverse, redundancy_loss
from audio_ssl_ext.modules.ecapa import EcapaTdnn
from audio_ssl_ext.modules.ema import EMATeacher, TeacherCheckpointMixin
from audio_ssl_ext.modules.masking import seeded_generator
from audio_ssl_ext.modules.schedules import linear_ramp

logger = logging.getLogger(__name__)


@dataclass
class JoociConfig(MusicHubertConfig):
    # Other encoder: ECAPA-TDNN (Res2Net scale 8, SE bottleneck 128, dilations 2/3/4), 640 wide so
    # that the model for features counts ~109M parameters, the paper's size
    other_channels: int = 640
    other_dilations: List[int] = field(default_factory=lambda: [2, 3, 4])
    other_kernel_size: int = 3
    other_res2net_scale: int = 8
    other_se_channels: int = 128
    other_mfa_channels: int = 1920
    other_attention_channels: int = 128
    other_embed_dim: int = 192
    split_and_append: bool = field(
        default=True, metadata={"help": "append the Content layer groups to the Other blocks' inputs"}
    )
    # RDINO head and loss
    dino_hidden_dim: int = 2048
    dino_reg_dim: int = field(default=8192, metadata={"help": "head width the regularizers see"})
    dino_bottleneck_dim: int = 256
    dino_out_dim: int = field(default=65536, metadata={"help": "prototypes"})
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    teacher_momentum: float = field(default=0.996, metadata={"help": "EMA momentum at update 0 (cosine to the end value)"})
    teacher_end_momentum: float = 1.0
    teacher_momentum_updates: int = II("optimization.max_update")
    # multi-crop, in frames of the front end (50 Hz at 16 kHz)
    global_crops: int = 2
    global_crop_frames: int = field(default=200, metadata={"help": "4 s; teacher and student"})
    local_crops: int = 4
    local_crop_frames: int = field(default=100, metadata={"help": "2 s; student only"})
    # regularizers (on the head's reg_dim features), weight ramped linearly
    reg_weight: float = 0.05
    reg_end_weight: float = 0.2
    reg_weight_updates: int = field(default=20000, metadata={"help": "updates of the ramp (RDINO: 10 of 70 epochs)"})
    diversity_gamma: float = 1.0
    # the gradient-reversed decoder of the Content targets from Other
    grl_scale: float = 1.0
    # phases
    content_frozen_updates: int = field(
        default=0, metadata={"help": "phase 1: updates that train Other alone (Content frozen)"}
    )
    content_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "a musicHuBERT / HuBERT checkpoint whose weights start Content"}
    )
    # collapse guards, from min_var_after_updates on
    min_teacher_information: float = field(
        default=0.1,
        metadata={"help": "stop when the information (nats) the teacher's outputs carry about their inputs "
                  "(entropy of the batch mean minus the mean entropy) falls below"},
    )
    min_embed_std: float = field(default=0.01, metadata={"help": "stop when the Other embedding std falls below"})
    min_var_after_updates: int = 5000


class OtherBranch(nn.Module):
    """What the RDINO teacher averages: the Other encoder and its head."""

    def __init__(self, cfg: JoociConfig, in_dim: int, append_dim: int):
        super().__init__()
        self.encoder = EcapaTdnn(
            in_dim, cfg.other_channels, tuple(cfg.other_dilations), cfg.other_kernel_size, cfg.other_res2net_scale,
            cfg.other_se_channels, (append_dim,) * len(cfg.other_dilations), cfg.other_mfa_channels,
            cfg.other_attention_channels, cfg.other_embed_dim,
        )
        self.head = DINOHead(cfg.other_embed_dim, cfg.dino_hidden_dim, cfg.dino_reg_dim, cfg.dino_bottleneck_dim, cfg.dino_out_dim)


def crop_frames(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """x (B, T, C), starts (B,) -> (B, length, C): x[b, starts[b] : starts[b] + length]."""
    index = starts[:, None] + torch.arange(length, device=x.device)[None, :]
    return x.gather(1, index[..., None].expand(-1, -1, x.size(-1)))


@register_model("jooci", dataclass=JoociConfig)
class JoociModel(JoociFeatures, TeacherCheckpointMixin, MusicHubertModel):
    teacher_description = "the RDINO teacher of the Other branch"

    def __init__(self, cfg: JoociConfig, task_cfg, dictionaries) -> None:
        super().__init__(cfg, task_cfg, dictionaries)
        groups = len(cfg.other_dilations)
        if cfg.encoder_layers % groups:
            raise ValueError(
                f"model.encoder_layers={cfg.encoder_layers} must split evenly into one group per Other block "
                f"(model.other_dilations={list(cfg.other_dilations)})"
            )
        if cfg.global_crops < 1 or cfg.local_crop_frames > cfg.global_crop_frames:
            raise ValueError("model.global_crops must be >= 1 and model.local_crop_frames <= model.global_crop_frames")
        front_dim = self.framing.conv_layers[-1][0]
        self.other = OtherBranch(cfg, front_dim, cfg.encoder_embed_dim if cfg.split_and_append else 0)
        self.grl_decoders = nn.ModuleList(nn.Linear(cfg.other_channels, len(d)) for d in dictionaries)
        self.label_pads = [d.pad() for d in dictionaries]
        self.dino_loss = DINOLoss(cfg.dino_out_dim, cfg.teacher_temp, cfg.student_temp, cfg.center_momentum)
        # Set once Content has been started from content_checkpoint; checkpointed, so a resumed
        # run does not load it again.
        self.register_buffer("content_initialized", torch.tensor(False))
        self.feature_set = "both"
        self.teacher: Optional[EMATeacher] = None  # not in the copy the teacher is made from
        self.teacher = EMATeacher(
            self.other, cfg.teacher_momentum, cfg.teacher_end_momentum, cfg.teacher_momentum_updates, schedule="cosine"
        )

    @classmethod
    def build_model(cls, cfg: JoociConfig, task):
        if not task.dictionaries:
            raise ValueError("jooci predicts k-means labels: set task.labels, task.label_dir and task.label_rate")
        return super().build_model(cfg, task)

    def remove_pretraining_modules(self):
        super().remove_pretraining_modules()
        self.teacher = None
        self.other.head = None
        self.grl_decoders = None

    # --- the parameters each phase trains ---------------------------------------------------

    def content_parameters(self) -> Dict[str, nn.Parameter]:
        """Everything but the Other branch and its decoders: the front end, Content, its heads."""
        other = ("other.", "grl_decoders.")
        return {name: p for name, p in self.named_parameters() if not name.startswith(other)}

    @property
    def content_frozen(self) -> bool:
        return self.num_updates < self.cfg.content_frozen_updates

    def _init_content_once(self) -> None:
        path = self.cfg.content_checkpoint
        if not path or bool(self.content_initialized):
            return
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.content_checkpoint={path}: file not found")
        from audio_ssl_ext.checkpoint_io import check_finite_weights, load_checkpoint

        checkpoint = load_checkpoint(path)  # weights-only, with fairseq's config classes allowed
        state, saved = checkpoint.get("model"), checkpoint.get("cfg")
        if state is None or saved is None:
            raise KeyError(f"model.content_checkpoint={path}: no 'model' and 'cfg' entries, not a fairseq checkpoint")
        check_finite_weights(state, path)
        # The conv strides, the sample rate and the waveform normalisation are not in the weights:
        # a checkpoint trained with others would load without a shape error and give wrong frames.
        theirs = ConvFraming.from_configs(saved["model"], saved["task"])
        if theirs != self.framing:
            raise ValueError(
                f"model.content_checkpoint={path} was trained with {theirs}, this model has {self.framing}: "
                f"set conv_feature_layers, extractor_mode, layer_norm_first, task.sample_rate and "
                f"task.normalize as the checkpoint's"
            )
        own = self.state_dict()
        label_heads = ("final_proj.", "label_embs_concat", "cqt_head.")  # may belong to other label sets
        missing = sorted(k for k in self.content_parameters() if k not in state and not k.startswith(label_heads))
        if missing:
            raise KeyError(f"model.content_checkpoint={path} lacks Content weights {missing[:5]}: not a HuBERT-style checkpoint")
        loaded, skipped = {}, []
        for key, value in state.items():
            if key not in own or key.startswith(("other.", "grl_decoders.", "_teacher.")):
                continue
            if own[key].shape == value.shape:
                loaded[key] = value
            elif key.startswith(label_heads):
                skipped.append(key)
            else:
                raise ValueError(
                    f"model.content_checkpoint={path}: {key} is {tuple(value.shape)} there, {tuple(own[key].shape)} here "
                    f"(set the Content architecture as the checkpoint's)"
                )
        with torch.no_grad():
            for key, value in loaded.items():
                own[key].copy_(value)
            self.content_initialized.fill_(True)
        logger.info("Content started from %s (%d tensors; kept fresh: %s)", path, len(loaded), skipped or "none")

    # --- training -----------------------------------------------------------------------------

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
        """HuBERT's losses of Content (no gradient in phase 1), plus Other's: ``dino``,
        ``regularizer`` and ``grl`` as extra losses after HuBERT's (``criterion.loss_weights``)."""
        content_only = features_only or target_list is None or not mask
        if not content_only and self.training:
            self._init_content_once()
        frozen = self.content_frozen and not content_only
        with torch.no_grad() if frozen else contextlib.nullcontext():
            result = super().forward(source, target_list, padding_mask, mask, features_only, output_layer, sample_ids)
        if content_only:
            return result
        result.update(self.other_losses(source, padding_mask, target_list, self.require_sample_ids(sample_ids)))
        return result

    @contextlib.contextmanager
    def _content_inference(self):
        """Content as downstream sees it: eval mode (no dropout, no layer drop), no gradient."""
        modes = [(m, m.training) for m in (self.feature_extractor, self.layer_norm, self.encoder)]
        for m, _ in modes:
            m.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, mode in modes:
                m.train(mode)

    def _inputs(self, source, lengths):
        """Front features (B, T, C), frame padding (B, T), the Content states, the appended groups."""
        with self._content_inference():
            front, frame_padding = self.front_features(source, lengths)
            states = self.encoder_states(front, frame_padding)
            groups = content_groups(states, len(self.cfg.other_dilations)) if self.cfg.split_and_append else None
        return front, frame_padding, states, groups

    def crop_starts(self, frames: torch.Tensor, sample_ids: torch.Tensor, length: int, views: int, kind: int) -> torch.Tensor:
        """(views, B) starts of crops of ``length`` frames, uniform over each item's real frames,
        seeded per sample as every mask is (``kind``: 0 global, 1 local crops)."""
        starts = []
        for n, sample_id in zip(frames.tolist(), sample_ids.tolist()):
            generator = seeded_generator(*self.mask_entropy(), int(sample_id), kind)
            starts.append(torch.randint(0, n - length + 1, (views,), generator=generator))
        return torch.stack(starts, dim=1).to(frames.device)

    def other_losses(self, source, padding_mask, target_list, sample_ids) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        lengths = torch.full((source.size(0),), source.size(1), device=source.device)
        if padding_mask is not None:
            lengths = lengths - padding_mask.sum(-1)
        front, frame_padding, _, groups = self._inputs(source, lengths)
        frames = (~frame_padding).sum(-1)
        global_len = min(cfg.global_crop_frames, int(frames.min()))
        local_len = min(cfg.local_crop_frames, global_len)

        def views(starts, length):
            x = torch.cat([crop_frames(front, s, length) for s in starts])
            appended = None
            if groups is not None:
                appended = [torch.cat([crop_frames(g, s, length) for s in starts]) for g in groups]
            return x, torch.full((x.size(0),), length, device=x.device), appended

        global_starts = self.crop_starts(frames, sample_ids, global_len, cfg.global_crops, kind=0)
        global_views = views(global_starts, global_len)
        batch = source.size(0)

        # Student: every view. Teacher: the global views, after catching up with this update.
        states, embedding = self.other.encoder(*global_views)
        reg_features, logits = self.other.head(embedding)
        student_logits = list(logits.split(batch))
        if cfg.local_crops > 0:
            local_starts = self.crop_starts(frames, sample_ids, local_len, cfg.local_crops, kind=1)
            _, local_embedding = self.other.encoder(*views(local_starts, local_len))
            student_logits += list(self.other.head(local_embedding)[1].split(batch))
        with torch.no_grad():
            self.teacher.update(self.other, self.num_updates)
            teacher_logits = list(self.teacher.model.head(self.teacher.model.encoder(*global_views)[1])[1].split(batch))
            teacher_entropy = self.dino_loss.teacher_entropy(teacher_logits)
            mean_probs = torch.cat([self.dino_loss.teacher_probs(t) for t in teacher_logits]).mean(0)
            batch_entropy = -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum()
            # 0 when every input gets the same distribution: DINO's collapse, uniform or one-hot.
            information = batch_entropy - teacher_entropy
        dino = self.dino_loss(student_logits, teacher_logits)

        weight = linear_ramp(cfg.reg_weight, cfg.reg_end_weight, self.num_updates, cfg.reg_weight_updates)
        diversity = diversity_loss(reg_features, cfg.diversity_gamma)
        redundancy = redundancy_loss(reg_features)

        # The decoder learns to read the Content targets from Other's last block; the reversed
        # gradient pushes that information out of Other.
        last = grad_reverse(states[-1], cfg.grl_scale)
        grl = 0.0
        for decoder, targets, pad in zip(self.grl_decoders, target_list, self.label_pads):
            label_index = (torch.arange(global_len, device=last.device)[None, :] + global_starts.reshape(-1, 1))
            label_index = (label_index.float() * self.feat2tar_ratio).long().clamp_max(targets.size(1) - 1)
            labels = targets.repeat(cfg.global_crops, 1).gather(1, label_index)
            grl = grl + F.cross_entropy(decoder(last).flatten(0, 1), labels.flatten(), ignore_index=pad)

        embed_std = mean_channel_std(embedding.detach())
        if self.training and self.num_updates >= cfg.min_var_after_updates:
            check_collapse("jooci", self.num_updates, [
                ("teacher information", information, "min_teacher_information", cfg.min_teacher_information),
                ("Other embedding std", embed_std, "min_embed_std", cfg.min_embed_std),
            ])
        return {
            "dino": dino,
            "regularizer": weight * (diversity + redundancy),
            "grl": grl / len(target_list),
            "diversity": diversity.detach(),
            "redundancy": redundancy.detach(),
            "teacher_entropy": teacher_entropy,
            "teacher_information": information,
            "embed_std": embed_std,
            "ema_decay": self.teacher.decay * 1000,  # x1000: fairseq logs 3 decimals
        }

    def get_extra_losses(self, net_output):
        losses, names = super().get_extra_losses(net_output)
        for name in ("dino", "regularizer", "grl"):
            if name in net_output:
                losses.append(net_output[name])
                names.append(name)
        return losses, names

    # --- features -----------------------------------------------------------------------------

    def select_features(self, features: Optional[str]) -> None:
        """``both`` (default: each Content state with the Other state at its depth, concatenated),
        ``content`` (the Content states) or ``other`` (the Other stem and blocks)."""
        features = features or "both"
        if features not in FEATURE_SETS:
            raise ValueError(f"jooci features={features!r}: one of {FEATURE_SETS}")
        self.feature_set = features
