"""ViT pieces, timm-style: a pre-norm block that takes its attention module and norm layer as
parameters, global multi-head attention on ``F.scaled_dot_product_attention``, and a stack.

The attention modules of this package (this :class:`Attention` and
:class:`~audio_ssl_ext.modules.multi_window_attention.MultiWindowAttention`) share parameter names
(``qkv``, ``proj``), so a block's weights load into either.
"""

from functools import partial
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# MAE and timm's ViT use LayerNorm with eps 1e-6.
default_norm_layer = partial(nn.LayerNorm, eps=1e-6)


class Attention(nn.Module):
    """Standard (global) multi-head self-attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} attention heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        attention: nn.Module,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = default_norm_layer,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attention
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """Blocks then a final norm; optionally returns every block's output.

    ``make_attention(layer_index)`` builds each block's attention, so a stack can mix global and
    multi-window attention or give every layer the same kind.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        make_attention: Callable[[int], nn.Module],
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = default_norm_layer,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, make_attention(i), mlp_ratio, norm_layer) for i in range(depth)
        )
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor, layer_results: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """Returns norm(last block output); appends each block's raw output to ``layer_results``."""
        for block in self.blocks:
            x = block(x)
            if layer_results is not None:
                layer_results.append(x)
        return self.norm(x)


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
