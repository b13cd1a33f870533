"""Mask generators over a flattened patch sequence: plain functions of shapes and a generator.

Every generator here takes (batch size, number of patches, its own parameters, a
``torch.Generator``) and returns index tensors, never touches data, and draws all of its
randomness from the generator it is given. That makes each one testable on its own and lets a
learner choose how to seed it: :func:`per_sample_masks` seeds one generator per sample from
(run seed, training step, sample id), so a sample's mask does not depend on which batch or worker
it lands in, and a resumed run draws exactly the masks an uninterrupted one would.
"""

from typing import Callable, NamedTuple, Sequence

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
