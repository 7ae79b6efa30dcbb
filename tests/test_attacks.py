"""PGD / FGSM contracts, closed forms on linear models, and attack specs.

torchattacks is not installed here, so there is no statistical comparison with
its PGD; the closed forms below pin the same update rule instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from raysweep.core import models
from raysweep.attacks import Attack, accuracy, fgsm, parse_attack, perturb, pgd, robust_accuracy
from raysweep.choices import ATTACKS
from raysweep.errors import UserError

SHAPE = (1, 4, 5)  # one input of the linear test models: 20 pixels
EPS = 0.1


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _linear_model() -> nn.Sequential:
    """Two-class logistic regression on flattened inputs: logits = W x + b."""
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 2))


def _linear_worst_case(
    model: nn.Sequential, x: Tensor, y: Tensor, lo: Tensor | float, hi: Tensor | float
) -> Tensor:
    """clip(x + eps * sign(w_other - w_y), lo, hi): for two linear logits
    grad_x CE = (1 - p_y)(w_other - w_y), whose sign does not depend on x."""
    weight = model[1].weight.detach()
    direction = (weight[1 - y] - weight[y]).sign().view(-1, *SHAPE)
    return torch.clamp(x + EPS * direction, lo, hi)


def _box() -> tuple[Tensor, Tensor]:
    """Per-pixel bounds shaped like one input, with a gap of at least 0.3."""
    lo = 0.3 * torch.rand(SHAPE)
    return lo, lo + 0.3 + 0.4 * torch.rand(SHAPE)


def _inside(lo: Tensor | float, hi: Tensor | float, n: int = 16) -> Tensor:
    return lo + (torch.as_tensor(hi) - lo) * torch.rand(n, *SHAPE)


def _labels(n: int = 16) -> Tensor:
    return torch.randint(0, 2, (n,))


def _bn_model() -> nn.Sequential:
    """A small nonlinear model whose BatchNorm makes train and eval mode differ."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(20, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)
    )


ATTACK_FUNCTIONS = {
    "pgd": lambda model, x, y, lo, hi: pgd(
        model, x, y, eps=EPS, alpha=EPS / 4, steps=4, lo=lo, hi=hi
    ),
    "fgsm": lambda model, x, y, lo, hi: fgsm(model, x, y, eps=EPS, lo=lo, hi=hi),
}


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("tensor_box", [False, True])
def test_attack_stays_in_eps_ball_and_box(name: str, tensor_box: bool) -> None:
    model = _bn_model()
    lo, hi = _box() if tensor_box else (0.0, 1.0)
    x, y = _inside(lo, hi), _labels()
    x_adv = ATTACK_FUNCTIONS[name](model, x, y, lo, hi)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert (x_adv >= lo).all() and (x_adv <= hi).all()
    assert not x_adv.requires_grad


def test_pgd_clips_the_random_start_to_the_box() -> None:
    # With zero steps the result is the random start itself; x on the box edge
    # makes half of the raw noise fall outside the box.
    x = torch.zeros(64, *SHAPE)
    start = pgd(_linear_model(), x, _labels(64), eps=EPS, alpha=EPS, steps=0)
    assert start.min() >= 0.0 and start.max() <= EPS
    assert start.max() > 0.0


@pytest.mark.parametrize("tensor_box", [False, True])
def test_pgd_without_random_start_reaches_linear_closed_form(tensor_box: bool) -> None:
    model = _linear_model()
    lo, hi = _box() if tensor_box else (0.0, 1.0)
    x, y = _inside(lo, hi), _labels()
    # steps * alpha = 0.12 >= eps: the constant gradient sign drives every pixel to the ball's face.
    x_adv = pgd(model, x, y, eps=EPS, alpha=0.03, steps=4, random_start=False, lo=lo, hi=hi)
    assert torch.equal(x_adv, _linear_worst_case(model, x, y, lo, hi))


def test_pgd_with_random_start_reaches_linear_closed_form() -> None:
    model = _linear_model()
    x, y = _inside(0.0, 1.0), _labels()
    # steps * alpha = 0.25 >= 2 eps: enough to cross the ball from any start.
    generator = torch.Generator().manual_seed(1)
    x_adv = pgd(model, x, y, eps=EPS, alpha=0.05, steps=5, generator=generator)
    assert torch.equal(x_adv, _linear_worst_case(model, x, y, 0.0, 1.0))


def test_fgsm_is_one_signed_gradient_step_in_eval_mode() -> None:
    model = _bn_model()
    model(torch.rand(32, *SHAPE))  # gives BatchNorm running statistics unlike batch ones
    model.train()
    lo, hi = _box()
    x, y = _inside(lo, hi), _labels()
    model.eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_req), y), x_req)
    model.train()
    expected = torch.clamp(x + EPS * grad.sign(), lo, hi)
    assert torch.equal(fgsm(model, x, y, eps=EPS, lo=lo, hi=hi), expected)


def test_fgsm_on_linear_model_matches_closed_form() -> None:
    model = _linear_model()
    x, y = _inside(0.0, 1.0), _labels()
    assert torch.equal(fgsm(model, x, y, eps=EPS), _linear_worst_case(model, x, y, 0.0, 1.0))


def test_zero_budget_returns_the_clean_input() -> None:
    x, y = _inside(0.0, 1.0), _labels()
    assert torch.equal(pgd(_bn_model(), x, y, eps=0.0, alpha=0.01, steps=3), x)


def test_pgd_random_start_is_reproducible_from_the_generator() -> None:
    model, x, y = _bn_model(), _inside(0.0, 1.0), _labels()

    def run(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pgd(model, x, y, eps=EPS, alpha=0.01, steps=1, generator=generator)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_restores_training_flag(name: str, training: bool) -> None:
    model = _bn_model().train(training)
    running_mean = model[2].running_mean.clone()
    ATTACK_FUNCTIONS[name](model, _inside(0.0, 1.0), _labels(), 0.0, 1.0)
    assert all(m.training is training for m in model.modules())
    # Eval mode during the attack: BatchNorm statistics are left alone.
    assert torch.equal(model[2].running_mean, running_mean)


def test_attack_restores_mixed_submodule_flags() -> None:
    model = _bn_model().train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    pgd(model, _inside(0.0, 1.0), _labels(), eps=EPS, alpha=0.01, steps=2)
    assert model.training and not model[2].training and model[1].training


class _Exploding(nn.Module):
    """Records the mode it was called in, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(20, 2)
        self.called_in_training: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.called_in_training = self.training
        raise RuntimeError("boom")


@pytest.mark.parametrize("training", [True, False])
def test_attack_restores_training_flag_when_model_raises(training: bool) -> None:
    model = _Exploding().train(training)
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, _inside(0.0, 1.0), _labels(), eps=EPS, alpha=0.01, steps=2)
    assert model.called_in_training is False
    assert model.training is training and model.linear.training is training


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_leaves_parameter_grads_none(name: str) -> None:
    model = _bn_model()
    ATTACK_FUNCTIONS[name](model, _inside(0.0, 1.0), _labels(), 0.0, 1.0)
    attack = parse_attack("pgd:eps=0.1,alpha=0.05,steps=2")
    robust_accuracy(model, _inside(0.0, 1.0), _labels(), attack)
    assert all(p.grad is None for p in model.parameters())


def test_robust_accuracy_never_exceeds_clean_accuracy() -> None:
    model = models.build("mnist_conv3")
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    clean = accuracy(model, x, y, batch_size=16)
    specs = ("pgd:eps=8/255,alpha=2/255,steps=4", "fgsm:eps=0.1", "pgd:eps=0,alpha=0.01,steps=1")
    for spec in specs:
        assert robust_accuracy(model, x, y, parse_attack(spec), batch_size=16) <= clean
    assert robust_accuracy(model, x, y, parse_attack("fgsm:eps=0"), batch_size=16) == clean


def test_robust_accuracy_of_linear_model_matches_worst_case_margin() -> None:
    # A perfectly accurate linear classifier: logits (0, w.x - c), label [w.x > c].
    w = 0.25 * torch.randn(20)  # small logits: no saturated softmax, so no zero gradients
    x = torch.rand(400, *SHAPE)
    c = float((x.flatten(1) @ w).median())
    model = _linear_model()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(20), w]))
        model[1].bias.copy_(torch.tensor([0.0, -c]))
    margin = x.flatten(1) @ w - c
    y = (margin > 0).long()
    # The worst point of ball and box moves every pixel against the margin, as far as
    # the box allows.
    worst = _linear_worst_case(model, x, y, 0.0, 1.0)
    robust = int(((worst.flatten(1) @ w - c > 0).long() == y).sum()) / len(x)
    assert accuracy(model, x, y) == 1.0
    assert 0.0 < robust < 1.0
    # steps * alpha = 0.25 >= 2 eps: PGD reaches the worst point from any random start.
    attack = parse_attack(f"pgd:eps={EPS},alpha=0.05,steps=5")
    assert robust_accuracy(model, x, y, attack, batch_size=64) == robust


def test_accuracy_is_independent_of_batch_size_and_restores_mode() -> None:
    model = _bn_model().train()
    x, y = _inside(0.0, 1.0, n=50), _labels(50)
    assert accuracy(model, x, y, batch_size=7) == accuracy(model, x, y)
    assert model.training


def test_accuracy_rejects_empty_input() -> None:
    with pytest.raises(UserError, match="non-empty"):
        accuracy(_bn_model(), torch.rand(0, *SHAPE), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pgd:eps=8/255,alpha=2/255,steps=4", Attack("pgd", 8 / 255, 2 / 255, 4)),
        ("pgd: eps=0.1, alpha=0.025, steps=4", Attack("pgd", 0.1, 0.025, 4)),
        ("fgsm:eps=0.1", Attack("fgsm", 0.1, 0.1, 1)),
        ("fgsm:eps=1e-3", Attack.fgsm(0.001)),
    ],
)
def test_parse_attack_reads_specs_and_round_trips(spec: str, expected: Attack) -> None:
    attack = parse_attack(spec)
    assert attack == expected
    assert parse_attack(attack.spec) == attack


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cw:eps=0.1", "unknown or malformed attack 'cw:eps=0.1'"),
        ("garbage", "unknown or malformed attack 'garbage'"),
        ("pgd:eps=-0.1,alpha=0.01,steps=4", "eps must be a finite number >= 0"),
        ("pgd:eps=0.1,alpha=0.01,steps=0", "steps must be an integer >= 1"),
        ("pgd:eps=0.1,alpha=0.01,steps=2.5", "steps must be an integer"),
        ("pgd:eps=0.1,alpha=0,steps=4", "alpha must be a finite number > 0"),
        ("pgd:eps=0.1", "needs exactly the keys eps, alpha, steps"),
        ("fgsm:eps=0.1,steps=2", "needs exactly the keys eps"),
        ("pgd:eps=0.1,eps=0.2,alpha=0.01,steps=4", "malformed attack"),
        ("pgd:eps=0.1,alpha,steps=4", "malformed attack"),
        ("pgd:eps=abc,alpha=0.01,steps=4", "bad eps='abc'"),
        ("pgd:eps=1/0,alpha=0.01,steps=4", "bad eps='1/0'"),
        ("fgsm:eps=__import__('os').getcwd()", "bad eps="),
    ],
)
def test_parse_attack_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_attack(spec)


def test_attack_rejects_inconsistent_fields() -> None:
    with pytest.raises(UserError, match="fgsm takes one step of size eps"):
        Attack("fgsm", 0.1, 0.2, 1)
    with pytest.raises(UserError, match="steps must be an integer >= 1"):
        Attack("pgd", 0.1, 0.01, True)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown attack 'cw'"):
        Attack("cw", 0.1, 0.01, 4)


def test_scaled_multiplies_eps_and_alpha() -> None:
    assert Attack("pgd", 0.1, 0.025, 4).scaled(2.0) == Attack("pgd", 0.2, 0.05, 4)
    assert Attack.fgsm(0.1).scaled(3.0) == Attack.fgsm(0.1 * 3.0)
    with pytest.raises(UserError, match="scale factor must be a finite number > 0"):
        Attack.fgsm(0.1).scaled(0.0)


def test_perturb_dispatches_to_pgd_and_fgsm() -> None:
    lo, hi = _box()
    model, x, y = _bn_model(), _inside(lo, hi), _labels()
    got_pgd = perturb(Attack("pgd", EPS, 0.01, 3), model, x, y, lo=lo, hi=hi, generator=torch.Generator().manual_seed(5))
    expected_pgd = pgd(
        model, x, y, eps=EPS, alpha=0.01, steps=3, lo=lo, hi=hi,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(got_pgd, expected_pgd)
    got_fgsm = perturb(Attack.fgsm(EPS), model, x, y, lo=lo, hi=hi)
    assert torch.equal(got_fgsm, fgsm(model, x, y, eps=EPS, lo=lo, hi=hi))
