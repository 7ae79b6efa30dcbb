"""What an attack is, without running it: an L-inf threat model and its spec strings.

``pgd:eps=8/255,alpha=2/255,steps=4`` or ``fgsm:eps=0.1``: a name, a budget eps, a step
alpha and a number of steps (SPEC 1.6). Plain Python, so a config parses and checks
its attacks before torch loads; `attacks.perturb` runs one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

from raysweep.choices import ATTACKS
from raysweep.errors import UserError

PAPER_PGD = "pgd:eps=8/255,alpha=2/255,steps=4"  # paper Fig. 2 (the torchattacks PGD example)
MNIST_PGD = "pgd:eps=0.1,alpha=0.025,steps=4"  # paper Fig. 1
_SPEC_FORMAT = "'pgd:eps=8/255,alpha=2/255,steps=4' or 'fgsm:eps=0.1'"
_KEYS = {"pgd": ("eps", "alpha", "steps"), "fgsm": ("eps",)}


@dataclass(frozen=True)
class Attack:
    """An L-inf attack: ``name`` in ATTACKS, budget ``eps`` and step ``alpha`` in
    input units, ``steps`` gradient steps (FGSM: alpha = eps, steps = 1)."""

    name: str
    eps: float
    alpha: float
    steps: int
    source: str = field(default="", compare=False)  # the spec as the user wrote it (8/255 stays 8/255)

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise UserError(f"unknown attack {self.name!r}: use one of {', '.join(ATTACKS)}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise UserError(f"attack eps must be a finite number >= 0, got {self.eps}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"attack steps must be an integer >= 1, got {self.steps!r}")
        if self.name == "fgsm" and (self.alpha != self.eps or self.steps != 1):
            raise UserError("fgsm takes one step of size eps: use alpha=eps, steps=1, or use pgd")
        if self.name == "pgd" and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UserError(f"pgd alpha must be a finite number > 0, got {self.alpha}")

    @classmethod
    def fgsm(cls, eps: float) -> Attack:
        """FGSM with budget eps."""
        return cls("fgsm", eps, eps, 1)

    @property
    def spec(self) -> str:
        """The `parse_attack` string for this attack: as written, else with floats written exactly."""
        if self.source:
            return self.source
        if self.name == "fgsm":
            return f"fgsm:eps={self.eps!r}"
        return f"pgd:eps={self.eps!r},alpha={self.alpha!r},steps={self.steps}"

    def scaled(self, factor: float) -> Attack:
        """The same attack with eps and alpha multiplied by factor > 0.

        Used to carry a pixel budget into feature space, where the units differ.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise UserError(f"attack scale factor must be a finite number > 0, got {factor}")
        return replace(self, eps=self.eps * factor, alpha=self.alpha * factor, source="")  # its own numbers now


def parse_number(key: str, text: str, spec: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise UserError(
            f"bad {key}={text!r} in attack {spec!r}: write numbers like 0.1 or 8/255, "
            f"e.g. {_SPEC_FORMAT}"
        ) from None


def _parse_fields(body: str, spec: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in body.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or key in fields:
            raise UserError(f"malformed attack {spec!r}: write it as {_SPEC_FORMAT}")
        fields[key] = value
    return fields


def parse_attack(spec: str) -> Attack:
    """Parse ``pgd:eps=8/255,alpha=2/255,steps=4`` or ``fgsm:eps=0.1``.

    Numbers are decimals or fractions (read with `fractions.Fraction`, never
    evaluated); pgd needs all three keys, fgsm only eps. Inverse of `Attack.spec`.
    """
    name, sep, body = spec.partition(":")
    name = name.strip()
    if name not in ATTACKS or not sep:
        raise UserError(f"unknown or malformed attack {spec!r}: write it as {_SPEC_FORMAT}")
    fields = _parse_fields(body, spec)
    if set(fields) != set(_KEYS[name]):
        keys = ", ".join(_KEYS[name])
        raise UserError(f"attack {spec!r} needs exactly the keys {keys}: e.g. {_SPEC_FORMAT}")
    eps = float(parse_number("eps", fields["eps"], spec))
    if name == "fgsm":
        return Attack("fgsm", eps, eps, 1, source=spec.strip())
    steps = parse_number("steps", fields["steps"], spec)
    if steps.denominator != 1:
        raise UserError(f"attack steps must be an integer, got {fields['steps']!r} in {spec!r}")
    return Attack("pgd", eps, float(parse_number("alpha", fields["alpha"], spec)), int(steps), source=spec.strip())
