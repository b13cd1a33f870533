"""MW-MHA: the window rule, config errors, equality with the per-head reference, locality."""

import pytest
import torch

from audio_ssl_ext.modules.multi_window_attention import (
    MultiWindowAttention,
    multi_window_attention_reference,
    paper_window_sizes,
    resolve_window_sizes,
)
from audio_ssl_ext.modules.vit import Attention


def test_window_rule_gives_the_papers_list_for_250_patches():
    assert paper_window_sizes(250) == [2, 5, 10, 25, 50, 125, 0, 0]


@pytest.mark.parametrize(
    "tokens, windows",
    [(125, [5, 25, 0, 0]), (65, [5, 13, 0, 0]), (13, [0, 0]), (12, [2, 3, 4, 6, 0, 0]), (1, [0, 0])],
)
def test_window_rule_for_other_patch_counts(tokens, windows):
    assert paper_window_sizes(tokens) == windows
    assert all(w == 0 or tokens % w == 0 for w in windows)


def test_explicit_windows_are_checked_and_a_full_window_is_global():
    assert resolve_window_sizes([2, 250, 0], [250]) == [2, 0, 0]
    assert resolve_window_sizes(None, [250], num_heads=8) == paper_window_sizes(250)
    # An encoder sees 50 visible patches in training and 250 at extraction: 50 stays a window.
    assert resolve_window_sizes([5, 50, 0], [50, 250]) == [5, 50, 0]


def test_a_window_that_does_not_divide_the_patch_count_is_a_config_error():
    with pytest.raises(ValueError, match=r"model.decoder_window_sizes=\[2, 3, 0\]: window 3 does not divide the 250"):
        resolve_window_sizes([2, 3, 0], [250], field="model.decoder_window_sizes")
    with pytest.raises(ValueError, match="window 125 does not divide the 50 tokens"):
        resolve_window_sizes([5, 125], [50, 250])


def test_a_head_count_that_disagrees_with_the_window_list_is_a_config_error():
    with pytest.raises(ValueError, match="gives 8 heads but the attention head count is 12"):
        resolve_window_sizes(None, [250], num_heads=12)
    with pytest.raises(ValueError, match="gives 2 heads but the attention head count is 8"):
        resolve_window_sizes([5, 0], [250], num_heads=8)
    with pytest.raises(ValueError, match="empty"):
        resolve_window_sizes([], [250])
    with pytest.raises(ValueError, match=">= 0"):
        resolve_window_sizes([-5, 0], [250])


def _module(windows, dim_per_head=4, seed=0):
    torch.manual_seed(seed)
    module = MultiWindowAttention(dim_per_head * len(windows), windows).double()
    for table in module.relative_position_bias.values():
        torch.nn.init.normal_(table, std=1.0)  # large enough that a wrong index would show
    return module


@pytest.mark.parametrize(
    "windows",
    [
        [2, 5, 10, 25, 50, 125, 0, 0],  # the paper's decoder
        [5, 0, 5, 25, 0],  # equal windows apart: separate groups
        [25, 25, 5, 0, 0],  # equal windows adjacent: one group of two windowed heads
        [0, 0, 0],
    ],
)
@pytest.mark.parametrize("path", ["grouped", "dense"])  # the CPU's and the GPU's
def test_fast_path_equals_the_per_head_reference_forward_and_backward(windows, path):
    module = _module(windows)
    x = torch.randn(2, 250, module.num_heads * module.head_dim, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(x)

    fast = module(x) if path == "grouped" else module.forward_dense(x)
    fast_grads = torch.autograd.grad(fast, [x, *module.parameters()], grad_out)
    reference = multi_window_attention_reference(module, x)
    reference_grads = torch.autograd.grad(reference, [x, *module.parameters()], grad_out)

    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
    names = ["input"] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, fast_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")
    assert all(g.abs().sum() > 0 for g in fast_grads)


def test_all_global_windows_are_standard_multi_head_attention():
    mw = MultiWindowAttention(32, [0, 0, 0, 0])
    assert len(mw.relative_position_bias) == 0
    plain = Attention(32, 4)
    plain.load_state_dict(mw.state_dict())
    x = torch.randn(2, 20, 32)
    torch.testing.assert_close(mw(x), plain(x))


def _per_head_outputs(module, x):
    """(B, N, heads, head_dim): with an identity output projection the output is the heads' concat."""
    with torch.no_grad():
        module.proj.weight.copy_(torch.eye(module.proj.weight.shape[0]))
        module.proj.bias.zero_()
        out = module(x)
    return out.view(*x.shape[:2], module.num_heads, module.head_dim)


def test_a_windowed_head_sees_only_its_window_and_a_global_head_sees_everything():
    windows = [5, 25, 0]
    module = _module(windows)
    x = torch.randn(1, 125, module.num_heads * module.head_dim, dtype=torch.float64)
    changed_token = 37  # in window 7 of head 0 (tokens 35-39) and window 1 of head 1 (25-49)
    y = x.clone()
    y[0, changed_token] += 10.0
    before, after = _per_head_outputs(module, x), _per_head_outputs(module, y)
    moved = (before - after).abs().amax(dim=-1)[0] > 1e-9  # (tokens, heads)

    tokens = torch.arange(125)
    for head, w in enumerate(windows):
        if w == 0:
            assert moved[:, head].all(), "a global head's output depends on every token"
        else:
            same_window = tokens // w == changed_token // w
            assert moved[same_window, head].all()
            assert not moved[~same_window, head].any(), f"head {head} (window {w}) saw outside its window"


def test_a_length_the_windows_do_not_divide_is_an_error_at_run_time():
    module = MultiWindowAttention(8, [5, 0])
    with pytest.raises(ValueError, match="window 5 does not divide 12 tokens"):
        module(torch.randn(1, 12, 8))


def test_relative_position_tables_start_as_the_official_variance_scaling_init():
    """flax variance_scaling(0.02, "fan_in", "truncated_normal") on a (2 w - 1, 1) table: std
    sqrt(0.02 / (2 w - 1)) after truncation at two (pre-rescaling) standard deviations."""
    torch.manual_seed(0)
    module = MultiWindowAttention(8, [2, 4000])
    small, large = module.relative_position_bias["head_0"], module.relative_position_bias["head_1"]
    assert small.shape == (3,) and large.shape == (7999,)
    expected = (0.02 / 7999) ** 0.5
    assert abs(large.std().item() / expected - 1) < 0.05
    bound = 2 * expected / 0.87962566103423978
    assert large.abs().max().item() <= bound and large.abs().max().item() > 0.9 * bound
    assert small.abs().max().item() <= 2 * (0.02 / 3) ** 0.5 / 0.87962566103423978
