"""The waveform family (musicHuBERT, music2vec; JOOCI's Content) for inference, without fairseq:
fairseq's ``ConvFeatureExtractionModel`` and wav2vec 2.0 ``TransformerEncoder`` in eval mode
(no dropout, no layer drop), with fairseq's parameter names so a trained state dict loads as it
is. The feature interface itself is ``modules/conv_features.ConvTransformerFeatures``, the one the
fairseq models use.

Read against fairseq 0.12 ``fairseq/models/wav2vec/wav2vec2.py`` (``ConvFeatureExtractionModel``,
``make_conv_pos``, ``TransformerEncoder.extract_features``, ``TransformerSentenceEncoderLayer``)
and ``fairseq/modules/multihead_attention.py``. Left out, because no inference output depends on
them: dropout, layer drop, masking, fairseq's padding of the sequence to a multiple of
``required_seq_len_multiple`` (padded frames are masked out of attention either way). Refused at
build time: what fairseq can build but this does not compute (conformer layers, batch-normed
positional convs).
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.conv_features import ConvFraming, ConvTransformerFeatures


def gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


# fairseq.utils.get_activation_fn's names (fairseq's gelu computes in float32).
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x.float()).type_as(x),
    "gelu_accurate": gelu_accurate,
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


class TransposeLast(nn.Module):
    def forward(self, x):
        return x.transpose(-2, -1)


def conv_block(n_in: int, n_out: int, kernel: int, stride: int, norm: str, conv_bias: bool) -> nn.Sequential:
    """One layer of fairseq's ConvFeatureExtractionModel (index 1 held its dropout)."""
    conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=conv_bias)
    if norm == "layer_norm":
        return nn.Sequential(conv, nn.Identity(), nn.Sequential(TransposeLast(), nn.LayerNorm(n_out), TransposeLast()), nn.GELU())
    if norm == "group_norm":
        return nn.Sequential(conv, nn.Identity(), nn.GroupNorm(n_out, n_out), nn.GELU())
    return nn.Sequential(conv, nn.Identity(), nn.GELU())


class ConvFeatureExtractor(nn.Module):
    """(B, S) -> (B, C, T). ``mode`` "default": a group norm after the first conv only
    (wav2vec 2.0 / HuBERT base); "layer_norm": a layer norm after every conv (data2vec)."""

    def __init__(self, conv_layers, mode: str, conv_bias: bool):
        super().__init__()
        if mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode={mode!r}: 'default' or 'layer_norm'")
        blocks, n_in = [], 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            norm = "layer_norm" if mode == "layer_norm" else ("group_norm" if i == 0 else None)
            blocks.append(conv_block(n_in, dim, kernel, stride, norm, conv_bias))
            n_in = dim
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x


class SamePad(nn.Module):
    """Drops the last frame an even kernel adds (fairseq's SamePad)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : -self.remove] if self.remove else x


class ChannelLayerNorm(nn.Module):
    """fairseq's ``TransposeLast, LayerNorm(elementwise_affine=False), TransposeLast`` on (B, C, T)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.layer_norm(x.transpose(1, 2), (self.dim,)).transpose(1, 2)


def positional_convs(dim: int, conv_pos: int, groups: int, depth: int) -> nn.Sequential:
    """fairseq's ``pos_conv``: one weight-normed conv of ``conv_pos`` taps (depth 1), or
    ``depth`` convs of max(3, conv_pos // depth) taps with a layer norm each (data2vec)."""
    if depth > 1:
        kernel = max(3, conv_pos // depth)
        return nn.Sequential(*[
            nn.Sequential(
                nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups),
                SamePad(kernel),
                ChannelLayerNorm(dim),
                nn.GELU(),
            )
            for _ in range(depth)
        ])
    # torch's weight norm over all dims but the kernel's, as fairseq's (which saves weight_g and
    # weight_v: ``WaveformModel.trained_name``); transformers renames those on loading to these names.
    conv = nn.utils.parametrizations.weight_norm(
        nn.Conv1d(dim, dim, conv_pos, padding=conv_pos // 2, groups=groups), name="weight", dim=2
    )
    return nn.Sequential(conv, SamePad(conv_pos), nn.GELU())


class SelfAttention(nn.Module):
    """fairseq's MultiheadAttention (self-attention, no bias_k/v) on (T, B, C)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"encoder_embed_dim={dim} is not divisible by encoder_attention_heads={num_heads}")
        self.num_heads = num_heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        frames, batch, dim = x.shape
        head_dim = dim // self.num_heads

        def heads(t):
            return t.view(frames, batch, self.num_heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # True: attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(frames, batch, dim))


class EncoderLayer(nn.Module):
    """fairseq's TransformerSentenceEncoderLayer: post-LN, or pre-LN with ``layer_norm_first``."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, activation_fn: str, layer_norm_first: bool):
        super().__init__()
        if activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn={activation_fn!r}: one of {sorted(ACTIVATIONS)}")
        self.activation = ACTIVATIONS[activation_fn]
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(dim, num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, self_attn_padding_mask: Optional[torch.Tensor] = None):
        """(T, B, C) -> (T, B, C) and, as fairseq, (attention weights: None, the FFN's output)."""
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), self_attn_padding_mask)
            ffn = self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
            return x + ffn, (None, ffn)
        x = self.self_attn_layer_norm(x + self.self_attn(x, self_attn_padding_mask))
        ffn = self.fc2(self.activation(self.fc1(x)))
        return self.final_layer_norm(x + ffn), (None, ffn)


class TransformerEncoder(nn.Module):
    """fairseq's wav2vec 2.0 TransformerEncoder in eval mode: ``extract_features`` returns what
    fairseq's does (the last layer's output (B, T, C) and per layer (x, attention, FFN output),
    time first), so ``ConvTransformerFeatures.encoder_states`` reads both alike."""

    def __init__(self, cfg: Dict):
        super().__init__()
        dim = int(cfg["encoder_embed_dim"])
        self.layer_norm_first = bool(cfg.get("layer_norm_first", False))
        self.pos_conv = positional_convs(
            dim, int(cfg.get("conv_pos", 128)), int(cfg.get("conv_pos_groups", 16)), int(cfg.get("pos_conv_depth", 1) or 1)
        )
        self.layers = nn.ModuleList(
            EncoderLayer(dim, int(cfg["encoder_ffn_embed_dim"]), int(cfg["encoder_attention_heads"]),
                         cfg.get("activation_fn", "gelu"), self.layer_norm_first)
            for _ in range(int(cfg["encoder_layers"]))
        )
        self.layer_norm = nn.LayerNorm(dim)

    def extract_features(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        layer_results = []
        for layer in self.layers:
            x, (attention, ffn) = layer(x, self_attn_padding_mask=padding_mask)
            layer_results.append((x, attention, ffn))
        return x.transpose(0, 1), layer_results


UNSUPPORTED = {  # fairseq model fields this module does not compute, and the value it needs
    "layer_type": "transformer",
    "conv_pos_batch_norm": False,
}


def check_supported(model_cfg: Dict) -> None:
    for key, needed in UNSUPPORTED.items():
        if key in model_cfg and model_cfg[key] != needed:
            raise ValueError(f"model.{key}={model_cfg[key]!r}: the fairseq-free encoder computes only {key}={needed!r}")


class WaveformModel(ConvTransformerFeatures, nn.Module):
    """Conv feature extractor -> layer norm -> projection -> transformer encoder, from the model
    and task fields of a fairseq config (dicts): the parameters of fairseq's HubertModel /
    music2vec without their pre-training heads."""

    def __init__(self, model_cfg: Dict, task_cfg: Dict):
        super().__init__()
        check_supported(model_cfg)
        self.framing = ConvFraming.from_configs(model_cfg, task_cfg)
        extractor_dim = self.framing.conv_layers[-1][0]
        embed_dim = int(model_cfg["encoder_embed_dim"])
        self.feature_extractor = ConvFeatureExtractor(
            self.framing.conv_layers, model_cfg.get("extractor_mode", "default"), bool(model_cfg.get("conv_bias", False))
        )
        self.layer_norm = nn.LayerNorm(extractor_dim)
        self.post_extract_proj = nn.Linear(extractor_dim, embed_dim) if extractor_dim != embed_dim else None
        self.encoder = TransformerEncoder(model_cfg)

    @staticmethod
    def trained_name(name: str, state: Dict[str, torch.Tensor]) -> str:
        """The name of this module's parameter ``name`` in a trained model's state dict."""
        for ours, theirs in (("parametrizations.weight.original0", "weight_g"), ("parametrizations.weight.original1", "weight_v")):
            if name.endswith(ours):
                return name[: -len(ours)] + theirs
        return name

    def hidden_state_names(self) -> List[str]:
        return ["encoder input"] + [f"layer {i + 1}" for i in range(len(self.encoder.layers))]
