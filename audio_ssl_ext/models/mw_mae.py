"""MW-MAE and its MAE baseline on log-mel patches (recipe, options and the paper:
examples/mwmae/README.md).

One model, two names: ``mw_mae`` (the decoder's heads attend within windows, modules/
multi_window_attention.py) and ``audio_mae`` (every head global, i.e. MAE; ``mae`` is taken by
fairseq's bundled data2vec examples). The loss, for fairseq's ``model`` criterion, is the sum over
masked patches of the per-patch mean squared error with ``sample_size`` the number of those
patches, so fairseq logs the mean per-patch MSE.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.models import BaseFairseqModel, register_model
from torch import nn

from audio_ssl_ext.modules.masking import PatchMask, per_sample_masks, random_masking
from audio_ssl_ext.modules.multi_window_attention import MultiWindowAttention, resolve_window_sizes
from audio_ssl_ext.modules.patches import PatchEmbedding, sincos_1d
from audio_ssl_ext.modules.spectrogram_config import PatchEncoderConfig
from audio_ssl_ext.modules.spectrogram_frontend import LogMelPatches, PatchEncoderFeatures
from audio_ssl_ext.modules.vit import Attention, TransformerStack, init_vit_weights

logger = logging.getLogger(__name__)


@dataclass
class AudioMaeConfig(PatchEncoderConfig):
    # Input and encoder: PatchEncoderConfig's defaults, the paper's (2 s = 200 frames x 80 bands,
    # 4 x 16 patches; ViT-B).
    decoder_embed_dim: int = 384
    decoder_layers: int = 4
    decoder_attention_heads: int = 8
    mask_ratio: float = field(default=0.8, metadata={"help": "fraction of patches masked"})
    norm_pix_loss: bool = field(
        default=False, metadata={"help": "normalise each target patch to zero mean, unit variance (off in the paper)"}
    )
    use_cls_token: bool = field(
        default=False,
        metadata={"help": "a CLS token before the patches in encoder and decoder (the official MAE "
                  "baseline's; MW-MAE has none); features never include it"},
    )
    trainable_pos_embed: bool = field(
        default=False,
        metadata={"help": "encoder and decoder positions are parameters initialized as sine-cosine "
                  "(the official code's) instead of fixed"},
    )


@dataclass
class MwMaeConfig(AudioMaeConfig):
    decoder_attention_heads: Optional[int] = field(
        default=None,
        metadata={"help": "must equal the length of decoder_window_sizes (unset: taken from it)"},
    )
    decoder_window_sizes: Optional[List[int]] = field(
        default=None,
        metadata={
            "help": "window of each decoder head in patches (0 = global); each must divide the patch "
            "count. Unset: the paper's rule, all non-unary factors of the patch count + two global heads"
        },
    )
    encoder_window_sizes: Optional[List[int]] = field(
        default=None,
        metadata={
            "help": "window of each encoder head (0 = global), one per encoder head; each must divide "
            "the visible and the total patch counts. Unset: a global encoder (the paper's default)"
        },
    )


@register_model("audio_mae", dataclass=AudioMaeConfig)
class AudioMaeModel(PatchEncoderFeatures, BaseFairseqModel):
    def __init__(
        self,
        cfg: AudioMaeConfig,
        decoder_window_sizes: Optional[List[int]] = None,
        encoder_window_sizes: Optional[List[int]] = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMelPatches.from_config(cfg)
        num_patches = self.frontend.num_patches
        enc_dim, dec_dim = cfg.encoder_embed_dim, cfg.decoder_embed_dim

        self.patch_embed = PatchEmbedding(
            self.frontend.patch_dim, enc_dim, self.frontend.grid, trainable_positions=cfg.trainable_pos_embed
        )
        self.encoder = TransformerStack(
            enc_dim, cfg.encoder_layers,
            _attention_factory(enc_dim, cfg.encoder_attention_heads, encoder_window_sizes),
            cfg.mlp_ratio,
        )
        self.decoder_embed = nn.Linear(enc_dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        # The CLS token's positions are zero rows, as the official get_*_sincos_pos_embed(cls_token=True).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, enc_dim)) if cfg.use_cls_token else None
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, enc_dim)) if cfg.use_cls_token and cfg.trainable_pos_embed else None
        decoder_positions = sincos_1d(dec_dim, torch.arange(num_patches))
        if cfg.use_cls_token:
            decoder_positions = torch.cat([torch.zeros(1, dec_dim), decoder_positions])
        if cfg.trainable_pos_embed:
            self.decoder_pos_embed = nn.Parameter(decoder_positions)
        else:
            self.register_buffer("decoder_pos_embed", decoder_positions, persistent=False)
        self.decoder = TransformerStack(
            dec_dim, cfg.decoder_layers,
            _attention_factory(dec_dim, cfg.decoder_attention_heads, decoder_window_sizes),
            cfg.mlp_ratio,
        )
        self.decoder_pred = nn.Linear(dec_dim, self.frontend.patch_dim)

        self.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @classmethod
    def build_model(cls, cfg: AudioMaeConfig, task=None):
        return cls(cfg)

    # ------------------------------------------------------------------ pretraining
    def draw_masks(self, sample_ids: torch.Tensor) -> PatchMask:
        return per_sample_masks(
            random_masking,
            sample_ids.tolist(),
            self.mask_entropy(),
            num_patches=self.frontend.num_patches,
            mask_ratio=self.cfg.mask_ratio,
        )

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        sample_ids: Optional[torch.Tensor] = None,
        crop_start: Optional[torch.Tensor] = None,
    ) -> Dict:
        """The loss for fairseq's ``model`` criterion on the crops from frame ``crop_start`` of
        each example (see ``LogMelPatches.forward``; the crop task passes it)."""
        inputs = self.frontend(source, padding_mask, crop_start)
        mask = self.draw_masks(self.require_sample_ids(sample_ids))
        kept, masked = mask.kept.to(source.device), mask.masked.to(source.device)

        tokens = self.patch_embed(inputs.patches)
        latent = self.encoder(self.with_cls(_gather_tokens(tokens, kept)))
        pred = self.decode(latent, kept)

        target = _gather_tokens(inputs.patches, masked)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        error = (_gather_tokens(pred, masked) - target).square().mean(dim=-1)
        # Patches reaching into a short file's padding are not scored.
        weight = torch.gather(inputs.patch_valid, 1, masked).to(error.dtype)
        return {
            "losses": {"mse": (error * weight).sum()},
            "sample_size": weight.sum().long().item(),
        }

    def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, K, D) -> [CLS + its position, tokens] when the model has a CLS token."""
        if self.cls_token is None:
            return tokens
        cls = self.cls_token if self.cls_pos_embed is None else self.cls_token + self.cls_pos_embed
        return torch.cat([cls.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def decode(self, latent: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Encoder output of the visible patches (after the CLS token, if any) -> predicted
        patches, all N of them."""
        x = self.decoder_embed(latent)
        skip = 0 if self.cls_token is None else 1
        batch, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(batch, self.frontend.num_patches, dim)
        full = full.scatter(1, kept[:, :, None].expand(-1, -1, dim), x[:, skip:])
        if skip:
            full = torch.cat([x[:, :1], full], dim=1)
        pred = self.decoder_pred(self.decoder(full + self.decoder_pos_embed.to(x.dtype)))
        return pred[:, skip:]

    def encode_patches(self, patches: torch.Tensor, layer_results: List[torch.Tensor]) -> torch.Tensor:
        """Patch tokens only, in ``layer_results`` and the output: the CLS token is dropped."""
        first = len(layer_results)
        out = self.encoder(self.with_cls(self.patch_embed(patches)), layer_results)
        if self.cls_token is None:
            return out
        layer_results[first:] = [h[:, 1:] for h in layer_results[first:]]
        return out[:, 1:]


@register_model("mw_mae", dataclass=MwMaeConfig)
class MwMaeModel(AudioMaeModel):
    @classmethod
    def build_model(cls, cfg: MwMaeConfig, task=None):
        if cfg.use_cls_token:
            raise ValueError(
                "model.use_cls_token=true with mw_mae: MW-MHA windows tile the patch sequence, which a "
                "CLS token would lengthen by one (the official MW-MAE has none; audio_mae has the option)"
            )
        num_patches = (cfg.input_frames // cfg.patch_time) * (cfg.n_mels // cfg.patch_freq)
        decoder_windows = resolve_window_sizes(
            cfg.decoder_window_sizes, [num_patches], cfg.decoder_attention_heads, "model.decoder_window_sizes"
        )
        encoder_windows = None
        if cfg.encoder_window_sizes is not None:
            visible = num_patches - int(round(num_patches * cfg.mask_ratio))
            encoder_windows = resolve_window_sizes(
                cfg.encoder_window_sizes, [visible, num_patches], cfg.encoder_attention_heads,
                "model.encoder_window_sizes",
            )
        logger.info(f"MW-MHA windows: decoder {decoder_windows}, encoder {encoder_windows or 'global'}")
        return cls(cfg, decoder_windows, encoder_windows)


def _attention_factory(dim: int, num_heads: Optional[int], window_sizes: Optional[List[int]]):
    if window_sizes is None:
        return lambda layer: Attention(dim, num_heads)
    return lambda layer: MultiWindowAttention(dim, window_sizes)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))
