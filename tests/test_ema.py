"""EMATeacher: the linear decay schedule, the EMA rule, once per update, fp32, strict state."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from audio_ssl_ext.modules.ema import EMATeacher, ema_decay_at
from audio_ssl_ext.modules.schedules import cosine_ramp, linear_ramp


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.pos = nn.Linear(3, 3)  # stands for data2vec's positional conv: copied, not averaged

    def forward(self, x):
        return self.pos(torch.tanh(self.body(x)))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.999),
        (1, 0.999 + 0.0009 * 1 / 30000),
        (7500, 0.999225),
        (15000, 0.99945),
        (29999, 0.999 + 0.0009 * 29999 / 30000),
        (30000, 0.9999),
        (400000, 0.9999),
    ],
)
def test_decay_schedule_is_linear_then_constant(step, expected):
    # music2vec base: 0.999 -> 0.9999 over the first 30k updates, then constant
    assert ema_decay_at(step, 0.999, 0.9999, 30000) == pytest.approx(expected, abs=1e-12)


def test_decay_schedule_without_anneal_is_the_end_decay():
    assert ema_decay_at(0, 0.996, 1.0, 0) == 1.0


def sgd_step(student, seed):
    generator = torch.Generator().manual_seed(seed)
    loss = student(torch.randn(5, 4, generator=generator)).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 0.1 * p.grad
            p.grad = None


def test_teacher_moves_once_per_update_by_the_ema_rule_and_never_gets_gradients():
    torch.manual_seed(0)
    student = Student()
    teacher = EMATeacher(student, 0.5, 0.9, 4, skip_keys=["pos.weight", "pos.bias"])
    expected = {k: v.detach().clone() for k, v in student.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.model.parameters())

    for update in range(1, 7):
        sgd_step(student, update)
        for _ in range(3):  # update_freq=3: every micro-batch reports the same update count
            teacher.update(student, update)
            teacher.model(torch.randn(2, 4)).sum()  # a teacher forward builds no graph
        decay = 0.5 + 0.4 * min(update / 4, 1.0)
        for name, value in student.state_dict().items():
            if name.startswith("pos."):
                expected[name] = value.clone()
            else:
                expected[name] = decay * expected[name] + (1 - decay) * value
        assert teacher.num_updates == update
        assert teacher.decay == pytest.approx(decay)
        for name, value in teacher.model.state_dict().items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    assert all(p.grad is None for p in teacher.model.parameters())


def test_teacher_keeps_fp32_masters_when_the_student_is_half():
    torch.manual_seed(0)
    student = Student()
    teacher = EMATeacher(student, 0.9999, 0.9999, 0)
    before = teacher.state_dict()["params.body.weight"].clone()
    student.half()
    with torch.no_grad():
        student.body.weight.add_(1.0)
    teacher.update(student, 1)
    after = teacher.state_dict()["params.body.weight"]
    assert after.dtype == torch.float32
    assert next(teacher.model.parameters()).dtype == torch.float16  # runs like the student
    # a 1e-4 step is below fp16 resolution near 1; the fp32 master keeps it
    torch.testing.assert_close(after - before, torch.full_like(before, 1e-4), rtol=0, atol=1e-6)


def test_state_round_trip_and_strict_load():
    torch.manual_seed(0)
    student = Student()
    teacher = EMATeacher(student, 0.9, 0.99, 10)
    sgd_step(student, 1)
    teacher.update(student, 3)
    state = copy.deepcopy(teacher.state_dict())

    restored = EMATeacher(Student(), 0.9, 0.99, 10)
    restored.load_state_dict(state)
    assert restored.num_updates == 3
    for (name, a), b in zip(teacher.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not restored.update(student, 3)  # already absorbed

    del state["params.body.bias"]
    with pytest.raises(KeyError, match="missing.*params.body.bias"):
        restored.load_state_dict(state)


def test_unknown_skip_key_is_refused():
    with pytest.raises(KeyError, match="pos_conv.weight"):
        EMATeacher(Student(), 0.9, 0.99, 10, skip_keys=["pos_conv.weight"])


def test_cosine_ramp_end_points_and_midpoint():
    assert cosine_ramp(0.996, 1.0, 0, 1000) == pytest.approx(0.996)
    assert cosine_ramp(0.996, 1.0, 500, 1000) == pytest.approx(0.998)
    assert cosine_ramp(0.996, 1.0, 1000, 1000) == 1.0
    assert cosine_ramp(0.996, 1.0, 5000, 1000) == 1.0
    assert cosine_ramp(0.05, 0.2, 250, 1000) == pytest.approx(0.2 - 0.075 * (1 + math.cos(math.pi / 4)))
    assert cosine_ramp(0.05, 0.2, 0, 0) == 0.2
    assert linear_ramp(0.05, 0.2, 5, 10) == pytest.approx(0.125)
