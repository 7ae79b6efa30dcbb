"""`raysweep.attacks.pgd` and `fgsm`, the attacks' public names (SPEC 1.6); they live in `raysweep.core.attacks`."""

from raysweep.core.attacks import accuracy, fgsm, perturb, pgd, robust_accuracy
from raysweep.core.threat import Attack, parse_attack

__all__ = ["Attack", "accuracy", "fgsm", "parse_attack", "perturb", "pgd", "robust_accuracy"]
