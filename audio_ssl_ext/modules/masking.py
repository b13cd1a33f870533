"""Mask generators over a flattened patch sequence: plain functions of shapes and a generator.

Every generator here takes (batch size, number of patches, its own parameters, a
``torch.Generator``) and returns index tensors, never touches data, and draws all of its
randomness from the generator it is given. That makes each one testable on its own and lets a
learner choose how to seed it: :func:`per_sample_masks` seeds one generator per sample from
(run seed, training step, sample id), so a sample's mask does not depend on which batch or worker
it lands in, and a resumed run draws exactly the masks an uninterrupted one would.
"""

import math
from typing import Callable, NamedTuple, Sequence, Tuple

import numpy as np
import torch


class PatchMask(NamedTuple):
    """Kept (visible) and masked patch indices, each (B, count), ascending within a row."""

    kept: torch.Tensor
    masked: torch.Tensor


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """round() rather than MAE's int(): 250 * (1 - 0.8) is 49.99999999999999 in floating point."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    masked = int(round(num_patches * mask_ratio))
    if not 0 < masked < num_patches:
        raise ValueError(
            f"mask_ratio={mask_ratio} of {num_patches} patches masks {masked}: "
            "at least one patch must stay visible and one be masked"
        )
    return masked


def random_masking(
    batch_size: int, num_patches: int, mask_ratio: float, generator: torch.Generator
) -> PatchMask:
    """MAE's unstructured masking: a uniform random subset of round(ratio * N) patches per sample.

    Indices are returned sorted so the visible tokens keep their time-major order (MAE keeps them
    shuffled, which is the same for global attention but would scatter an encoder's local windows).
    """
    masked_count = num_masked_patches(num_patches, mask_ratio)
    order = torch.rand(batch_size, num_patches, generator=generator).argsort(dim=1)
    kept = order[:, : num_patches - masked_count].sort(dim=1).values
    masked = order[:, num_patches - masked_count :].sort(dim=1).values
    return PatchMask(kept, masked)


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded from several non-negative integers (numpy's SeedSequence mixes them,
    so (1, 2, 3) and (1, 23) or (12, 3) give unrelated streams)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def per_sample_masks(
    mask_fn: Callable[..., PatchMask],
    sample_ids: Sequence[int],
    entropy: Sequence[int],
    **mask_kwargs,
) -> PatchMask:
    """One mask per sample from its own generator seeded by (*entropy, sample id), stacked.

    ``mask_fn`` is any generator of this module taking (batch_size, ..., generator); e.g.
    ``per_sample_masks(random_masking, ids, (seed, 0, num_updates), num_patches=250, mask_ratio=0.8)``.
    """
    rows = [
        mask_fn(1, generator=seeded_generator(*entropy, int(sample_id)), **mask_kwargs)
        for sample_id in sample_ids
    ]
    return PatchMask(*(torch.cat(parts, dim=0) for parts in zip(*rows)))


# --- JEPA masks (Audio-JEPA): context and target patches on the (time x frequency) grid ---------
#
# A JEPA needs two sets per sample: the context the student encodes and the targets it predicts.
# Targets come in G groups of K patches, (B, G, K): one group for unstructured and time masking,
# one per target block for multi-block masking, whose blocks may overlap each other (as I-JEPA's)
# and are predicted separately. Patch index = time_patch * freq_patches + freq_patch, as in
# patches.py.


class ContextTargetMask(NamedTuple):
    """Context (B, Nc) and target (B, G, K) patch indices, ascending within each row / group."""

    context: torch.Tensor
    targets: torch.Tensor


def context_target_from_patch_mask(mask: PatchMask) -> ContextTargetMask:
    """A kept/masked split as a JEPA mask: context = kept, one target group = masked."""
    return ContextTargetMask(mask.kept, mask.masked[:, None, :])


def time_masking(
    batch_size: int,
    grid: Tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator,
    span: int = 1,
) -> PatchMask:
    """Masks whole time steps across all frequencies, in non-overlapping spans of ``span`` time
    patches: round(ratio * time_patches / span) spans per sample, every placement equally likely.

    Uniform placement: with k spans of length L in T time patches, choosing k of the
    ``T - k * L + k`` slots and shifting the i-th chosen slot by ``i * (L - 1)`` maps the subsets
    one-to-one onto the non-overlapping placements (the first and last time patch included).
    Adjacent spans may touch and read as one longer span.
    """
    grid_t, grid_f = grid
    if span < 1:
        raise ValueError(f"time masking span must be at least 1 time patch, got {span}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    num_spans = int(round(grid_t * mask_ratio / span))
    if not 0 < num_spans * span < grid_t:
        raise ValueError(
            f"time masking of {grid_t} time patches with mask_ratio={mask_ratio} and span={span} "
            f"masks {num_spans * span} time patches; at least one must be masked and one kept"
        )
    slots = grid_t - num_spans * (span - 1)
    chosen = torch.rand(batch_size, slots, generator=generator).argsort(dim=1)[:, :num_spans]
    starts = chosen.sort(dim=1).values + torch.arange(num_spans) * (span - 1)
    masked_t = (starts[:, :, None] + torch.arange(span)).reshape(batch_size, -1)
    is_masked = torch.zeros(batch_size, grid_t, dtype=torch.bool)
    is_masked.scatter_(1, masked_t, True)
    # (B, T) time steps -> (B, T * F) patches, time-major
    is_masked = is_masked.repeat_interleave(grid_f, dim=1)
    order = torch.arange(grid_t * grid_f).expand(batch_size, -1)
    masked = order[is_masked].view(batch_size, -1)
    kept = order[~is_masked].view(batch_size, -1)
    return PatchMask(kept, masked)


def block_shape(grid: Tuple[int, int], area: float, aspect_ratio: float) -> Tuple[int, int]:
    """(time, frequency) extent in patches of a block of about ``area`` patches whose
    time / frequency extent is ``aspect_ratio``, at most the grid.

    Where the grid is too narrow in one axis, the block takes that whole axis and stretches
    along the other to keep its area (I-JEPA shrinks the side instead, so on a 13 x 5 grid its
    85 % "square" context block would cover only 7 x 4 patches).
    """
    grid_t, grid_f = grid
    height, width = math.sqrt(area * aspect_ratio), math.sqrt(area / aspect_ratio)
    if height > grid_t:
        height, width = grid_t, area / grid_t
    elif width > grid_f:
        height, width = area / grid_f, grid_f
    return (
        min(max(int(round(height)), 1), grid_t),
        min(max(int(round(width)), 1), grid_f),
    )


def sample_block_shape(
    grid: Tuple[int, int],
    scale: Tuple[float, float],
    aspect_ratio: Tuple[float, float],
    generator: torch.Generator,
) -> Tuple[int, int]:
    """A block shape with a uniform fraction ``scale`` of the grid's patches and a uniform
    time / frequency ``aspect_ratio`` (two independent draws; I-JEPA used one draw for both, which
    ties large blocks to tall ones)."""
    (min_scale, max_scale), (min_ratio, max_ratio) = scale, aspect_ratio
    if not 0.0 < min_scale <= max_scale <= 1.0:
        raise ValueError(f"block scale range must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0.0 < min_ratio <= max_ratio:
        raise ValueError(f"block aspect ratio range must satisfy 0 < min <= max, got {aspect_ratio}")
    u_scale, u_ratio = torch.rand(2, generator=generator).tolist()
    area = (min_scale + u_scale * (max_scale - min_scale)) * grid[0] * grid[1]
    return block_shape(grid, area, min_ratio + u_ratio * (max_ratio - min_ratio))


def random_block(grid: Tuple[int, int], shape: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(grid_t * grid_f,) bool: one block of ``shape`` at a uniform position; every position that
    fits is possible, the last row and column included (I-JEPA's randint(0, H - h) missed them)."""
    (grid_t, grid_f), (height, width) = grid, shape
    top = int(torch.randint(0, grid_t - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, grid_f - width + 1, (1,), generator=generator))
    block = torch.zeros(grid_t, grid_f, dtype=torch.bool)
    block[top : top + height, left : left + width] = True
    return block.flatten()


def multi_block_masking(
    batch_size: int,
    grid: Tuple[int, int],
    generator: torch.Generator,
    num_targets: int = 4,
    target_scale: Tuple[float, float] = (0.15, 0.2),
    target_aspect_ratio: Tuple[float, float] = (0.75, 1.5),
    context_scale: Tuple[float, float] = (0.85, 1.0),
    min_context: int = 10,
    max_tries: int = 100,
) -> ContextTargetMask:
    """I-JEPA's multi-block masks: ``num_targets`` target blocks and one context block minus the
    targets, per sample.

    As in I-JEPA, one target shape and one context shape (aspect ratio 1) are drawn per batch,
    target blocks are placed independently (they may overlap each other: each is its own group,
    so every group has exactly h * w patches), and a sample whose context keeps
    ``min_context`` patches or fewer is redrawn. Contexts are then cut to the smallest count in
    the batch so they stack. I-JEPA cut them by keeping the lowest indices, which drops the
    last rows of every context; here each sample keeps a uniform random subset.
    """
    grid_t, grid_f = grid
    if num_targets < 1:
        raise ValueError(f"multi-block masking needs at least one target block, got {num_targets}")
    target_shape = sample_block_shape(grid, target_scale, target_aspect_ratio, generator)
    context_shape = sample_block_shape(grid, context_scale, (1.0, 1.0), generator)
    targets, contexts = [], []
    for _ in range(batch_size):
        for _ in range(max_tries):
            blocks = [random_block(grid, target_shape, generator) for _ in range(num_targets)]
            context = random_block(grid, context_shape, generator) & ~torch.stack(blocks).any(dim=0)
            if int(context.sum()) > min_context:
                break
        else:
            raise ValueError(
                f"multi-block masking: {max_tries} draws of {num_targets} target blocks of "
                f"{target_shape} and a context block of {context_shape} on a {grid} grid all left "
                f"{min_context} context patches or fewer; lower num_targets or target_scale, "
                f"raise context_scale, or lower min_context"
            )
        targets.append(torch.stack([block.nonzero().squeeze(1) for block in blocks]))
        contexts.append(context.nonzero().squeeze(1))
    count = min(len(c) for c in contexts)
    contexts = [c[torch.randperm(len(c), generator=generator)[:count]].sort().values for c in contexts]
    return ContextTargetMask(torch.stack(contexts), torch.stack(targets))
