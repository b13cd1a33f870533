"""Audio-JEPA: a context encoder and a predictor regress an EMA target encoder's embeddings of
masked log-mel patches (recipe, options and the paper: examples/audiojepa/README.md).

The paper's comparisons are options of this one model: ``masking`` (the generators are in
modules/masking.py), ``target_domain`` and the crop (``input_frames``). The loss, for fairseq's
``model`` criterion, is the sum over target patches of the per-patch (smooth) L1 against
layer-normalised targets, ``sample_size`` the number of those patches.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import II

from audio_ssl_ext.modules.ema import EMATeacher, TeacherCheckpointMixin
from audio_ssl_ext.modules.masking import (
    ContextTargetMask,
    context_target_from_patch_mask,
    multi_block_masking,
    per_sample_masks,
    random_masking,
    seeded_generator,
    time_masking,
)
from audio_ssl_ext.modules.patches import PatchEmbedding, sincos_2d
from audio_ssl_ext.modules.spectrogram_config import PatchEncoderConfig
from audio_ssl_ext.modules.spectrogram_frontend import LogMelPatches, PatchEncoderFeatures
from audio_ssl_ext.modules.vit import Attention, TransformerStack, init_vit_weights

MASKING_CHOICES = ChoiceEnum(["unstructured", "multi_block", "time"])
TARGET_DOMAIN_CHOICES = ChoiceEnum(["audio", "latent", "latent_masked"])


@dataclass
class AudioJepaConfig(PatchEncoderConfig):
    """Defaults are the paper's recipe (reference code): ViT-B context encoder, 512-wide 8-block
    predictor, unstructured masking of 60 % of the patches, audio-domain targets; the input's
    normalization and FFT defaults are those of older checkpoints (LogMelPatchesConfig), the
    recipes set the reference's."""

    # input: normalized log-mel patches (the paper: 80 mels, 25 ms / 10 ms at 16 kHz, 16 x 16);
    # the other input fields and their defaults come from LogMelPatchesConfig
    input_frames: int = field(
        default=208,
        metadata={"help": "frames per model input, a whole number of patches: 208 (2.08 s), 320 "
                  "(3.2 s) or 640 (6.4 s) in the paper; task.crop_seconds must cover them"},
    )
    patch_time: int = field(default=16, metadata={"help": "frames per patch"})

    # context encoder: PatchEncoderConfig's (ViT-B); the target encoder is its EMA copy

    # predictor
    predictor_embed_dim: int = 512
    predictor_layers: int = 8
    predictor_attention_heads: int = 16

    # masking
    masking: MASKING_CHOICES = field(
        default="unstructured", metadata={"help": "unstructured | multi_block | time"}
    )
    mask_ratio: float = field(
        default=0.6,
        metadata={"help": "unstructured: fraction of patches that are targets; time: fraction of "
                  "time steps (the rest is context)"},
    )
    time_mask_span: int = field(
        default=1, metadata={"help": "time masking: time patches per masked span"}
    )
    num_target_blocks: int = field(default=4, metadata={"help": "multi_block: target blocks"})
    target_block_scale: List[float] = field(
        default_factory=lambda: [0.15, 0.2],
        metadata={"help": "multi_block: range of a target block's share of the patches"},
    )
    target_block_aspect_ratio: List[float] = field(
        default_factory=lambda: [0.75, 1.5],
        metadata={"help": "multi_block: range of a target block's time / frequency extent"},
    )
    context_block_scale: List[float] = field(
        default_factory=lambda: [0.85, 1.0],
        metadata={"help": "multi_block: range of the context block's share of the patches"},
    )
    min_context_patches: int = field(
        default=10,
        metadata={"help": "multi_block: a sample whose context keeps this many patches or fewer "
                  "is redrawn (I-JEPA's min_keep)"},
    )
    target_domain: TARGET_DOMAIN_CHOICES = field(
        default="audio",
        metadata={"help": "audio: the target encoder sees only the target patches; latent: it sees "
                  "all patches and every position is predicted and scored (the reference's "
                  "mask_targets=False); latent_masked: it sees all patches, only the targets are "
                  "predicted and scored (I-JEPA's)"},
    )

    # loss
    smooth_l1_beta: float = field(
        default=1.0, metadata={"help": "smooth L1 beta (the reference: 1.0); 0 gives plain L1"}
    )
    layer_norm_targets: bool = field(
        default=True, metadata={"help": "layer-normalise each target token, without affine"}
    )

    # target encoder: EMA of the context encoder, decay rising linearly over training
    ema_decay: float = field(default=0.99995, metadata={"help": "decay at update 0"})
    ema_end_decay: float = field(default=0.99999, metadata={"help": "decay at ema_anneal_end_step"})
    ema_anneal_end_step: int = II("optimization.max_update")


class PatchEncoder(nn.Module):
    """Patch embedding with fixed 2-D sine-cosine positions, then a ViT over a subset of tokens.

    ``keep`` selects the tokens: (B, M) indices, or (B, G, K) for G groups each encoded on its
    own (the target encoder on multi-block targets in the audio domain); None: all patches.
    """

    def __init__(self, grid, patch_dim: int, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.patch_embed = PatchEmbedding(patch_dim, dim, grid)
        self.transformer = TransformerStack(dim, depth, lambda _: Attention(dim, num_heads), mlp_ratio)

    def forward(
        self,
        patches: torch.Tensor,
        keep: Optional[torch.Tensor] = None,
        layer_results: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        tokens = self.patch_embed(patches)
        if keep is None:
            return self.transformer(tokens, layer_results)
        groups = keep.shape[1:-1]
        flat = keep.reshape(keep.shape[0], -1)
        tokens = tokens.gather(1, flat[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = tokens.reshape(-1, keep.shape[-1], tokens.shape[-1])  # groups folded into the batch
        out = self.transformer(tokens, layer_results)
        return out.reshape(keep.shape[0], *groups, keep.shape[-1], out.shape[-1])


class JepaPredictor(nn.Module):
    """Context tokens plus one mask token per target position -> predicted target embeddings.

    Each target group gets its own pass (the context repeated), as I-JEPA predicts each target
    block on its own; mask tokens of one group attend to each other and to the context only.
    """

    def __init__(self, grid, encoder_dim: int, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("pos_embed", sincos_2d(dim, tuple(grid)), persistent=False)
        self.transformer = TransformerStack(dim, depth, lambda _: Attention(dim, num_heads), mlp_ratio)
        self.head = nn.Linear(dim, encoder_dim)

    def forward(
        self, context_tokens: torch.Tensor, context: torch.Tensor, targets: torch.Tensor, predict_context: bool = False
    ) -> torch.Tensor:
        """(B, Nc, encoder_dim) tokens at (B, Nc) positions, (B, G, K) target positions
        -> (B, G, K, encoder_dim), or with ``predict_context`` (one group) (B, 1, Nc + K,
        encoder_dim): the predictions at the context positions, then at the targets (the
        reference's predictor, which outputs every position of its sequence)."""
        batch, groups, count = targets.shape
        x = self.embed(context_tokens) + self.pos_embed[context]
        x = x.repeat_interleave(groups, dim=0)
        queries = self.mask_token + self.pos_embed[targets.reshape(batch * groups, count)]
        x = self.transformer(torch.cat([x, queries.to(x.dtype)], dim=1))
        if predict_context:
            return self.head(x)[:, None]
        return self.head(x[:, -count:]).reshape(batch, groups, count, -1)


def complement(context: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, Nc) patch indices -> (B, N - Nc): the other patches of each example, ascending."""
    is_context = torch.zeros(context.shape[0], num_patches, dtype=torch.bool, device=context.device)
    is_context.scatter_(1, context, True)
    return (~is_context).nonzero()[:, 1].reshape(context.shape[0], num_patches - context.shape[1])


def jepa_loss(prediction: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token loss, the mean over channels: smooth L1 with ``beta`` (L1 for beta=0)."""
    return F.smooth_l1_loss(prediction.float(), target.float(), reduction="none", beta=beta).mean(dim=-1)


@register_model("audio_jepa", dataclass=AudioJepaConfig)
class AudioJepaModel(TeacherCheckpointMixin, PatchEncoderFeatures, BaseFairseqModel):
    teacher_description = "the EMA target encoder"

    def __init__(self, cfg: AudioJepaConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMelPatches.from_config(cfg)
        self.grid = self.frontend.grid
        self.encoder = PatchEncoder(
            self.grid, self.frontend.patch_dim, cfg.encoder_embed_dim, cfg.encoder_layers,
            cfg.encoder_attention_heads, cfg.mlp_ratio,
        )
        self.predictor = JepaPredictor(
            self.grid, cfg.encoder_embed_dim, cfg.predictor_embed_dim, cfg.predictor_layers,
            cfg.predictor_attention_heads, cfg.mlp_ratio,
        )
        self.apply(init_vit_weights)
        nn.init.normal_(self.predictor.mask_token, std=0.02)
        self.check_masking()
        self.teacher: Optional[EMATeacher] = None  # not in the copy the teacher is made from
        self.teacher = EMATeacher(self.encoder, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step)

    @classmethod
    def build_model(cls, cfg: AudioJepaConfig, task=None):
        return cls(cfg)

    def check_masking(self) -> None:
        """Draw masks once now, so a masking config that cannot work fails at start-up, by name."""
        try:
            self.draw_masks(torch.arange(2))
        except ValueError as error:
            raise ValueError(
                f"model.masking={self.cfg.masking} on the {self.grid[0]} x {self.grid[1]} patch grid "
                f"(time x frequency): {error}"
            ) from None

    def remove_pretraining_modules(self, last_layer=None):
        """Keep what feature extraction uses: the frontend and the context encoder (the paper's,
        and the reference's, downstream encoder)."""
        self.teacher = None
        self.predictor = None

    # --- masks ---

    def draw_masks(self, sample_ids: torch.Tensor) -> ContextTargetMask:
        """Context (B, Nc) and target (B, G, K) patch indices of these samples."""
        cfg = self.cfg
        entropy = self.mask_entropy()
        ids = [int(i) for i in sample_ids.tolist()]
        if cfg.masking == "unstructured":
            mask = per_sample_masks(
                random_masking, ids, entropy, num_patches=self.frontend.num_patches, mask_ratio=cfg.mask_ratio
            )
            return context_target_from_patch_mask(mask)
        if cfg.masking == "time":
            mask = per_sample_masks(
                time_masking, ids, entropy, grid=self.grid, mask_ratio=cfg.mask_ratio, span=cfg.time_mask_span
            )
            return context_target_from_patch_mask(mask)
        # The block shapes and the context count are shared by a batch (I-JEPA), so its masks
        # come from one generator seeded by all of its ids.
        return multi_block_masking(
            len(ids),
            self.grid,
            seeded_generator(*entropy, *ids),
            num_targets=cfg.num_target_blocks,
            target_scale=tuple(cfg.target_block_scale),
            target_aspect_ratio=tuple(cfg.target_block_aspect_ratio),
            context_scale=tuple(cfg.context_block_scale),
            min_context=cfg.min_context_patches,
        )

    # --- pretraining ---

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        sample_ids: Optional[torch.Tensor] = None,
        masks: Optional[ContextTargetMask] = None,
        crop_start: Optional[torch.Tensor] = None,
    ) -> Dict:
        """The JEPA loss for fairseq's ``model`` criterion: the sum over scored patches of the
        per-patch (smooth) L1, ``sample_size`` the number of those patches, so fairseq logs the
        mean per-patch loss. The criterion ``model_with_sample_ids`` passes ``sample_ids``; ``masks``
        replaces the drawn ones; ``crop_start`` (the crop task's) is where each crop starts in
        frames (``LogMelPatches.forward``)."""
        if masks is None:
            masks = self.draw_masks(self.require_sample_ids(sample_ids))
        context, targets = masks.context.to(source.device), masks.targets.to(source.device)
        every_position = self.cfg.target_domain == "latent"
        if every_position:
            # The reference's mask_targets=False: the target "mask" is every patch, so the
            # predictor's mask tokens fill every non-context position, one pass, and all its
            # outputs are scored, context positions included.
            targets = complement(context, self.frontend.num_patches)[:, None]

        inputs = self.frontend(source, padding_mask, crop_start)
        context_tokens = self.encoder(inputs.patches, keep=context)
        prediction = self.predictor(context_tokens, context, targets, predict_context=every_position)
        scored = torch.cat([context[:, None], targets], dim=2) if every_position else targets
        target = self.target_embeddings(inputs.patches, scored, whole_input=self.cfg.target_domain != "audio")
        loss = jepa_loss(prediction, target, self.cfg.smooth_l1_beta)
        # Patches reaching into a short file's padding are not scored.
        batch = scored.shape[0]
        weight = inputs.patch_valid.gather(1, scored.reshape(batch, -1)).reshape(scored.shape)
        weight = weight.to(loss.dtype)

        result = {"losses": {"jepa": (loss * weight).sum()}, "sample_size": int(weight.sum().item())}
        result.update(self.teacher_logs(target, prediction))
        return result

    @torch.no_grad()
    def target_embeddings(self, patches: torch.Tensor, positions: torch.Tensor, whole_input: bool) -> torch.Tensor:
        """(B, G, K, D) fp32 target-encoder outputs at ``positions``, once it has caught up with
        this update. Audio domain: it encodes each group's patches alone; ``whole_input`` (latent
        domains): it encodes all patches and the targets are picked from its output."""
        self.teacher.update(self.encoder, self.num_updates)
        teacher = self.teacher.model
        if not whole_input:
            embeddings = teacher(patches, keep=positions)
        else:
            everything = teacher(patches)
            batch, groups, count = positions.shape
            index = positions.reshape(batch, groups * count, 1).expand(-1, -1, everything.shape[-1])
            embeddings = everything.gather(1, index).reshape(batch, groups, count, -1)
        embeddings = embeddings.float()
        if self.cfg.layer_norm_targets:
            embeddings = F.layer_norm(embeddings, embeddings.shape[-1:])
        return embeddings

    # --- features ---

    def encode_patches(self, patches: torch.Tensor, layer_results: List[torch.Tensor]) -> torch.Tensor:
        return self.encoder(patches, layer_results=layer_results)  # the context encoder, as the reference
