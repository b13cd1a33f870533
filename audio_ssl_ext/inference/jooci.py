"""JOOCI for inference, without fairseq: the Content encoder (the waveform model) and the Other
encoder (ECAPA-TDNN, ``modules/ecapa.py``) over the same front end, joined by split-and-append.
What the downstream sees is ``models/jooci.py``'s (the recipe: examples/jooci/README.md): the
feature sets ``both``, ``content``, ``other`` and the Other encoder's utterance embedding.
"""

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..modules.ecapa import EcapaTdnn
from .waveform import WaveformModel

FEATURE_SETS = ("both", "content", "other")


def content_groups(states: Sequence[torch.Tensor], num_groups: int) -> List[torch.Tensor]:
    """Split-and-append: the Content layers (states 1..L) in ``num_groups`` contiguous groups, one
    per Other block, each group's mean (B, T, D)."""
    layers = list(states[1:])
    size = len(layers) // num_groups
    return [torch.stack(layers[g : g + size]).mean(0) for g in range(0, len(layers), size)]


def joint_states(content: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``both``: each Content state with the Other state at its depth, concatenated (the encoder
    input with the stem, each Content layer with the block its group feeds)."""
    per_group = (len(content) - 1) // (len(other) - 1)
    return [torch.cat([s, other[0 if i == 0 else 1 + (i - 1) // per_group]], dim=-1) for i, s in enumerate(content)]


class JoociFeatures:
    """What a JOOCI model gives downstream, for the trained model (``models/jooci.py``) and this
    one alike: each defines ``_inputs`` (front features, frame padding, Content states, appended
    groups), ``other.encoder`` and ``feature_set``."""

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        front, frame_padding, states, groups = self._inputs(source, lengths)
        if self.feature_set == "content":
            return states
        other, _ = self.other.encoder(front, (~frame_padding).sum(-1), groups)
        return other if self.feature_set == "other" else joint_states(states, other)

    def utterance_embedding(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The Other encoder's pooled embedding (B, other_embed_dim), the speaker-like summary."""
        front, frame_padding, _, groups = self._inputs(source, lengths)
        return self.other.encoder(front, (~frame_padding).sum(-1), groups)[1]


class JoociModel(JoociFeatures, WaveformModel):
    def __init__(self, model_cfg: Dict, task_cfg: Dict, features: Optional[str] = None):
        super().__init__(model_cfg, task_cfg)
        dilations = tuple(int(d) for d in model_cfg["other_dilations"])
        self.num_groups = len(dilations)
        self.split_and_append = bool(model_cfg.get("split_and_append", True))
        append = int(model_cfg["encoder_embed_dim"]) if self.split_and_append else 0
        self.other = nn.Module()  # the trained model's ``other`` without its DINO head
        self.other.encoder = EcapaTdnn(
            self.framing.conv_layers[-1][0], int(model_cfg["other_channels"]), dilations,
            int(model_cfg["other_kernel_size"]), int(model_cfg["other_res2net_scale"]),
            int(model_cfg["other_se_channels"]), (append,) * len(dilations), int(model_cfg["other_mfa_channels"]),
            int(model_cfg["other_attention_channels"]), int(model_cfg["other_embed_dim"]),
        )
        self.default_features = "both"
        self.feature_set = "both"
        self.select_features(features)
        self.default_features = self.feature_set

    def select_features(self, features: Optional[str]) -> None:
        """``both``, ``content`` or ``other``; None: the export's choice (``both`` unless told)."""
        features = features or self.default_features
        if features not in FEATURE_SETS:
            raise ValueError(f"jooci features={features!r}: one of {FEATURE_SETS}")
        self.feature_set = features

    def hidden_state_names(self) -> List[str]:
        content = super().hidden_state_names()
        other = ["other stem"] + [f"other block {i + 1}" for i in range(self.num_groups)]
        if self.feature_set == "content":
            return content
        if self.feature_set == "other":
            return other
        per_group = (len(content) - 1) // self.num_groups
        return [f"{c} + {other[0 if i == 0 else 1 + (i - 1) // per_group]}" for i, c in enumerate(content)]

    def _inputs(self, source: torch.Tensor, lengths: torch.Tensor):
        front, frame_padding = self.front_features(source, lengths)
        states = self.encoder_states(front, frame_padding)
        groups = content_groups(states, self.num_groups) if self.split_and_append else None
        return front, frame_padding, states, groups

