"""RDINO's pieces on hand-computed cases: DINO loss, centring, sharpening, both regularizers,
gradient reversal, the cosine ramp, the head; and their statistics across 2 gloo ranks."""

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audio_ssl_ext.modules.collapse import mean_channel_std
from audio_ssl_ext.modules.dino import (
    DINOHead,
    DINOLoss,
    GradientReversal,
    diversity_loss,
    grad_reverse,
    redundancy_loss,
)
from audio_ssl_ext.modules.ecapa import MaskedBatchNorm1d


def numpy_dino_loss(students, teachers, center, teacher_temp, student_temp):
    """The loss written out with explicit loops over views, rows and classes."""

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    terms = []
    for i, t in enumerate(teachers):
        for j, s in enumerate(students):
            if i == j:
                continue
            per_row = []
            for row in range(t.shape[0]):
                q = softmax((t[row] - center) / teacher_temp)
                log_p = np.log(softmax(s[row] / student_temp))
                per_row.append(-sum(q[k] * log_p[k] for k in range(len(q))))
            terms.append(np.mean(per_row))
    return np.mean(terms)


def test_uniform_teacher_and_flat_student_cost_log_k():
    loss = DINOLoss(3)
    flat = [torch.zeros(2, 3) for _ in range(3)]
    # q = (1/3, 1/3, 1/3) and log p = -log 3 everywhere: every pair costs log 3
    assert loss(flat, flat[:2]).item() == pytest.approx(math.log(3), abs=1e-6)


def test_dino_loss_on_a_2x3_case_matches_numpy_and_skips_same_view_pairs():
    students = [
        torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]]),  # global view 0
        torch.tensor([[-0.1, 0.2, 0.4], [0.3, 0.3, -0.2]]),  # global view 1
        torch.tensor([[0.2, 0.0, -0.3], [-0.5, 0.1, 0.2]]),  # a local view
    ]
    teachers = [
        torch.tensor([[0.05, -0.02, 0.01], [0.00, 0.03, -0.04]]),
        torch.tensor([[-0.01, 0.02, 0.04], [0.03, 0.01, -0.02]]),
    ]
    loss = DINOLoss(3, teacher_temp=0.04, student_temp=0.1)
    loss.center.copy_(torch.tensor([[0.01, -0.01, 0.02]]))
    expected = numpy_dino_loss(
        [s.double().numpy() for s in students], [t.double().numpy() for t in teachers],
        np.array([0.01, -0.01, 0.02]), 0.04, 0.1,
    )
    assert loss(students, teachers).item() == pytest.approx(expected, rel=1e-5)
    # with the student's global views equal to the teacher's distributions the same-view pairs
    # would be the cheapest; dropping them must change the answer: swapping the global views does
    swapped = [students[1], students[0], students[2]]
    loss.center.copy_(torch.tensor([[0.01, -0.01, 0.02]]))
    assert loss(swapped, teachers).item() != pytest.approx(expected, rel=1e-5)


def test_only_the_student_gets_gradients():
    student = [torch.randn(2, 5, requires_grad=True) for _ in range(4)]
    teacher = [torch.randn(2, 5, requires_grad=True) for _ in range(2)]
    DINOLoss(5)(student, teacher).backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher)


def test_centre_moves_by_momentum_toward_the_teacher_mean_in_training_only():
    loss = DINOLoss(3, center_momentum=0.9)
    teachers = [torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([[0.0, 4.0, 8.0], [0.0, 0.0, 0.0]])]
    students = [torch.zeros(2, 3)] * 2
    loss(students, teachers)
    # mean of the 4 teacher rows = (1, 2, 3); centre = 0.9 * 0 + 0.1 * (1, 2, 3)
    torch.testing.assert_close(loss.center, torch.tensor([[0.1, 0.2, 0.3]]))
    loss(students, teachers)
    torch.testing.assert_close(loss.center, torch.tensor([[0.19, 0.38, 0.57]]))
    loss.eval()
    loss(students, teachers)
    torch.testing.assert_close(loss.center, torch.tensor([[0.19, 0.38, 0.57]]))
    assert "center" in loss.state_dict()  # checkpointed with the model


def test_centring_shifts_the_teacher_target():
    loss = DINOLoss(2, teacher_temp=1.0)
    logits = torch.tensor([[1.0, 0.0]])
    loss.center.copy_(torch.tensor([[1.0, 0.0]]))
    # (1, 0) - (1, 0) = (0, 0): centring removes the teacher's preference entirely
    torch.testing.assert_close(loss.teacher_probs(logits), torch.tensor([[0.5, 0.5]]))


def test_sharpening_lowers_the_teacher_entropy_toward_one_hot():
    logits = [torch.tensor([[1.0, 0.5, 0.0]])]
    entropies = []
    for temp in (10.0, 1.0, 0.1, 0.01):
        loss = DINOLoss(3, teacher_temp=temp)
        entropies.append(loss.teacher_entropy(logits).item())
    assert entropies == sorted(entropies, reverse=True)
    assert entropies[-1] < 1e-6  # 0.5 / 0.01 = 50 nats apart: one-hot on the first prototype
    probs_at_1 = torch.softmax(torch.tensor([1.0, 0.5, 0.0]), 0)
    assert entropies[1] == pytest.approx(float(-(probs_at_1 * probs_at_1.log()).sum()), rel=1e-6)
    # equal logits: uniform whatever the temperature, entropy log K
    assert DINOLoss(3).teacher_entropy([torch.ones(4, 3)]).item() == pytest.approx(math.log(3), rel=1e-6)


def test_view_lists_are_checked():
    loss = DINOLoss(3)
    with pytest.raises(ValueError, match="teacher"):
        loss([torch.zeros(2, 3)], [torch.zeros(2, 3)] * 2)
    with pytest.raises(ValueError, match=r"student_logits\[1\].*\(B, 3\)"):
        loss([torch.zeros(2, 3), torch.zeros(2, 4)], [torch.zeros(2, 3)])


def test_diversity_loss_hinges_each_dimension_std():
    h = torch.tensor([[0.0, 5.0], [2.0, 5.0]])
    # dim 0: unbiased var 2, std sqrt(2.0001) > 1, no cost; dim 1: var 0, std sqrt(1e-4) = 0.01
    assert diversity_loss(h).item() == pytest.approx((0 + (1 - 0.01)) / 2, rel=1e-6)
    assert diversity_loss(h, gamma=2.0).item() == pytest.approx(((2 - math.sqrt(2.0001)) + (2 - 0.01)) / 2, rel=1e-6)


def test_redundancy_loss_is_the_off_diagonal_covariance():
    # perfectly correlated: cov = [[2, 2], [2, 2]] (N - 1 = 1); off-diagonal 2^2 + 2^2 = 8, / D = 2
    assert redundancy_loss(torch.tensor([[1.0, 1.0], [-1.0, -1.0]])).item() == pytest.approx(4.0)
    # uncorrelated: cov = diag(2/3, 2/3), nothing off the diagonal
    h = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert redundancy_loss(h).item() == pytest.approx(0.0, abs=1e-7)
    # a shift changes nothing (centred): x = (3, 5, 7), y = (1, 1, 4) -> cov_xy = 3, / D = 2 -> 2 * 9 / 2
    assert redundancy_loss(torch.tensor([[3.0, 1.0], [5.0, 1.0], [7.0, 4.0]])).item() == pytest.approx(9.0)


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(3, 4, requires_grad=True)
    upstream = torch.randn(3, 4)
    y = grad_reverse(x, 0.3)
    torch.testing.assert_close(y, x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -0.3 * upstream)
    x.grad = None
    GradientReversal(2.0)(x).backward(upstream)
    torch.testing.assert_close(x.grad, -2.0 * upstream)


def test_head_shapes_unit_prototypes_and_frozen_norms():
    torch.manual_seed(0)
    head = DINOHead(12, hidden_dim=16, reg_dim=32, bottleneck_dim=8, out_dim=20)
    reg, logits = head(torch.randn(5, 12))
    assert reg.shape == (5, 32) and logits.shape == (5, 20)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(20))
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    # logits are cosines between a unit vector and unit prototypes
    assert logits.abs().max() <= 1 + 1e-5
    free = DINOHead(12, 16, 32, 8, 20, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


# --- two gloo ranks: the statistics are those of the concatenated batch -------------------------


def global_batches():
    generator = torch.Generator().manual_seed(0)
    # unequal per-rank batches (3 and 5 rows), as dynamic batching gives
    return [torch.randn(3, 4, generator=generator) * 2 + 1, torch.randn(5, 4, generator=generator)]


def _rank_main(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        local = global_batches()[rank]
        results = {}

        loss = DINOLoss(4)
        loss([local, local], [local, local * 0.5])
        results["center"] = loss.center.clone()

        for name, fn in (("diversity", lambda h: diversity_loss(h, gamma=3.0)), ("redundancy", redundancy_loss)):
            h = local.clone().requires_grad_(True)
            value = fn(h)
            value.backward()
            results[name], results[name + "_grad"] = value.detach(), h.grad

        results["channel_std"] = mean_channel_std(local)  # the collapse guards' statistic

        bn = MaskedBatchNorm1d(4)
        h = local.clone().requires_grad_(True)
        y = bn(h)
        (y * torch.arange(1.0, 5.0)).pow(2).sum().backward()
        results.update(bn_out=y.detach(), bn_mean=bn.running_mean, bn_var=bn.running_var, bn_grad=h.grad)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_statistics_are_all_reduced_across_two_ranks(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    batches = global_batches()
    whole = torch.cat(batches)

    loss = DINOLoss(4)
    loss([whole, whole], [whole, whole * 0.5])
    for r in range(2):
        torch.testing.assert_close(ranks[r]["center"], loss.center)
        torch.testing.assert_close(ranks[r]["channel_std"], mean_channel_std(whole))

    # the loss of the whole batch; each rank's gradient is world_size x its slice of the whole
    # batch's gradient, which DDP's average over ranks turns into the true one
    rows = [slice(0, 3), slice(3, 8)]
    for name, fn in (("diversity", lambda h: diversity_loss(h, gamma=3.0)), ("redundancy", redundancy_loss)):
        h = whole.clone().requires_grad_(True)
        value = fn(h)
        value.backward()
        for r in range(2):
            torch.testing.assert_close(ranks[r][name], value.detach(), msg=name)
            torch.testing.assert_close(ranks[r][name + "_grad"], 2 * h.grad[rows[r]], msg=name)

    bn = MaskedBatchNorm1d(4)
    h = whole.clone().requires_grad_(True)
    y = bn(h)
    (y * torch.arange(1.0, 5.0)).pow(2).sum().backward()
    for r in range(2):
        torch.testing.assert_close(ranks[r]["bn_out"], y.detach()[rows[r]])
        torch.testing.assert_close(ranks[r]["bn_mean"], bn.running_mean)
        torch.testing.assert_close(ranks[r]["bn_var"], bn.running_var)
        # BN's loss here is a sum over ranks' rows: each rank's gradient is its slice of the whole
        # (the shared statistics carry the other rank's part through the all-reduce's backward)
        torch.testing.assert_close(ranks[r]["bn_grad"], h.grad[rows[r]], rtol=1e-4, atol=1e-4)
