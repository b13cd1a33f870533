"""music2vec: data2vec 1.0 on music (recipe, options and the paper: examples/music2vec/README.md).

fairseq's wav2vec 2.0 blocks; the maths is fairseq's ``data2vec_audio``. What differs is what a
long run on a cluster needs: masks and layer drop drawn from (seed, update, sample ids), the
teacher stepped once per optimizer update and kept in the checkpoint (``modules/ema.py``), and
collapse guards with a configurable start.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices, numpy_seed
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import (
    EXTRACTOR_MODE_CHOICES,
    ConvFeatureExtractionModel,
    TransformerEncoder,
    Wav2Vec2Config,
)
from fairseq.modules import GradMultiply, LayerNorm
from fairseq.utils import get_available_activation_fns, index_put
from omegaconf import II

from audio_ssl_ext.modules.collapse import check_collapse
from audio_ssl_ext.modules.conv_features import ConvFraming, ConvTransformerFeatures, conv_output_lengths
from audio_ssl_ext.modules.ema import EMATeacher, TeacherCheckpointMixin


@dataclass
class Music2VecConfig(FairseqDataclass):
    """Defaults are the music2vec base recipe (data2vec base audio, 95M parameters)."""

    # feature extractor (wav2vec 2.0's conv stack: 320x downsampling, 50 frames/s at 16 kHz)
    conv_feature_layers: str = field(
        default="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
        metadata={"help": "conv layers as a python list of (dim, kernel, stride)"},
    )
    extractor_mode: EXTRACTOR_MODE_CHOICES = field(
        default="layer_norm",
        metadata={"help": "layer_norm: a layer norm after every conv (data2vec); default: one group norm"},
    )
    conv_bias: bool = field(default=False, metadata={"help": "conv layers have a bias"})
    feature_grad_mult: float = field(
        default=1.0, metadata={"help": "scale of the gradient reaching the feature extractor"}
    )

    # transformer
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: ChoiceEnum(get_available_activation_fns()) = "gelu"
    layer_norm_first: bool = field(
        default=False, metadata={"help": "pre-LN layers (post-LN, as wav2vec 2.0 base, otherwise)"}
    )
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the projected features"})
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "drop whole student layers"})
    conv_pos: int = field(default=95, metadata={"help": "total kernel size of the positional convs"})
    conv_pos_groups: int = 16
    pos_conv_depth: int = field(
        default=5, metadata={"help": "positional conv layers (kernel conv_pos // depth each)"}
    )

    # masking of the student's input (fairseq compute_mask_indices, static spans)
    mask_prob: float = field(
        default=0.65, metadata={"help": "fraction of frames that start a masked span (before overlaps)"}
    )
    mask_length: int = field(default=10, metadata={"help": "frames per masked span"})
    require_same_masks: bool = field(
        default=True, metadata={"help": "as many masked frames in every item of a batch"}
    )

    # targets: the teacher's top layers
    average_top_k_layers: int = field(default=8, metadata={"help": "teacher layers averaged"})
    instance_norm_target_layer: bool = field(
        default=True, metadata={"help": "instance-normalise each layer over time before averaging"}
    )
    layer_norm_target_layer: bool = field(
        default=False, metadata={"help": "layer-normalise each layer over channels before averaging"}
    )
    instance_norm_targets: bool = field(
        default=False, metadata={"help": "instance-normalise the averaged target over time"}
    )
    layer_norm_targets: bool = field(
        default=False, metadata={"help": "layer-normalise the averaged target over channels"}
    )

    # loss
    loss_beta: float = field(default=0.0, metadata={"help": "smooth L1 beta; 0 means L2"})
    loss_scale: Optional[float] = field(
        default=None, metadata={"help": "loss scale; None means 1/sqrt(encoder_embed_dim)"}
    )

    # EMA teacher
    ema_decay: float = field(default=0.999, metadata={"help": "teacher decay at update 0"})
    ema_end_decay: float = field(default=0.9999, metadata={"help": "decay after the anneal"})
    ema_anneal_end_step: int = field(
        default=30_000, metadata={"help": "updates over which the decay rises linearly"}
    )
    ema_transformer_only: bool = field(
        default=True,
        metadata={"help": "teacher = EMA of the transformer, fed the student's features; "
                  "false: EMA of the whole model, fed the waveform"},
    )
    ema_layers_only: bool = field(
        default=True,
        metadata={"help": "copy the positional convs from the student instead of averaging them "
                  "(needs ema_transformer_only)"},
    )

    # collapse guards (fairseq data2vec's, with a configurable start)
    min_target_var: float = field(
        default=0.1, metadata={"help": "stop when the target std (mean over channels) falls below"}
    )
    min_pred_var: float = field(
        default=0.01, metadata={"help": "stop when the prediction std (mean over channels) falls below"}
    )
    min_var_after_updates: int = field(
        default=5000, metadata={"help": "the two guards apply from this update on"}
    )

    seed: int = II("common.seed")  # masks and layer drop are drawn from (seed, update, sample ids)


def encoder_config(cfg: Music2VecConfig) -> Wav2Vec2Config:
    """The Wav2Vec2Config that fairseq's TransformerEncoder reads, from music2vec's fields."""
    return Wav2Vec2Config(
        encoder_layers=cfg.encoder_layers,
        encoder_embed_dim=cfg.encoder_embed_dim,
        encoder_ffn_embed_dim=cfg.encoder_ffn_embed_dim,
        encoder_attention_heads=cfg.encoder_attention_heads,
        activation_fn=cfg.activation_fn,
        layer_norm_first=cfg.layer_norm_first,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        encoder_layerdrop=cfg.encoder_layerdrop,
        conv_pos=cfg.conv_pos,
        conv_pos_groups=cfg.conv_pos_groups,
        pos_conv_depth=cfg.pos_conv_depth,
    )


def regression_targets(
    layer_outputs: List[torch.Tensor],
    instance_norm_target_layer: bool,
    layer_norm_target_layer: bool,
    instance_norm_targets: bool,
    layer_norm_targets: bool,
) -> torch.Tensor:
    """Average (B, T, C) teacher layer outputs into fp32 (B, T, C) targets, as data2vec 1.0.

    Per layer: instance norm (each channel over time, per item), then layer norm (over channels);
    then the mean over layers, then layer norm and instance norm of the mean. As in data2vec,
    the time statistics include padded frames.
    """
    layers = [y.float() for y in layer_outputs]
    if instance_norm_target_layer:
        layers = [F.instance_norm(y.transpose(1, 2)).transpose(1, 2) for y in layers]
    if layer_norm_target_layer:
        layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
    target = sum(layers) / len(layers)
    if layer_norm_targets:
        target = F.layer_norm(target, target.shape[-1:])
    if instance_norm_targets:
        target = F.instance_norm(target.transpose(1, 2)).transpose(1, 2)
    return target


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-frame loss summed over channels: squared error (beta=0) or smooth L1 with ``beta``."""
    if beta == 0:
        return F.mse_loss(prediction.float(), target.float(), reduction="none").sum(dim=-1)
    return F.smooth_l1_loss(prediction.float(), target.float(), reduction="none", beta=beta).sum(dim=-1)


@register_model("music2vec", dataclass=Music2VecConfig)
class Music2VecModel(TeacherCheckpointMixin, ConvTransformerFeatures, BaseFairseqModel):
    def __init__(self, cfg: Music2VecConfig, task_cfg=None):
        super().__init__()
        if cfg.average_top_k_layers < 1 or cfg.average_top_k_layers > cfg.encoder_layers:
            raise ValueError(
                f"model.average_top_k_layers={cfg.average_top_k_layers} must lie in "
                f"[1, encoder_layers={cfg.encoder_layers}]"
            )
        if cfg.ema_layers_only and not cfg.ema_transformer_only:
            raise ValueError("model.ema_layers_only=true needs model.ema_transformer_only=true")
        self.cfg = cfg
        self.framing = ConvFraming.from_configs(cfg, task_cfg)  # task_cfg None: 16 kHz, not normalized
        extractor_dim = self.framing.conv_layers[-1][0]

        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=list(self.framing.conv_layers), dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        self.layer_norm = LayerNorm(extractor_dim)
        self.post_extract_proj = nn.Linear(extractor_dim, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.FloatTensor(cfg.encoder_embed_dim).uniform_())
        self.encoder = TransformerEncoder(encoder_config(cfg))
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.encoder_embed_dim)  # regression head

        self.teacher: Optional[EMATeacher] = None  # not in the copy the teacher is made from
        self.teacher = EMATeacher(
            self._teacher_source(),
            cfg.ema_decay,
            cfg.ema_end_decay,
            cfg.ema_anneal_end_step,
            skip_keys=self._teacher_skip_keys(),
        )

    @classmethod
    def build_model(cls, cfg: Music2VecConfig, task=None):
        return cls(cfg, task.cfg if task is not None else None)

    def _teacher_source(self) -> nn.Module:
        return self.encoder if self.cfg.ema_transformer_only else self

    def _teacher_skip_keys(self) -> List[str]:
        if not self.cfg.ema_layers_only:
            return []
        return [f"pos_conv.{name}" for name, _ in self.encoder.pos_conv.named_parameters()]

    def remove_pretraining_modules(self, last_layer=None):
        """Drop what only pre-training needs (teacher, regression head), as data2vec_audio."""
        self.teacher = None
        self.final_proj = None
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(self.encoder.layers[: last_layer + 1])

    # --- forward ---

    def local_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """Waveform (B, S) -> projected conv features (B, T, D) and their padding mask (B, T)."""
        features = self.feature_extractor(source)
        if self.cfg.feature_grad_mult != 1.0:
            features = GradMultiply.apply(features, self.cfg.feature_grad_mult)
        features = self.layer_norm(features.transpose(1, 2))
        features = self.post_extract_proj(features)
        return features, self.frame_padding_mask(padding_mask, features.size(1))

    def frame_padding_mask(self, padding_mask: Optional[torch.Tensor], num_frames: int):
        """Sample-level padding (B, S) -> frame-level (B, T): frames past each item's conv output."""
        if padding_mask is None or not padding_mask.any():
            return None
        lengths = conv_output_lengths((~padding_mask).long().sum(-1), self.framing.conv_layers)
        frames = torch.arange(num_frames, device=padding_mask.device)
        return frames[None, :] >= lengths[:, None]

    def time_masks(self, padding_mask, shape, sample_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool spans to mask, drawn from (seed, update, sample id) by fairseq's function."""
        masks = compute_mask_indices(
            shape,
            padding_mask,
            self.cfg.mask_prob,
            self.cfg.mask_length,
            min_masks=1,
            require_same_masks=self.cfg.require_same_masks,
            seed=self.cfg.seed,
            epoch=self.num_updates,
            indices=sample_ids.cpu(),
        )
        return torch.from_numpy(masks)

    def _seeded_numpy(self, sample_ids: Optional[torch.Tensor]):
        # TransformerEncoder draws layer drop from numpy's global generator (the teacher's too,
        # though it ignores the draw in eval mode), which fairseq seeds only at start-up: a state
        # seeded from (seed, update, sample ids), and restored afterwards, makes it resumable.
        ids = sample_ids.tolist() if sample_ids is not None else []
        return numpy_seed(self.cfg.seed, self.num_updates, *ids)

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        sample_ids: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        layer: Optional[int] = None,
        mask_indices: Optional[torch.Tensor] = None,
    ):
        """Losses for fairseq's criterion, or (features_only) the encoder's outputs.

        ``sample_ids`` (the batch's ``id``) seed the masks and layer drop; training needs them
        (criterion ``model_with_sample_ids``). ``mask_indices`` (B, T) bool replaces the drawn
        masks.
        """
        if self.training:
            self.require_sample_ids(sample_ids)
        features, frame_padding = self.local_features(source, padding_mask)
        # fairseq's index_put masks in place, and dropout(p=0) returns its input: the teacher's
        # copy must be taken before either
        teacher_input = features.detach().clone() if mask and not features_only else None
        x = self.dropout_input(features)
        if mask:
            if mask_indices is None:
                if sample_ids is None:
                    raise ValueError("masking needs sample_ids (to seed the masks) or mask_indices")
                mask_indices = self.time_masks(frame_padding, x.shape[:2], sample_ids)
            mask_indices = mask_indices.to(x.device)
            x = index_put(x, mask_indices, self.mask_emb.to(x.dtype))  # under autocast x is half

        with self._seeded_numpy(sample_ids):
            x, layer_results = self.encoder(x, padding_mask=frame_padding, layer=layer)
        if features_only:
            return {"x": x, "padding_mask": frame_padding, "layer_results": layer_results}
        if not mask:
            raise ValueError("the regression loss needs mask=True (or features_only=True)")

        with self._seeded_numpy(sample_ids):
            target = self.teacher_targets(source, padding_mask, teacher_input, frame_padding)
        prediction = self.final_proj(x[mask_indices])
        target = target[mask_indices]
        loss = regression_loss(prediction, target, self.cfg.loss_beta)
        scale = self.cfg.loss_scale if self.cfg.loss_scale is not None else 1 / math.sqrt(prediction.size(-1))

        result = {"losses": {"regression": loss.sum() * scale}, "sample_size": loss.numel()}
        result.update(self.teacher_logs(target, prediction))
        if self.training and self.num_updates >= self.cfg.min_var_after_updates:
            check_collapse("music2vec", self.num_updates, [
                ("target std", result["target_var"], "min_target_var", self.cfg.min_target_var),
                ("prediction std", result["pred_var"], "min_pred_var", self.cfg.min_pred_var),
            ])
        return result

    @torch.no_grad()
    def teacher_targets(self, source, padding_mask, teacher_input, frame_padding) -> torch.Tensor:
        """(B, T, D) fp32 targets from the teacher, after it has caught up with this update."""
        student = self._teacher_source()
        self.teacher.update(student, self.num_updates)
        teacher = self.teacher.model
        top_k = self.cfg.average_top_k_layers
        if self.cfg.ema_transformer_only:
            _, layer_results = teacher.extract_features(
                teacher_input,
                padding_mask=frame_padding,
                min_layer=self.cfg.encoder_layers - top_k,
            )
        else:
            layer_results = teacher.extract_features(source, padding_mask, mask=False)["layer_results"]
            layer_results = layer_results[-top_k:]
        return regression_targets(
            [ffn_out.transpose(0, 1) for _, _, ffn_out in layer_results],  # (T, B, C) -> (B, T, C)
            self.cfg.instance_norm_target_layer,
            self.cfg.layer_norm_target_layer,
            self.cfg.instance_norm_targets,
            self.cfg.layer_norm_targets,
        )

    def extract_features(self, source, padding_mask=None, mask=False, layer=None):
        """Encoder outputs without loss: {"x", "padding_mask", "layer_results"} (data2vec's keys)."""
        return self.forward(source, padding_mask, mask=mask, features_only=True, layer=layer)
