"""Spectrogram patches and sine-cosine positions (MAE / MW-MAE / Audio-JEPA).

A spectrogram (B, frames, mels) is cut into non-overlapping (patch_time x patch_freq) patches,
flattened *time-major*: patch index = time_patch * freq_patches + freq_patch. Consecutive indices
therefore walk up the frequency axis of one time step before moving on in time, which is what
MW-MAE's windows over the flattened sequence rely on (a window of `freq_patches` tokens is one
time step). Inside a patch the values are time-major too (frame, then mel bin), as in MAE's
``patchify`` and the official MW-MAE code.
"""

from typing import Tuple

import torch
from torch import nn


def patch_grid(frames: int, mels: int, patch_time: int, patch_freq: int) -> Tuple[int, int]:
    """(time patches, frequency patches); the spectrogram must split into whole patches."""
    if frames % patch_time or mels % patch_freq:
        raise ValueError(
            f"a {frames} x {mels} spectrogram does not split into whole {patch_time} x {patch_freq} "
            f"patches (frames must be a multiple of {patch_time}, mels of {patch_freq})"
        )
    return frames // patch_time, mels // patch_freq


def patchify(spec: torch.Tensor, patch_time: int, patch_freq: int) -> torch.Tensor:
    """(B, frames, mels) -> (B, time_patches * freq_patches, patch_time * patch_freq)."""
    batch, frames, mels = spec.shape
    grid_t, grid_f = patch_grid(frames, mels, patch_time, patch_freq)
    x = spec.reshape(batch, grid_t, patch_time, grid_f, patch_freq)
    return x.permute(0, 1, 3, 2, 4).reshape(batch, grid_t * grid_f, patch_time * patch_freq)


def unpatchify(
    patches: torch.Tensor, grid: Tuple[int, int], patch_time: int, patch_freq: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, patch_time * patch_freq) -> (B, frames, mels)."""
    grid_t, grid_f = grid
    batch, num_patches, patch_dim = patches.shape
    if num_patches != grid_t * grid_f or patch_dim != patch_time * patch_freq:
        raise ValueError(
            f"{tuple(patches.shape)} patches do not fill a {grid} grid of {patch_time} x {patch_freq}"
        )
    x = patches.reshape(batch, grid_t, grid_f, patch_time, patch_freq).permute(0, 1, 3, 2, 4)
    return x.reshape(batch, grid_t * patch_time, grid_f * patch_freq)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D sine-cosine embedding: (L,) positions -> (L, dim) = [sin(p w_k) | cos(p w_k)],
    w_k = 10000^(-k / (dim/2)), k = 0 .. dim/2 - 1."""
    if dim % 2:
        raise ValueError(f"a sine-cosine embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid: Tuple[int, int]) -> torch.Tensor:
    """(grid_t * grid_f, dim), time-major: the first dim/2 channels encode the time patch index,
    the last dim/2 the frequency patch index (MAE's 2-D embedding, one axis per half)."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    grid_t, grid_f = grid
    t = torch.arange(grid_t).repeat_interleave(grid_f)
    f = torch.arange(grid_f).repeat(grid_t)
    return torch.cat([sincos_1d(dim // 2, t), sincos_1d(dim // 2, f)], dim=1)


class PatchEmbedding(nn.Module):
    """Flattened patches -> tokens plus the 2-D sine-cosine position of each patch.

    A linear map of the flattened patch is the same function as MAE's Conv2d with
    stride = kernel = patch size. All patches are embedded; a learner keeps the visible ones after.
    Positions are fixed (a buffer, not saved: a function of the config) unless
    ``trainable_positions``: then a parameter initialized as sine-cosine (the official MW-MAE code
    declares them in flax's "params" collection, so its optimizer trains them).
    """

    def __init__(self, patch_dim: int, embed_dim: int, grid: Tuple[int, int], trainable_positions: bool = False):
        super().__init__()
        self.grid = tuple(grid)
        self.proj = nn.Linear(patch_dim, embed_dim)
        positions = sincos_2d(embed_dim, self.grid)
        if trainable_positions:
            self.pos_embed = nn.Parameter(positions)
        else:
            self.register_buffer("pos_embed", positions, persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[1] != self.num_patches:
            raise ValueError(f"expected {self.num_patches} patches ({self.grid}), got {patches.shape[1]}")
        return self.proj(patches) + self.pos_embed
