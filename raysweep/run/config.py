"""A run's config as users and files see it: flat `key=value` pairs, one per leaf field of a
`core.config.TrialConfig` (`epochs=10`, `dims=64`), and the grid of trials.

`record(config)` is the flat form (the manifest and every Parquet file keep it) and
`trial_config(**values)` builds a config from it. Every value is parsed and checked
here, attacks into `Attack` objects, so that bad input fails before data loads or
Ray starts.

A run is a grid of trials, one per (arch, dataset, seed). `arch` and `dataset`
pair up position by position (a single value pairs with every entry of the
other); seeds multiply the grid.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

from raysweep.choices import SPACES
from raysweep.core.config import TrialConfig
from raysweep.core.threat import PAPER_PGD, parse_attack
from raysweep.errors import UserError


def _keys() -> dict[str, tuple[str, object]]:
    """Every flat key, in the order `--help` and records list them: key -> (part attribute or "", field type)."""
    keys: dict[str, tuple[str, object]] = {}
    for part in dataclasses.fields(TrialConfig):
        kind = typing.get_type_hints(TrialConfig)[part.name]
        if dataclasses.is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            keys.update({f.name: (part.name, hints[f.name]) for f in dataclasses.fields(kind)})
        else:
            keys[part.name] = ("", kind)
    return keys


KEYS = _keys()
_PART_TYPES = {f.name: typing.get_type_hints(TrialConfig)[f.name] for f in dataclasses.fields(TrialConfig)}


def record(config: TrialConfig) -> dict[str, object]:
    """The flat form, one entry per key: what the manifest and the Parquet metadata keep."""
    out: dict[str, object] = {}
    for key, (part, _) in KEYS.items():
        value = getattr(getattr(config, part), key) if part else getattr(config, key)
        if key == "attacks":
            value = "+".join(a.spec for a in value)
        elif key == "spaces":
            value = ",".join(value)
        out[key] = value
    return out


def trial_config(**values: object) -> TrialConfig:
    """A config from flat values (typed, as `record` gives them); keys left out keep their defaults.

    `attacks` may be a '+'-joined spec string or `Attack` objects, `spaces` a comma list or a tuple.
    """
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    top: dict[str, object] = {}
    parts: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        part, _ = KEYS[key]
        if key == "attacks" and isinstance(value, str):
            value = tuple(parse_attack(s) for s in value.split("+") if s.strip())
        elif key == "spaces" and isinstance(value, str):
            value = tuple(s.strip() for s in value.split(",") if s.strip())
        elif key in ("attacks", "spaces"):
            value = tuple(value)  # type: ignore[arg-type]
        (parts.setdefault(part, {}) if part else top)[key] = value
    return TrialConfig(**top, **{part: _PART_TYPES[part](**fields) for part, fields in parts.items()})


def replace(config: TrialConfig, **values: object) -> TrialConfig:
    """The same config with some flat values changed."""
    return trial_config(**{**record(config), **values})


@dataclass(frozen=True)
class SweepConfig:
    """A run: the grid of trials."""

    arch: tuple[str, ...]
    dataset: tuple[str, ...]
    seed: tuple[int, ...]
    trial: TrialConfig = field(default_factory=TrialConfig)  # every other field

    def trials(self) -> list[TrialConfig]:
        if len(self.arch) != len(self.dataset) and 1 not in (len(self.arch), len(self.dataset)):
            raise UserError(
                f"arch has {len(self.arch)} entries and dataset {len(self.dataset)}: they pair up by position, "
                "so give both the same count, or one of them a single value"
            )
        n = max(len(self.arch), len(self.dataset))
        pairs = zip(self.arch * (n // len(self.arch)), self.dataset * (n // len(self.dataset)))
        trials = [replace(self.trial, arch=a, dataset=d, seed=s) for a, d in pairs for s in self.seed]
        names = [t.name for t in trials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"the grid holds trial {twice[0]} twice: give each (arch, dataset) pair once")
        return trials

    def record(self) -> dict[str, object]:
        """The grid and the template trial, flat (the manifest's `sweep`)."""
        return {"arch": list(self.arch), "dataset": list(self.dataset), "seed": list(self.seed), "trial": record(self.trial)}


GRID_KEYS = ("arch", "dataset", "seed")
RUN_KEYS = ("storage",)  # where the run directory lives (a path or a pyarrow filesystem URI); same as --out


def trial_configs(run_manifest: dict) -> list[TrialConfig]:
    """The trials a run's manifest lists."""
    return [trial_config(**values) for values in run_manifest["trials"].values()]


def parse_overrides(items: typing.Iterable[str]) -> dict[str, str]:
    """`key=value` strings to a dict; unknown keys name the valid ones."""
    valid = (*GRID_KEYS, *(k for k in KEYS if k not in GRID_KEYS), *RUN_KEYS)
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value, e.g. epochs=10")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown key {key!r} in {item!r}{hint}; valid keys: {', '.join(valid)}")
        out[key] = value.strip()
    return out


def convert(key: str, text: str) -> object:
    """Parse one override by its field's type; `none`/`all` unset an optional field (an empty value
    is refused: `dims=` must not quietly mean every dimension)."""
    kind = KEYS[key][1]
    if key in ("attacks", "spaces"):
        if not text.strip():
            example = f"attack, e.g. attacks={PAPER_PGD} (several joined by '+')" if key == "attacks" else \
                f"space, e.g. spaces={','.join(SPACES)}"
            raise UserError(f"{key}= is empty: give at least one {example}")
        return text
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if text == "":
            unset = "dims=all for every dimension" if key == "dims" else f"{key}=none to unset it"
            raise UserError(f"{key}= is empty: give a value, or {unset}")
        if text.lower() in ("none", "all"):
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)  # type: ignore[operator]
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        example = {"int": "a whole number, e.g. 3", "float": "a number, e.g. 0.001", "bool": "true or false"}.get(name, name)
        raise UserError(f"{key}={text!r} is not a valid {name}: give {example}") from None
