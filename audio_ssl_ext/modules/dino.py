"""RDINO's objective pieces: the projection head, the DINO loss with a centred, sharpened teacher,
the diversity and redundancy-elimination regularizers, and gradient reversal (the teacher's
cosine momentum ramp is ``modules/schedules.py``).

References: facebookresearch/dino (``main_dino.py`` DINOLoss, ``vision_transformer.py`` DINOHead)
and modelscope 3D-Speaker's RDINO (``speakerlab/loss/dino_loss.py``
DINOLoss and RegLoss, ``speakerlab/models/rdino/RDINO_Head.py``, ``egs/voxceleb/sv-rdino``).
Deliberate differences, one line each:

- DINOLoss takes lists of views, not one tensor chunked by a fixed crop count;
- the teacher temperature is an attribute (RDINO's warm-up runs 0.04 -> 0.04, i.e. none);
- the centre is averaged over the global count of teacher rows (ranks may differ in batch size)
  and works without torch.distributed (RDINO's all_reduce needs it initialised);
- the regularizers are functions of one (N, D) batch; RDINO's RegLoss averages the two global
  views first and applies both to student and teacher (the teacher's term carries no gradient);
- redundancy_loss divides by D, the regularized width (VICReg); RDINO divides by its out_dim
  (65536) while the features are 8192-d, i.e. 1/8 of this: scale the weight to match;
- the head uses ``torch.nn.utils.parametrizations.weight_norm`` (``weight_g`` is
  ``last_layer.parametrizations.weight.original0``), and its BatchNorms skip nothing but are
  summed over ranks like the encoder's (:class:`~audio_ssl_ext.modules.ecapa.MaskedBatchNorm1d`).
"""

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from audio_ssl_ext.modules.ecapa import MaskedBatchNorm1d, is_distributed


class DINOHead(nn.Module):
    """RDINO's head: MLP (Linear+BN+GELU, Linear+BN+GELU, Linear to ``reg_dim``), whose output the
    regularizers read; then Linear to ``bottleneck_dim``, L2 normalisation, and weight-normed
    prototypes ``Linear(bottleneck_dim, out_dim, bias=False)``, their norms fixed to 1 when
    ``norm_last_layer`` (DINO's default, which keeps training stable).

    forward(x (N, in_dim)) -> (reg_features (N, reg_dim), logits (N, out_dim)).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        reg_dim: int = 8192,
        bottleneck_dim: int = 256,
        out_dim: int = 65536,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            MaskedBatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            MaskedBatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, reg_dim),
        )
        self.bottleneck = nn.Linear(reg_dim, bottleneck_dim)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        weight_g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            weight_g.fill_(1.0)
        weight_g.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor):
        reg_features = self.mlp(x)
        logits = self.last_layer(F.normalize(self.bottleneck(reg_features), dim=-1))
        return reg_features, logits


class DINOLoss(nn.Module):
    """Cross-entropy from the centred, sharpened teacher to the student, over every (teacher view i,
    student view j != i) pair, averaged over pairs and batch; the student views' first
    ``len(teacher_logits)`` entries are the global views, in the teacher's order.

    The centre (a persistent buffer, so checkpoints carry it) moves after each training call:
    ``center = m * center + (1 - m) * mean of the teacher logits`` over all views and ranks.
    """

    def __init__(
        self, out_dim: int, teacher_temp: float = 0.04, student_temp: float = 0.1, center_momentum: float = 0.9
    ):
        super().__init__()
        self.out_dim = out_dim
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def _check(self, student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor]) -> None:
        if not teacher_logits or len(student_logits) < len(teacher_logits):
            raise ValueError(
                f"DINOLoss needs at least one teacher view and a student view for each: got "
                f"{len(teacher_logits)} teacher and {len(student_logits)} student views"
            )
        for kind, views in (("student", student_logits), ("teacher", teacher_logits)):
            for i, view in enumerate(views):
                if view.dim() != 2 or view.size(1) != self.out_dim:
                    raise ValueError(
                        f"DINOLoss {kind}_logits[{i}]: expected (B, {self.out_dim}), got {tuple(view.shape)}"
                    )

    def teacher_probs(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """softmax((t - center) / teacher_temp), no gradient."""
        return F.softmax((teacher_logits.detach().float() - self.center) / self.teacher_temp, dim=-1)

    def forward(self, student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        self._check(student_logits, teacher_logits)
        targets = [self.teacher_probs(t) for t in teacher_logits]
        log_probs = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_logits]
        terms = [
            -(q * log_probs[j]).sum(dim=-1).mean()
            for i, q in enumerate(targets)
            for j in range(len(log_probs))
            if j != i
        ]
        loss = torch.stack(terms).mean()
        if self.training:
            self.update_center(teacher_logits)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: Sequence[torch.Tensor]) -> None:
        rows = torch.cat([t.detach().float() for t in teacher_logits])
        total = rows.sum(dim=0, keepdim=True)
        count = torch.tensor([float(rows.size(0))], device=rows.device)
        if is_distributed():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    @torch.no_grad()
    def teacher_entropy(self, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean entropy (nats) of the teacher's centred, sharpened distributions, with the current
        centre (call before ``forward`` to see what the loss used). Collapse shows as log(out_dim)
        (centring wins: uniform) or 0 (sharpening wins: one prototype)."""
        probs = torch.cat([self.teacher_probs(t) for t in teacher_logits])
        return -(probs * torch.log(probs.clamp(min=1e-30))).sum(dim=-1).mean()


class _GatherRows(torch.autograd.Function):
    """all_gather of equally shaped tensors; the backward sums every rank's gradient for this
    rank's part (RDINO's FullGatherLayer; no all_to_all, which gloo lacks)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        grads = torch.stack(grads)
        dist.all_reduce(grads)
        return grads[dist.get_rank()]


def gather_batch(h: torch.Tensor) -> torch.Tensor:
    """The rows of every rank, concatenated in rank order, differentiable (``h`` when not
    distributed). Ranks may hold different row counts. The backward sums the gradients of every
    rank's copy, so after DDP's average the result is the gradient of the global-batch statistic.

    A gather rather than all-reduced sums: the covariance's sums are D x D (256 MiB at D = 8192)
    while the rows are N x D with N (the global batch) far below D.
    """
    if not is_distributed():
        return h
    count = torch.tensor([h.size(0)], device=h.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = F.pad(h, (0, 0, 0, max(counts) - h.size(0)))
    return torch.cat([part[:n] for part, n in zip(_GatherRows.apply(padded), counts)])


def _centred_global(h: torch.Tensor) -> torch.Tensor:
    x = gather_batch(h.float())
    if x.size(0) < 2:
        raise ValueError(f"the regularizers need at least 2 rows over all ranks, got {x.size(0)}")
    return x - x.mean(dim=0)


def diversity_loss(h: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """RDINO's diversity term (VICReg's variance term): mean over dimensions of
    ``relu(gamma - sqrt(var + eps))``, var the unbiased variance over the global batch of ``h`` (N, D)."""
    std = torch.sqrt(_centred_global(h).var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def redundancy_loss(h: torch.Tensor) -> torch.Tensor:
    """RDINO's redundancy-elimination term (VICReg's covariance term): the squared off-diagonal
    entries of the (unbiased) covariance over the global batch of ``h`` (N, D), summed, over D."""
    x = _centred_global(h)
    cov = x.T @ x / (x.size(0) - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / x.size(1)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward passes ``-scale * grad`` (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x, float(scale))


class GradientReversal(nn.Module):
    """``grad_reverse`` as a layer; ``scale`` is an attribute a schedule may change."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
