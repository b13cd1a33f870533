"""Audio-JEPA's mask generators: time masking and I-JEPA's multi-block masking on a (time x
frequency) patch grid. Counts, disjoint context and targets, blocks inside the grid, every edge row
and column reachable, no placement bias, seeded, batch-consistent shapes."""

import collections

import pytest
import torch

from audio_ssl_ext.modules.masking import (
    block_shape,
    multi_block_masking,
    per_sample_masks,
    random_block,
    sample_block_shape,
    time_masking,
)

GRID = (13, 5)  # the paper's 2.08 s input: 13 time x 5 frequency patches of 16 x 16


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def cells(indices, grid=GRID):
    """Flat patch indices -> set of (time, frequency) cells."""
    return {divmod(int(i), grid[1]) for i in indices}


# --- time masking ---------------------------------------------------------------------------


@pytest.mark.parametrize("span", [1, 2, 3])
def test_time_masking_masks_whole_time_steps_in_spans_and_keeps_the_rest(span):
    grid_t, grid_f = GRID
    mask = time_masking(64, GRID, 0.6, generator(), span=span)
    num_spans = round(grid_t * 0.6 / span)  # 8, 4 (8 steps), 3 (9 steps)
    assert mask.masked.shape == (64, num_spans * span * grid_f)
    assert mask.kept.shape == (64, (grid_t - num_spans * span) * grid_f)
    for kept, masked in zip(mask.kept, mask.masked):
        assert sorted(kept.tolist() + masked.tolist()) == list(range(grid_t * grid_f))
        assert torch.equal(masked, masked.sort().values) and torch.equal(kept, kept.sort().values)
        masked_cells = cells(masked)
        steps = sorted({t for t, _ in masked_cells})
        # whole time steps: every frequency of a masked time step is masked
        assert masked_cells == {(t, f) for t in steps for f in range(grid_f)}
        # spans may touch, so every run of masked steps is a multiple of the span
        runs, run = [], 1
        for a, b in zip(steps, steps[1:]):
            if b == a + 1:
                run += 1
            else:
                runs.append(run)
                run = 1
        runs.append(run)
        assert all(r % span == 0 for r in runs), (steps, span)


def test_time_masking_places_spans_uniformly_edges_included():
    grid_t = GRID[0]
    mask = time_masking(4000, GRID, 0.3, generator(1), span=2)  # 2 spans of 2 steps
    counts = collections.Counter(int(i) // GRID[1] for row in mask.masked for i in row[:: GRID[1]])
    # Edge steps are covered by 1 of the 11 start positions of a span, inner ones by 2, so the
    # first and last step are masked about half as often as a middle one: never zero.
    assert set(counts) == set(range(grid_t))
    inner = [counts[t] for t in range(1, grid_t - 1)]
    assert min(inner) > 0.8 * max(inner)
    assert 0.35 < counts[0] / (sum(inner) / len(inner)) < 0.75
    assert 0.35 < counts[grid_t - 1] / (sum(inner) / len(inner)) < 0.75


def test_time_masking_is_seeded_and_per_sample_masks_stack_it():
    a = per_sample_masks(time_masking, [3, 7], (1, 0, 5), grid=GRID, mask_ratio=0.6, span=1)
    b = per_sample_masks(time_masking, [7], (1, 0, 5), grid=GRID, mask_ratio=0.6, span=1)
    assert torch.equal(a.masked[1], b.masked[0]) and torch.equal(a.kept[1], b.kept[0])
    assert not torch.equal(a.masked[0], a.masked[1])


@pytest.mark.parametrize("ratio,span", [(0.0, 1), (0.01, 1), (0.99, 1), (0.6, 13), (0.6, 0)])
def test_time_masking_that_masks_nothing_or_everything_is_an_error(ratio, span):
    with pytest.raises(ValueError, match="mask_ratio|span"):
        time_masking(1, GRID, ratio, generator(), span=span)


# --- blocks ---------------------------------------------------------------------------------


def test_block_shape_keeps_the_area_when_the_grid_is_too_narrow():
    assert block_shape(GRID, 9.0, 1.0) == (3, 3)
    assert block_shape(GRID, 12.0, 0.75) == (3, 4)
    # 85% of 65 patches, "square": 7.4 x 7.4 does not fit 5 frequency patches; I-JEPA would
    # shrink it to 7 x 4 = 28 patches, here it becomes 11 x 5 = 55
    assert block_shape(GRID, 55.25, 1.0) == (11, 5)
    assert block_shape(GRID, 65.0, 1.0) == GRID  # the whole grid: full height and width
    assert block_shape(GRID, 65.0, 100.0) == GRID
    assert block_shape(GRID, 0.1, 1.0) == (1, 1)


def test_sample_block_shape_draws_scale_and_aspect_independently():
    g = generator(2)
    shapes = [sample_block_shape((40, 40), (0.2, 0.2), (0.5, 2.0), g) for _ in range(200)]
    areas = [h * w for h, w in shapes]
    assert max(areas) - min(areas) <= 0.1 * 320  # fixed scale: 320 patches, rounding only
    assert min(h / w for h, w in shapes) < 0.6 and max(h / w for h, w in shapes) > 1.7
    # I-JEPA used one uniform draw for both, so large blocks were always the tall ones
    shapes = [sample_block_shape((40, 40), (0.05, 0.3), (0.5, 2.0), g) for _ in range(400)]
    large = [h / w for h, w in shapes if h * w > 0.2 * 1600]
    assert min(large) < 0.8 and max(large) > 1.3


def test_every_block_position_is_drawn_the_last_row_and_column_included():
    g = generator(3)
    for shape in [(3, 4), (13, 1), (1, 5), (13, 5)]:
        corners = collections.Counter()
        for _ in range(600):
            block = random_block(GRID, shape, g).view(GRID)
            rows, cols = block.nonzero(as_tuple=True)
            assert block.sum() == shape[0] * shape[1]
            assert rows.max() - rows.min() + 1 == shape[0] and cols.max() - cols.min() + 1 == shape[1]
            corners[int(rows.min()), int(cols.min())] += 1
        positions = (GRID[0] - shape[0] + 1) * (GRID[1] - shape[1] + 1)
        assert len(corners) == positions  # I-JEPA's randint(0, H - h) never drew the last one
        assert min(corners.values()) > 0.4 * 600 / positions


# --- multi-block ----------------------------------------------------------------------------


def is_block(indices, shape, grid=GRID):
    rows = sorted({t for t, _ in cells(indices, grid)})
    cols = sorted({f for _, f in cells(indices, grid)})
    return (
        len(indices) == shape[0] * shape[1]
        and rows == list(range(rows[0], rows[0] + shape[0]))
        and cols == list(range(cols[0], cols[0] + shape[1]))
    )


def test_multi_block_masks_rectangular_targets_and_a_disjoint_context():
    for seed in range(20):
        mask = multi_block_masking(8, GRID, generator(seed), num_targets=4, min_context=10)
        batch, groups, count = mask.targets.shape
        assert (batch, groups) == (8, 4) and mask.context.shape[0] == 8
        assert mask.context.shape[1] > 10
        shape = next(
            (h, w) for h in range(1, 14) for w in range(1, 6) if h * w == count and is_block(mask.targets[0, 0], (h, w))
        )
        assert 0.15 * 65 - 3 <= count <= 0.2 * 65 + 3
        for context, targets in zip(mask.context, mask.targets):
            assert torch.equal(context, context.sort().values)
            assert len(set(context.tolist())) == len(context)
            for block in targets:
                assert is_block(block, shape)  # the batch's one target shape, inside the grid
                assert torch.equal(block, block.sort().values)
            assert not set(context.tolist()) & set(targets.flatten().tolist())
            assert 0 <= int(context.min()) and int(context.max()) < 65


def test_multi_block_context_lies_in_one_context_block():
    g = generator(5)
    for _ in range(50):
        mask = multi_block_masking(4, GRID, g, context_scale=(0.3, 0.3), num_targets=1, min_context=2)
        # a 0.3 x 65 = 19.5-patch context block: 4 x 5 after keeping the area on 5 frequency patches
        for context in mask.context:
            steps = [t for t, _ in cells(context)]
            assert max(steps) - min(steps) < 4


def test_multi_block_reaches_every_edge_and_has_no_placement_bias():
    g = generator(6)
    target_hits, context_hits = collections.Counter(), collections.Counter()
    for _ in range(60):
        mask = multi_block_masking(16, GRID, g)
        target_hits.update(t for t, _ in cells(mask.targets.flatten()))
        for context in mask.context:
            context_hits.update(t for t, _ in cells(context))
    assert set(target_hits) == set(context_hits) == set(range(GRID[0]))
    # I-JEPA cut every context to the batch's smallest by keeping the lowest indices, so the last
    # time steps (highest indices) were nearly never context; a random cut keeps them symmetric.
    first, last = sum(context_hits[t] for t in range(3)), sum(context_hits[t] for t in range(10, 13))
    assert 0.8 < last / first < 1.25


def test_multi_block_is_reproducible_from_its_generator_only():
    a = multi_block_masking(6, GRID, generator(9))
    torch.manual_seed(123)  # the global generator must not matter
    b = multi_block_masking(6, GRID, generator(9))
    c = multi_block_masking(6, GRID, generator(10))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context))


@pytest.mark.parametrize("grid", [(20, 5), (40, 5)])  # the paper's 3.2 s and 6.4 s inputs
def test_multi_block_works_on_the_longer_inputs(grid):
    mask = multi_block_masking(8, grid, generator(11))
    assert mask.targets.shape[:2] == (8, 4) and mask.context.shape[1] > 10
    num_patches = grid[0] * grid[1]
    assert 0.15 * num_patches - 3 <= mask.targets.shape[2] <= 0.2 * num_patches + 3


def test_multi_block_that_cannot_leave_a_context_is_an_error_naming_the_settings():
    with pytest.raises(ValueError, match="num_targets or target_scale"):
        multi_block_masking(2, GRID, generator(), num_targets=1, target_scale=(0.9, 0.95), max_tries=5)
