"""Mask generators: shapes, partition, exact counts, and seeding that survives batching/resume."""

import pytest
import torch

from audio_ssl_ext.modules.masking import num_masked_patches, per_sample_masks, random_masking, seeded_generator


def test_random_masking_partitions_each_row_into_sorted_kept_and_masked():
    mask = random_masking(5, 250, 0.8, torch.Generator().manual_seed(0))
    assert mask.kept.shape == (5, 50) and mask.masked.shape == (5, 200)
    for kept, masked in zip(mask.kept, mask.masked):
        assert sorted(kept.tolist() + masked.tolist()) == list(range(250))
        assert torch.equal(kept, kept.sort().values) and torch.equal(masked, masked.sort().values)
    assert not torch.equal(mask.kept[0], mask.kept[1])  # rows are drawn independently


def test_mask_count_is_rounded_not_truncated():
    assert int(250 * (1 - 0.8)) == 49  # MAE's int(L * (1 - ratio)) would keep 49 of 250
    assert num_masked_patches(250, 0.8) == 200
    assert num_masked_patches(125, 0.8) == 100


@pytest.mark.parametrize("ratio", [0.0, 1.0, 0.001, 0.999])
def test_a_ratio_that_leaves_nothing_to_mask_or_to_see_is_an_error(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 250, ratio, torch.Generator())


def test_the_generator_is_the_only_source_of_randomness():
    a = random_masking(3, 100, 0.5, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global generator must not matter
    b = random_masking(3, 100, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a.kept, b.kept) and torch.equal(a.masked, b.masked)


def test_per_sample_masks_do_not_depend_on_the_batch_a_sample_is_in():
    kwargs = dict(num_patches=250, mask_ratio=0.8)
    alone = per_sample_masks(random_masking, [7], (1, 0, 42), **kwargs)
    batched = per_sample_masks(random_masking, [3, 7, 9], (1, 0, 42), **kwargs)
    assert torch.equal(batched.kept[1], alone.kept[0]) and torch.equal(batched.masked[1], alone.masked[0])
    next_step = per_sample_masks(random_masking, [7], (1, 0, 43), **kwargs)
    assert not torch.equal(next_step.kept, alone.kept)


def test_seeded_generator_mixes_its_inputs():
    draw = lambda *e: torch.rand(4, generator=seeded_generator(*e))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert not torch.equal(draw(1, 23), draw(12, 3))
    assert not torch.equal(draw(1, 2, 3), draw(1, 2, 4))
