"""Patching (time-major), its inverse, and the fixed sine-cosine positions."""

import math

import pytest
import torch

from audio_ssl_ext.modules.patches import PatchEmbedding, patch_grid, patchify, sincos_1d, sincos_2d, unpatchify


def test_patchify_is_time_major_across_and_within_patches():
    # 4 frames x 4 mels, 2 x 2 patches: value = 10 * frame + mel.
    spec = (10 * torch.arange(4)[:, None] + torch.arange(4)[None, :]).float()[None]
    patches = patchify(spec, patch_time=2, patch_freq=2)
    assert patches.shape == (1, 4, 4)
    # Patch 0: frames 0-1, mels 0-1; patch 1: frames 0-1, mels 2-3 (frequency first, then time).
    assert patches[0, 0].tolist() == [0, 1, 10, 11]
    assert patches[0, 1].tolist() == [2, 3, 12, 13]
    assert patches[0, 2].tolist() == [20, 21, 30, 31]
    assert patches[0, 3].tolist() == [22, 23, 32, 33]


def test_unpatchify_inverts_patchify_at_the_paper_shape():
    spec = torch.randn(2, 200, 80)
    patches = patchify(spec, 4, 16)
    assert patches.shape == (2, 250, 64)
    assert torch.equal(unpatchify(patches, (50, 5), 4, 16), spec)


def test_spectrogram_that_does_not_split_into_patches_is_an_error():
    assert patch_grid(208, 128, 16, 16) == (13, 8)
    with pytest.raises(ValueError, match="whole 4 x 16 patches"):
        patch_grid(201, 80, 4, 16)


def test_sincos_1d_matches_hand_computed_values():
    emb = sincos_1d(4, torch.tensor([0, 1, 2]))
    # omega = [1, 1/100]: [sin(p), sin(p/100), cos(p), cos(p/100)]
    for p in range(3):
        expected = [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]
        assert emb[p].tolist() == pytest.approx(expected, abs=1e-6)


def test_sincos_2d_encodes_time_in_the_first_half_and_frequency_in_the_second():
    emb = sincos_2d(8, (3, 2))  # 3 time patches x 2 frequency patches, time-major
    assert emb.shape == (6, 8)
    time_part, freq_part = emb[:, :4], emb[:, 4:]
    assert torch.equal(time_part[0], time_part[1])  # same time step, different frequency
    assert not torch.equal(time_part[0], time_part[2])
    assert torch.equal(freq_part[0], freq_part[2])  # same frequency patch, next time step
    assert torch.allclose(time_part[2], sincos_1d(4, torch.tensor([1]))[0])


def test_patch_embedding_adds_the_fixed_positions():
    embed = PatchEmbedding(patch_dim=64, embed_dim=16, grid=(50, 5))
    torch.nn.init.zeros_(embed.proj.weight)
    torch.nn.init.zeros_(embed.proj.bias)
    out = embed(torch.randn(2, 250, 64))
    assert torch.allclose(out, sincos_2d(16, (50, 5)).expand(2, -1, -1))
    assert "pos_embed" not in embed.state_dict()  # derived from the config, not saved
    with pytest.raises(ValueError, match="expected 250 patches"):
        embed(torch.randn(2, 249, 64))
