"""The spectrogram family (MW-MAE, its MAE baseline, Audio-JEPA) for inference: log-mel patches
(``modules/spectrogram_frontend.LogMelPatches``) -> patch embedding with fixed 2-D positions
(``modules/patches.py``) -> the ViT encoder (``modules/vit.py``, multi-window attention where the
encoder was trained with it). The feature interface is the training models' own
(``PatchEncoderFeatures``); what a learner adds for pre-training (decoder, predictor, EMA target
encoder) is left out.

Weights use MW-MAE's names (``patch_embed.*``, ``encoder.*``); Audio-JEPA's context encoder holds
the same modules one level down (``encoder.patch_embed``, ``encoder.transformer``), which
``trained_name`` maps.
"""

from types import SimpleNamespace
from typing import Dict, List, Optional

import torch
from torch import nn

from ..modules.multi_window_attention import MultiWindowAttention
from ..modules.patches import PatchEmbedding
from ..modules.spectrogram_frontend import LogMelPatches, PatchEncoderFeatures
from ..modules.vit import Attention, TransformerStack


class SpectrogramModel(PatchEncoderFeatures, nn.Module):
    def __init__(self, model_cfg: Dict, task_cfg: Dict):
        super().__init__()
        cfg = SimpleNamespace(**model_cfg)
        self.frontend = LogMelPatches.from_config(cfg)
        dim, heads = int(cfg.encoder_embed_dim), int(cfg.encoder_attention_heads)
        windows: Optional[List[int]] = model_cfg.get("encoder_attention_windows")
        trainable_positions = bool(model_cfg.get("trainable_pos_embed", False))
        self.patch_embed = PatchEmbedding(self.frontend.patch_dim, dim, self.frontend.grid, trainable_positions=trainable_positions)
        self.encoder = TransformerStack(
            dim, int(cfg.encoder_layers),
            (lambda _: MultiWindowAttention(dim, windows)) if windows else (lambda _: Attention(dim, heads)),
            float(cfg.mlp_ratio),
        )
        # The MAE baseline's optional CLS token (models/mw_mae.py): it takes part in attention but
        # is never a feature.
        with_cls = bool(model_cfg.get("use_cls_token", False))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls else None
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls and trainable_positions else None

    def encode_patches(self, patches: torch.Tensor, layer_results: List[torch.Tensor]) -> torch.Tensor:
        tokens = self.patch_embed(patches)
        if self.cls_token is None:
            return self.encoder(tokens, layer_results)
        cls = self.cls_token if self.cls_pos_embed is None else self.cls_token + self.cls_pos_embed
        first = len(layer_results)
        out = self.encoder(torch.cat([cls.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1), layer_results)
        layer_results[first:] = [h[:, 1:] for h in layer_results[first:]]
        return out[:, 1:]

    def hidden_state_names(self) -> List[str]:
        names = [f"block {i + 1}" for i in range(len(self.encoder.blocks))]
        names[-1] += " (through the final norm)"
        return names

    @staticmethod
    def trained_name(name: str, state: Dict[str, torch.Tensor]) -> str:
        """The name of this module's parameter ``name`` in a trained model's state dict."""
        if name in state:
            return name
        if name.startswith("patch_embed."):
            return "encoder." + name
        if name.startswith("encoder."):
            return "encoder.transformer." + name[len("encoder."):]
        return name
