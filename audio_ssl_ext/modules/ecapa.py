"""ECAPA-TDNN over frame features, length-aware, with extra channels appended to each block's input.

ECAPA-TDNN (Desplanques et al. 2020): a kernel-5 stem, SE-Res2Net blocks at growing dilations,
multi-layer feature aggregation and attentive statistics pooling. Read against speechbrain's
``ECAPA_TDNN`` as 3D-Speaker carries it (``speakerlab/models/rdino/ECAPA_TDNN.py``). Deliberate
differences, one line each:

- input is (B, T, D) frame features with lengths, not log-mel; no log / instance norm in front;
- convolutions pad with zeros, not reflection, and every tensor a kernel > 1 reads is zeroed past
  each item's frames: a padded item's real frames then equal the item's alone (eval mode);
- BatchNorm statistics skip padded frames and are summed over data-parallel ranks when
  torch.distributed is up (:class:`MaskedBatchNorm1d`); speechbrain counts padding and is per rank;
- JOOCI's split-and-append: block i reads the previous output concatenated with ``appended[i]``;
- the aggregation is conv 1x1 + ReLU, as in the paper (speechbrain adds a BatchNorm);
- the Res2Net split checks divisibility with a clear error instead of an assert.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks, differentiable (the identity when not distributed).

    The backward all-reduces the gradient too, so after DDP averages the ranks' gradients each
    parameter gets the gradient of the statistic of the global batch (as SyncBatchNorm, and
    RDINO's FullGatherLayer for its gather). Our own Function: torch.distributed.nn's is deprecated.
    """
    return _SumOverRanks.apply(tensor) if is_distributed() else tensor


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) frame counts -> (B, 1, T) float mask, 1 on real frames."""
    return (torch.arange(max_len, device=lengths.device) < lengths[:, None]).float()[:, None, :]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, T) or (B, C) whose training statistics count only the frames where
    ``mask`` (B, 1, T) is 1, summed over ranks when distributed (a masked SyncBatchNorm).

    Same parameters, buffers and eval behaviour as ``nn.BatchNorm1d``; without a mask and on one
    process it computes what ``nn.BatchNorm1d`` does. Statistics in fp32 whatever the input dtype.
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not (self.training and self.track_running_stats) and self.running_mean is not None:
            return super().forward(x)
        flat = x.dim() == 2
        h = x.float()[:, :, None] if flat else x.float()
        m = torch.ones_like(h[:, :1]) if mask is None else mask.to(h.dtype)
        count = global_sum(m.sum().reshape(1))
        mean = global_sum((h * m).sum(dim=(0, 2))) / count
        var = global_sum(((h - mean[:, None]) ** 2 * m).sum(dim=(0, 2))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                # .to(): under fairseq's common.bf16 the buffers are bf16 (the whole model is cast)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = (h - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        if self.affine:
            y = y * self.weight[:, None] + self.bias[:, None]
        return (y[:, :, 0] if flat else y).to(x.dtype)


class ConvReluBn(nn.Module):
    """speechbrain's TDNNBlock: Conv1d ('same' zero padding) -> ReLU -> BatchNorm (masked)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the frame count, got {kernel_size}")
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2
        )
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x)), mask)


def _ones_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ones_like(x[:, :1]) if mask is None else mask.to(x.dtype)


class SERes2NetBlock(nn.Module):
    """1x1 ConvReluBn -> Res2Net 1-D conv -> 1x1 ConvReluBn -> squeeze-excitation -> + residual.

    The Res2Net part splits the channels into ``scale`` groups: the first passes through, the
    second is convolved, each later one is convolved after adding the previous group's output
    (growing receptive fields). The squeeze averages over real frames only. Output is zero past
    each item's frames.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        scale: int = 8,
        se_channels: int = 128,
    ):
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels={channels} is not divisible by the Res2Net scale={scale}")
        self.scale = scale
        self.tdnn1 = ConvReluBn(in_channels, channels)
        width = channels // scale
        self.res2net = nn.ModuleList(ConvReluBn(width, width, kernel_size, dilation) for _ in range(scale - 1))
        self.tdnn2 = ConvReluBn(channels, channels)
        self.se_reduce = nn.Conv1d(channels, se_channels, 1)
        self.se_expand = nn.Conv1d(se_channels, channels, 1)
        self.shortcut = nn.Conv1d(in_channels, channels, 1) if in_channels != channels else None

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = _ones_mask(x, mask)
        residual = x if self.shortcut is None else self.shortcut(x)
        h = self.tdnn1(x, mask) * mask  # zeroed: the Res2Net convs read across frames
        groups, previous = [], None
        for i, chunk in enumerate(h.chunk(self.scale, dim=1)):
            if i > 0:
                chunk = self.res2net[i - 1](chunk if previous is None else chunk + previous, mask) * mask
                previous = chunk
            groups.append(chunk)
        h = self.tdnn2(torch.cat(groups, dim=1), mask)
        squeeze = (h * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)
        excite = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(squeeze))))
        return (h * excite + residual) * mask


class AttentiveStatsPool(nn.Module):
    """ECAPA's attentive statistics pooling: a per-channel softmax over real frames weights the mean
    and std; with ``global_context`` the attention also sees the utterance's mean and std (over real
    frames). (B, C, T), mask (B, 1, T) -> (B, 2C) = [mean, std]."""

    eps = 1e-12  # speechbrain's clamp on the variance

    def __init__(self, channels: int, attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        self.tdnn = ConvReluBn(channels * (3 if global_context else 1), attention_channels)
        self.attention = nn.Conv1d(attention_channels, channels, 1)

    def _stats(self, x: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean = (x * weights).sum(dim=2)
        var = ((x - mean[:, :, None]) ** 2 * weights).sum(dim=2)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = _ones_mask(x, mask)
        if self.global_context:
            mean, std = self._stats(x, mask / mask.sum(dim=2, keepdim=True))
            frames = x.size(2)
            context = torch.cat([x, mean[:, :, None].expand(-1, -1, frames), std[:, :, None].expand(-1, -1, frames)], 1)
        else:
            context = x
        scores = self.attention(torch.tanh(self.tdnn(context, mask)))
        weights = scores.masked_fill(mask == 0, float("-inf")).softmax(dim=2)
        return torch.cat(self._stats(x, weights), dim=1)


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN over (B, T, in_dim) frames: stem (kernel 5) -> one SE-Res2Net block per dilation
    -> aggregation of the block outputs (1x1 conv + ReLU) -> attentive statistics pooling -> BN ->
    Linear to ``embed_dim``.

    Block i reads the previous output concatenated with ``appended[i]`` (``append_dims[i]``
    channels; 0 = nothing appended). ``forward`` returns the hidden states (stem and each block
    output, (B, T, channels), zeros past ``lengths``) and the utterance embedding (B, embed_dim).
    """

    def __init__(
        self,
        in_dim: int,
        channels: int = 512,
        dilations: Sequence[int] = (2, 3, 4),
        kernel_size: int = 3,
        scale: int = 8,
        se_channels: int = 128,
        append_dims: Sequence[int] = (0, 0, 0),
        mfa_channels: int = 1536,
        attention_channels: int = 128,
        embed_dim: int = 192,
    ):
        super().__init__()
        if len(append_dims) != len(dilations):
            raise ValueError(
                f"append_dims needs one entry per block: {len(dilations)} dilations {tuple(dilations)}, "
                f"got {len(append_dims)} append_dims {tuple(append_dims)}"
            )
        self.in_dim = in_dim
        self.append_dims = tuple(int(d) for d in append_dims)
        self.stem = ConvReluBn(in_dim, channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels + extra, channels, kernel_size, dilation, scale, se_channels)
            for dilation, extra in zip(dilations, self.append_dims)
        )
        self.mfa = nn.Conv1d(channels * len(self.blocks), mfa_channels, 1)
        self.pool = AttentiveStatsPool(mfa_channels, attention_channels)
        self.pool_norm = MaskedBatchNorm1d(2 * mfa_channels)
        self.fc = nn.Linear(2 * mfa_channels, embed_dim)

    def _check_inputs(self, x, lengths, appended) -> None:
        if x.dim() != 3 or x.size(2) != self.in_dim:
            raise ValueError(f"EcapaTdnn input x: expected (B, T, {self.in_dim}), got {tuple(x.shape)}")
        batch, frames = x.shape[:2]
        if lengths.shape != (batch,):
            raise ValueError(f"EcapaTdnn lengths: expected ({batch},), got {tuple(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > frames).any()):
            raise ValueError(
                f"EcapaTdnn lengths must lie in [1, {frames}] (the frame count of x), got {lengths.tolist()}"
            )
        if appended is None:
            if any(self.append_dims):
                raise ValueError(f"EcapaTdnn expects appended inputs of {self.append_dims} channels, got None")
            return
        if len(appended) != len(self.blocks):
            raise ValueError(
                f"EcapaTdnn appended: expected {len(self.blocks)} entries (one per block), got {len(appended)}"
            )
        for i, (extra, dim) in enumerate(zip(appended, self.append_dims)):
            if extra is None and dim == 0:
                continue
            if extra is None or tuple(extra.shape) != (batch, frames, dim):
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"EcapaTdnn appended[{i}]: expected ({batch}, {frames}, {dim}), got {got}")

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        appended: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        self._check_inputs(x, lengths, appended)
        mask = lengths_to_mask(lengths, x.size(1)).to(x.dtype)
        h = self.stem(x.transpose(1, 2) * mask, mask) * mask
        states = [h]
        for i, block in enumerate(self.blocks):
            if self.append_dims[i]:
                h = torch.cat([h, appended[i].transpose(1, 2) * mask], dim=1)
            h = block(h, mask)
            states.append(h)
        aggregated = F.relu(self.mfa(torch.cat(states[1:], dim=1)))
        embedding = self.fc(self.pool_norm(self.pool(aggregated, mask)))
        return [s.transpose(1, 2) for s in states], embedding
