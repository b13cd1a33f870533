"""Multi-Window Multi-Head Attention (MW-MHA, Yadav et al. 2023, arXiv 2306.00561).

Head i attends only within non-overlapping windows of w_i consecutive tokens of the flattened
(time-major) patch sequence; w_i = 0 means a global head. As in the official implementation
(mwmae-jax-official, ``WindowedAttentionHead``), every windowed head adds its own learned 1-D
relative position bias (2 w_i - 1 values, indexed by query - key offset) to its scores; global
heads have none, so a layer whose heads are all global is exactly standard multi-head attention.

Speed: the official code runs one head at a time. Here adjacent heads that share a window size
form one group (list equal windows next to each other to batch them): the global heads are one
``scaled_dot_product_attention`` call, and the windows of a windowed group are one batch of
(w x w) problems (one baddbmm, softmax, one bmm). A windowed head so computes N * w scores
instead of N * N: at 250 patches the rule's layer computes about a third of the scores of
global attention. ``scripts/mwmha_bench.py`` times it against global attention.
On a GPU, where a Python loop of small kernels costs more than the scores it saves, the layer is
one ``scaled_dot_product_attention`` call over all heads instead, with an additive (H, N, N) mask
that holds each windowed head's relative bias inside its windows and -inf outside
(:meth:`MultiWindowAttention.dense_bias`, one gather from all the tables).
:func:`multi_window_attention_reference` is the plain per-head loop over the same parameters:
the tests check the two agree, forward and backward, and the benchmark times both.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def paper_window_sizes(num_tokens: int) -> List[int]:
    """The paper's rule: one head per non-unary factor of the token count, plus two global heads.

    250 -> [2, 5, 10, 25, 50, 125, 0, 0]; a prime count has no local head: 13 -> [0, 0].
    """
    if num_tokens < 1:
        raise ValueError(f"the window rule needs a positive number of tokens, got {num_tokens}")
    return [w for w in range(2, num_tokens) if num_tokens % w == 0] + [0, 0]


def resolve_window_sizes(
    window_sizes: Optional[Sequence[int]],
    num_tokens: Sequence[int],
    num_heads: Optional[int] = None,
    field: str = "window_sizes",
) -> List[int]:
    """Check a window list (or derive it with the paper's rule when None) for a layer.

    ``num_tokens`` lists every sequence length the layer will see (a decoder: the patch count;
    an encoder: the visible count in training and the full count at feature extraction); each
    window must divide all of them. The rule is applied to the first. A window equal to the
    (only) length is global and becomes 0.
    ``num_heads``, when given, must equal the list's length. ``field`` names the config field in
    the errors.
    """
    lengths = list(num_tokens)
    if window_sizes is None:
        windows = paper_window_sizes(lengths[0])
    else:
        windows = [int(w) for w in window_sizes]
        if not windows:
            raise ValueError(f"{field} is empty: give one window size per head (0 = global)")
    for w in windows:
        if w < 0:
            raise ValueError(f"{field}={windows}: window sizes must be >= 0 (0 = global)")
        bad = [n for n in lengths if w and n % w]
        if bad:
            raise ValueError(
                f"{field}={windows}: window {w} does not divide the {bad[0]} tokens the layer "
                f"attends over; windows must divide {' and '.join(map(str, lengths))}"
            )
    windows = [0 if all(w == n for n in lengths) else w for w in windows]
    if num_heads is not None and num_heads != len(windows):
        raise ValueError(
            f"{field}={windows} gives {len(windows)} heads but the attention head count is "
            f"{num_heads}: with MW-MHA the head count is the length of the window list "
            "(leave the head count unset to take it from the list)"
        )
    return windows


def relative_position_table(window: int) -> torch.Tensor:
    """A fresh (2 w - 1,) bias table, initialised as the official code's
    ``variance_scaling(0.02, "fan_in", "truncated_normal")`` on its (2 w - 1, 1) table: variance
    0.02 / fan_in with fan_in = 2 w - 1, from a normal truncated at two standard deviations and
    rescaled (by 1 / 0.8796) so that the truncated values have that variance: std 0.082 for w = 2,
    0.009 for w = 125 (not timm's Swin's fixed 0.02)."""
    size = 2 * window - 1
    std = (0.02 / size) ** 0.5 / 0.87962566103423978  # jax's constant: std of N(0, 1) cut at +-2
    return nn.init.trunc_normal_(torch.empty(size), std=std, a=-2 * std, b=2 * std)


class MultiWindowAttention(nn.Module):
    """MW-MHA over (B, N, dim); ``window_sizes[i]`` is head i's window (0 = global)."""

    def __init__(self, dim: int, window_sizes: Sequence[int], qkv_bias: bool = True):
        super().__init__()
        num_heads = len(window_sizes)
        if num_heads == 0 or dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads ({list(window_sizes)})")
        self.window_sizes = [int(w) for w in window_sizes]
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        # Groups: runs of adjacent heads with the same window (the rule's two global heads are
        # one run). Runs, not all heads of a window wherever they are, so that the heads of a
        # group are a contiguous slice of qkv and the groups one torch.split: the backward of a
        # split is one concatenation, where per-group slicing or indexing would write each
        # group's gradient into a zero-filled copy of the whole qkv tensor.
        self.group_windows: List[int] = []
        self.group_sizes: List[int] = []
        for head, w in enumerate(self.window_sizes):
            if head and w == self.window_sizes[head - 1]:
                self.group_sizes[-1] += 1
            else:
                self.group_windows.append(w)
                self.group_sizes.append(1)
        # Relative position table of each windowed head: 2 w - 1 offsets, query - key + w - 1.
        self.relative_position_bias = nn.ParameterDict(
            {f"head_{head}": nn.Parameter(relative_position_table(w)) for head, w in enumerate(self.window_sizes) if w}
        )
        self._dense_index = {}  # (tokens, device) -> (H, N, N) index into dense_bias's value list

    def dense_bias(self, tokens: int) -> torch.Tensor:
        """(H, N, N) additive mask: head h's bias[i, j] = table[i % w - j % w + w - 1] when i and j
        share a window of w tokens, -inf when not; 0 for a global head."""
        device, dtype = self.qkv.weight.device, self.qkv.weight.dtype
        values = [torch.zeros(1, device=device, dtype=dtype), torch.full((1,), float("-inf"), device=device, dtype=dtype)]
        values += [self.relative_position_bias[f"head_{h}"] for h, w in enumerate(self.window_sizes) if w]
        key = (tokens, str(device))
        if key not in self._dense_index:
            positions = torch.arange(tokens, device=device)
            heads, start = [], 2  # values: [0, -inf, table of the first windowed head, ...]
            for w in self.window_sizes:
                if w == 0:
                    heads.append(torch.zeros(tokens, tokens, dtype=torch.long, device=device))
                    continue
                same = positions[:, None] // w == positions[None, :] // w
                offset = positions[:, None] % w - positions[None, :] % w + (w - 1)
                heads.append(torch.where(same, start + offset, 1))
                start += 2 * w - 1
            self._dense_index[key] = torch.stack(heads)
        return torch.cat(values)[self._dense_index[key]]

    def head_window_bias(self, head: int) -> torch.Tensor:
        """(w, w) bias of a windowed head: bias[i, j] = table[i - j + w - 1]."""
        w = self.window_sizes[head]
        offsets = torch.arange(w, device=self.qkv.weight.device)
        return self.relative_position_bias[f"head_{head}"][offsets[:, None] - offsets[None, :] + (w - 1)]

    def check_length(self, tokens: int) -> None:
        bad = [w for w in self.group_windows if w and tokens % w]
        if bad:
            raise ValueError(
                f"MW-MHA windows {self.window_sizes}: window {bad[0]} does not divide {tokens} tokens"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        self.check_length(tokens)
        if x.is_cuda:
            return self.forward_dense(x)
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        outputs = []  # (B, N, heads of the group, head_dim) per group, in head order
        first_head = 0
        for w, part in zip(self.group_windows, qkv.split(self.group_sizes, dim=3)):
            q, k, v = part.unbind(dim=2)  # each (B, N, h, head_dim)
            if w == 0:
                out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                outputs.append(out.transpose(1, 2))
            else:
                heads = range(first_head, first_head + part.shape[3])
                bias = torch.stack([self.head_window_bias(h) for h in heads])
                outputs.append(_windowed_attention(q, k, v, bias, w))
            first_head += part.shape[3]
        out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
        return self.proj(out.reshape(batch, tokens, dim))


    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """All heads in one scaled_dot_product_attention call with :meth:`dense_bias` (the GPU path)."""
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense_bias(tokens).to(q.dtype)[None])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def _windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v within windows of w tokens, for h heads sharing w.

    q, k, v: (B, N, h, d); bias: (h, w, w). The windows of all heads become one batch of
    (w x w) problems for one baddbmm and one bmm. Explicit products rather than
    scaled_dot_product_attention here: with a bias that needs a gradient, SDPA takes its generic
    path on a CPU, which measured slower than this at every window of the paper's list; for one
    head per window (the paper's lists) every reshape below is a view.
    """
    batch, tokens, heads, d = q.shape
    problems = batch * heads * (tokens // w)

    def windows(t):
        return t.reshape(batch, tokens // w, w, heads, d).permute(0, 3, 1, 2, 4).reshape(problems, w, d)

    scores = torch.baddbmm(
        bias[None, :, None].expand(batch, heads, tokens // w, w, w).reshape(problems, w, w),
        windows(q),
        windows(k).transpose(1, 2),
        alpha=d**-0.5,
    )
    out = torch.bmm(scores.softmax(dim=-1), windows(v))
    return out.view(batch, heads, tokens // w, w, d).permute(0, 2, 3, 1, 4).reshape(batch, tokens, heads, d)


def multi_window_attention_reference(module: MultiWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """The plain per-head definition of MW-MHA, with ``module``'s parameters: the official code's
    structure (one head at a time, explicit windows, softmax(q k^T / sqrt(d) + bias) v).

    Kept as the reference the fast path is tested against and benchmarked with; not for training.
    """
    batch, tokens, dim = x.shape
    d = module.head_dim
    qkv = module.qkv(x).view(batch, tokens, 3, module.num_heads, d)
    heads = []
    for head, w in enumerate(module.window_sizes):
        q, k, v = (qkv[:, :, i, head] for i in range(3))  # (B, N, d)
        if w == 0:
            scores = q @ k.transpose(1, 2) / d**0.5
            heads.append(scores.softmax(dim=-1) @ v)
            continue
        q, k, v = (t.reshape(batch * tokens // w, w, d) for t in (q, k, v))
        scores = q @ k.transpose(1, 2) / d**0.5 + module.head_window_bias(head)
        heads.append((scores.softmax(dim=-1) @ v).reshape(batch, tokens, d))
    return module.proj(torch.cat(heads, dim=-1))
