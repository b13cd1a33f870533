"""ECAPA-TDNN: shapes, padding exactness, masked squeeze / pooling / BatchNorm, appended channels,
input checks, and the parameter count by hand."""

import pytest
import torch
from torch import nn

from audio_ssl_ext.modules.ecapa import (
    AttentiveStatsPool,
    EcapaTdnn,
    MaskedBatchNorm1d,
    SERes2NetBlock,
    lengths_to_mask,
)


def small_ecapa(append_dims=(4, 0, 4)):
    torch.manual_seed(0)
    return EcapaTdnn(
        16, channels=32, dilations=(2, 3, 4), scale=4, se_channels=8, append_dims=append_dims,
        mfa_channels=48, attention_channels=8, embed_dim=6,
    )


def inputs(batch=3, frames=20, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 16, generator=generator)
    appended = [torch.randn(batch, frames, 4, generator=generator), None]
    appended.append(torch.randn(batch, frames, 4, generator=generator))
    return x, appended


def warmed_up(model):
    """A training step so the BatchNorms' running statistics are not the identity, then eval."""
    x, appended = inputs(seed=9)
    model(x, torch.tensor([20, 17, 11]), appended)
    return model.eval()


def test_shapes_and_zeros_past_lengths():
    model = small_ecapa()
    x, appended = inputs()
    lengths = torch.tensor([20, 13, 5])
    states, embedding = model(x, lengths, appended)
    assert len(states) == 4 and all(s.shape == (3, 20, 32) for s in states)
    assert embedding.shape == (3, 6)
    for s in states:
        assert s[1, 13:].abs().max() == 0 and s[2, 5:].abs().max() == 0
        assert s[1, :13].abs().max() > 0


def test_a_padded_item_equals_the_item_alone_on_its_real_frames():
    model = warmed_up(small_ecapa())
    x, appended = inputs()
    lengths = torch.tensor([20, 13, 5])
    states, embedding = model(x, lengths, appended)
    for item, n in ((1, 13), (2, 5)):
        alone = [None if a is None else a[item : item + 1, :n] for a in appended]
        states_alone, embedding_alone = model(x[item : item + 1, :n], lengths[item : item + 1], alone)
        for padded, single in zip(states, states_alone):
            torch.testing.assert_close(padded[item, :n], single[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embedding[item], embedding_alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_padded_values_change_nothing(training):
    # covers the squeeze-excitation mean, the pooling's context and attention, and the BatchNorm
    # statistics (in training they are batch statistics: padding must not count)
    model = small_ecapa()
    model.train(training)
    x, appended = inputs()
    lengths = torch.tensor([20, 13, 5])
    states, embedding = model(x, lengths, appended)
    noisy_x, noisy_appended = x.clone(), [None if a is None else a.clone() for a in appended]
    for item, n in ((1, 13), (2, 5)):
        noisy_x[item, n:] = 100 * torch.randn_like(noisy_x[item, n:])
        noisy_appended[0][item, n:] = -50.0
        noisy_appended[2][item, n:] = 7.0
    states_noisy, embedding_noisy = model(noisy_x, lengths, noisy_appended)
    for a, b in zip(states, states_noisy):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embedding, embedding_noisy, rtol=1e-5, atol=1e-5)


def test_se_block_and_pool_read_real_frames_only():
    torch.manual_seed(0)
    block, pool = SERes2NetBlock(12, 16, dilation=2, scale=4, se_channels=4).eval(), AttentiveStatsPool(16, 8).eval()
    x = torch.randn(1, 12, 9)
    padded = torch.cat([x, 5 + torch.randn(1, 12, 6)], dim=2)
    mask = lengths_to_mask(torch.tensor([9]), 15)
    out, out_padded = block(x, None), block(padded, mask)
    torch.testing.assert_close(out_padded[..., :9], out, rtol=1e-5, atol=1e-6)
    assert out_padded[..., 9:].abs().max() == 0
    h = torch.randn(1, 16, 9)
    h_padded = torch.cat([h, 5 + torch.randn(1, 16, 6)], dim=2)
    torch.testing.assert_close(pool(h_padded, mask), pool(h), rtol=1e-5, atol=1e-6)
    assert pool(h).shape == (1, 32)


def test_pool_of_a_constant_sequence_is_its_value_and_zero_std():
    pool = AttentiveStatsPool(3, 4).eval()
    x = torch.tensor([1.0, -2.0, 0.5])[None, :, None].expand(1, 3, 7)
    stats = pool(x)
    torch.testing.assert_close(stats[0, :3], torch.tensor([1.0, -2.0, 0.5]))
    assert stats[0, 3:].max() <= 1e-6  # sqrt of the 1e-12 variance clamp


def test_appended_channels_change_the_output_and_get_gradients():
    model = warmed_up(small_ecapa())
    x, appended = inputs()
    lengths = torch.tensor([20, 13, 5])
    appended[2].requires_grad_(True)
    states, embedding = model(x, lengths, appended)
    embedding.sum().backward()
    assert appended[2].grad[0].abs().max() > 0 and appended[2].grad[2, 5:].abs().max() == 0
    other = [appended[0], None, torch.randn_like(appended[2])]
    states_other, embedding_other = model(x, lengths, other)
    torch.testing.assert_close(states_other[2], states[2])  # block 3's input changed, not block 2's
    assert not torch.allclose(states_other[3], states[3]) and not torch.allclose(embedding_other, embedding)


def test_inputs_are_checked_with_the_expected_shape():
    model = small_ecapa()
    x, appended = inputs()
    lengths = torch.tensor([20, 13, 5])
    with pytest.raises(ValueError, match=r"input x: expected \(B, T, 16\), got \(3, 20, 8\)"):
        model(x[..., :8], lengths, appended)
    with pytest.raises(ValueError, match=r"appended\[2\]: expected \(3, 20, 4\), got \(3, 19, 4\)"):
        model(x, lengths, [appended[0], None, appended[2][:, :19]])
    with pytest.raises(ValueError, match=r"appended: expected 3 entries"):
        model(x, lengths, appended[:2])
    with pytest.raises(ValueError, match="got None"):
        model(x, lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 20\]"):
        model(x, torch.tensor([21, 3, 3]), appended)
    with pytest.raises(ValueError, match=r"lengths: expected \(3,\)"):
        model(x, torch.tensor([20, 3]), appended)
    with pytest.raises(ValueError, match="one entry per block"):
        EcapaTdnn(16, append_dims=(0, 0))
    with pytest.raises(ValueError, match="Res2Net scale"):
        SERes2NetBlock(16, 20, scale=8)
    states, _ = small_ecapa(append_dims=(0, 0, 0))(x, lengths)  # nothing appended: None is fine
    assert len(states) == 4


def test_parameter_count_by_hand():
    c, a, w = 512, 768, 512 // 8  # channels, appended, Res2Net group width
    m, att, se, e = 1536, 128, 128, 192  # aggregation, attention, squeeze, embedding
    conv_relu_bn = lambda cin, cout, k=1: cin * cout * k + cout + 2 * cout  # noqa: E731 conv + BN affine
    stem = conv_relu_bn(512, c, 5)
    block = (
        conv_relu_bn(c + a, c)
        + 7 * conv_relu_bn(w, w, 3)
        + conv_relu_bn(c, c)
        + (c * se + se) + (se * c + c)  # squeeze-excitation
        + (c + a) * c + c  # residual projection
    )
    mfa = 3 * c * m + m
    pool = conv_relu_bn(3 * m, att) + att * m + m
    head = 2 * (2 * m) + 2 * m * e + e  # BN affine + Linear
    expected = stem + 3 * block + mfa + pool + head
    model = EcapaTdnn(512, 512, append_dims=(768,) * 3)
    assert sum(p.numel() for p in model.parameters()) == expected == 10_444_160


def test_masked_batchnorm_is_batchnorm_over_the_real_frames():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    lengths = torch.tensor([8, 6, 2])
    mask = lengths_to_mask(lengths, 8)
    ours, reference = MaskedBatchNorm1d(5), nn.BatchNorm1d(5)
    torch.testing.assert_close(ours(x), reference(x))  # no mask: plain BatchNorm1d
    # masked: the statistics of the real frames alone, laid out as one (1, C, 16) sequence
    real = torch.cat([x[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1)[None]
    out, expected = ours(x, mask), reference(real)
    torch.testing.assert_close(torch.cat([out[i, :, :n] for i, n in enumerate(lengths.tolist())], 1)[None], expected)
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    assert int(ours.num_batches_tracked) == 2
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x, mask), reference(x))
