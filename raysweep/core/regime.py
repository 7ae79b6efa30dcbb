"""How a trial trains, without running it (SPEC 7): the field `training`.

``standard`` trains on clean inputs. ``pgd:eps=..,alpha=..,steps=..`` trains on PGD examples
crafted against the current weights (Madry et al., ICLR 2018): min_θ E max_{‖δ‖∞≤ε} CE(f(x+δ), y).
``trades:eps=..,alpha=..,steps=..,beta=..`` (Zhang et al., ICML 2019, their Eq. 5, beta = 6 in
the paper) minimises CE(f(x), y) + β · KL(f(x) ‖ f(x')), x' crafted to maximise that KL.
Numbers as in attack specs (0.1, 8/255). Plain Python, so a config checks it before torch loads;
`core.train` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raysweep.choices import REGIMES
from raysweep.core.threat import MNIST_PGD, Attack, parse_attack, parse_number
from raysweep.errors import UserError

STANDARD = "standard"
MNIST_TRADES = "trades:eps=0.1,alpha=0.025,steps=4,beta=6"  # TRADES at the paper's MNIST budget, Zhang et al.'s beta
_FORMAT = f"standard, {MNIST_PGD} or {MNIST_TRADES}"


@dataclass(frozen=True)
class Regime:
    """A training regime: `name` in REGIMES; the attack that crafts its training examples (pgd, trades)
    and TRADES' weight beta on the KL term."""

    name: str
    attack: Attack | None = None
    beta: float = 0.0


def parse_regime(spec: str) -> Regime:
    """Parse `standard`, `pgd:eps=..,alpha=..,steps=..` or `trades:eps=..,alpha=..,steps=..,beta=..`."""
    text = spec.strip()
    name, _, body = text.partition(":")
    if text == STANDARD:
        return Regime(STANDARD)
    if name not in REGIMES or name == STANDARD or not body:
        raise UserError(f"training={spec!r}: write it as {_FORMAT}")
    beta = 0.0
    if name == "trades":
        items = [item for item in body.split(",") if item.strip()]
        betas = [item for item in items if item.partition("=")[0].strip() == "beta"]
        if len(betas) != 1:
            raise UserError(f"training={spec!r}: trades needs beta once, e.g. {MNIST_TRADES}")
        beta = float(parse_number("beta", betas[0].partition("=")[2], spec))
        if not (math.isfinite(beta) and beta >= 0):
            raise UserError(f"training={spec!r}: beta must be a finite number >= 0")
        body = ",".join(item for item in items if item not in betas)
    try:
        attack = parse_attack(f"pgd:{body}")
    except UserError as exc:
        raise UserError(f"training={spec!r}: {exc}; write it as {_FORMAT}") from None
    return Regime(name, attack, beta)
