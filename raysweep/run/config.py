"""A run's config as users and files see it: flat `key=value` pairs, one per leaf field of a
`core.config.TrialConfig` (`epochs=10`, `dims=64`), and the grid of trials.

`record(config)` is the flat form (the manifest and every Parquet file keep it) and
`trial_config(**values)` builds a config from it. Every value is parsed and checked
here, attacks into `Attack` objects, so that bad input fails before data loads or
Ray starts.

A run is a grid of trials (SPEC 7): `arch` and `dataset` pair up position by position (a
single value pairs with every entry of the other); seeds multiply the grid, and so does
every other key given more than once (`lr=1e-3 lr=1e-2`), or as a `grid_search` list in
a sweep file: the grid is the product of the swept keys. A value may hold commas itself
(`attacks=pgd:eps=8/255,alpha=2/255,steps=4`), so only repeating a key sweeps it.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import types
import typing
import zlib
from dataclasses import dataclass, field

from raysweep.choices import SPACES, safe_name
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
INTERNAL = ("swept", "tag")  # keys the sweep sets on each trial, never the user
MAX_TRIALS = 1000  # a larger grid needs --yes
_PART_TYPES = {f.name: typing.get_type_hints(TrialConfig)[f.name] for f in dataclasses.fields(TrialConfig)}


def record(config: TrialConfig) -> dict[str, object]:
    """The flat form, one entry per key: what the manifest and the Parquet metadata keep."""
    out: dict[str, object] = {}
    for key, (part, _) in KEYS.items():
        value = getattr(getattr(config, part), key) if part else getattr(config, key)
        if key == "attacks":
            value = "+".join(a.spec for a in value)
        elif key in ("spaces", "swept"):
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
        elif key in ("spaces", "swept") and isinstance(value, str):
            value = tuple(s.strip() for s in value.split(",") if s.strip())
        elif key in ("attacks", "spaces", "swept"):
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
    swept: tuple[tuple[str, tuple[object, ...]], ...] = ()  # (key, its values) of every other swept key

    def trials(self) -> list[TrialConfig]:
        if len(self.arch) != len(self.dataset) and 1 not in (len(self.arch), len(self.dataset)):
            raise UserError(
                f"arch has {len(self.arch)} entries and dataset {len(self.dataset)}: they pair up by position, "
                "so give both the same count, or one of them a single value"
            )
        n = max(len(self.arch), len(self.dataset))
        pairs = list(zip(self.arch * (n // len(self.arch)), self.dataset * (n // len(self.dataset))))
        keys = tuple(key for key, _ in self.swept)
        templates = [self.trial]
        if keys:
            templates = [replace(self.trial, **dict(zip(keys, combo)), swept=keys, tag=_tag(keys, combo))
                         for combo in itertools.product(*(values for _, values in self.swept))]
        trials = [replace(t, arch=a, dataset=d, seed=s) for t in templates for a, d in pairs for s in self.seed]
        names = [t.name for t in trials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"the grid holds trial {twice[0]} twice: give each (arch, dataset) pair once")
        return trials

    def record(self) -> dict[str, object]:
        """The grid and the template trial, flat (the manifest's `sweep`)."""
        return {"arch": list(self.arch), "dataset": list(self.dataset), "seed": list(self.seed),
                "swept": {key: list(values) for key, values in self.swept}, "trial": record(self.trial)}


def _tag(keys: tuple[str, ...], values: tuple[object, ...]) -> str:
    """A trial's swept values as a short path-safe name part: `lr_0.01-training_standard`; a value
    longer than 12 characters keeps 8 and a checksum of the whole (`training_pgd_eps_-4f1c`)."""
    parts = []
    for key, value in zip(keys, values):
        text = ",".join(value) if isinstance(value, tuple) else str(value)  # attacks, spaces: their spec text
        short = safe_name(text)
        if len(short) > 12:
            short = f"{short[:8]}-{zlib.crc32(text.encode()):08x}"[:13]
        parts.append(f"{key}_{short}")
    return "-".join(parts)


GRID_KEYS = ("arch", "dataset", "seed")
RUN_KEYS = ("storage",)  # where the run directory lives (a path or a pyarrow filesystem URI); same as --out


def trial_configs(run_manifest: dict) -> list[TrialConfig]:
    """The trials a run's manifest lists."""
    return [trial_config(**values) for values in run_manifest["trials"].values()]


def parse_overrides(items: typing.Iterable[str]) -> dict[str, str | list[str]]:
    """`key=value` strings to a dict; a key given more than once maps to the list of its values (a
    sweep, each value once). Unknown keys name the valid ones."""
    valid = (*GRID_KEYS, *(k for k in KEYS if k not in GRID_KEYS and k not in INTERNAL), *RUN_KEYS)
    out: dict[str, str | list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value, e.g. epochs=10")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown key {key!r} in {item!r}{hint}; valid keys: {', '.join(valid)}")
        value = value.strip()
        if key in out:
            values = out[key] if isinstance(out[key], list) else [out[key]]
            if value in values:
                raise UserError(f"{key}={value} is given twice: give each value of a swept key once")
            out[key] = [*values, value]
        else:
            out[key] = value
    return out


def sweep_file(path: str) -> dict[str, str | list[str]]:
    """A sweep file's overrides, as `parse_overrides` gives them: YAML or JSON shaped like Tune's
    `param_space`, `{"lr": {"grid_search": [0.001, 0.01]}, "epochs": 15}`; a grid_search list sweeps."""
    import yaml  # JSON is YAML too

    try:
        with open(path) as stream:
            content = yaml.safe_load(stream)
    except OSError as exc:
        raise UserError(f"--sweep {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--sweep {path} is not YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise UserError(f"--sweep {path}: write a mapping of keys, e.g. {{\"lr\": {{\"grid_search\": [0.001, 0.01]}}}}")
    items = []
    for key, value in content.items():
        if isinstance(value, dict) and set(value) == {"grid_search"} and isinstance(value["grid_search"], list):
            if not value["grid_search"]:
                raise UserError(f"--sweep {path}: {key}'s grid_search is empty: give at least one value")
            items += [f"{key}={_text(v)}" for v in value["grid_search"]]
        elif isinstance(value, (dict, list)):
            raise UserError(f"--sweep {path}: {key} must be one value or {{\"grid_search\": [...]}}, got {value!r}")
        else:
            items.append(f"{key}={_text(value)}")
    overrides = parse_overrides(items)
    single = [k for k, v in content.items() if isinstance(v, dict) and isinstance(overrides.get(k), str)]
    return {k: [v] if k in single else v for k, v in overrides.items()}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def swept_columns(config: TrialConfig) -> dict[str, object]:
    """The trial's swept values as `epochs/` columns, typed by their keys (an unset optional value, such
    as dims=all, is a null of the key's type, so every file of a run has one schema)."""
    import pandas as pd

    values = record(config)
    columns = {}
    for key in config.swept:
        kind = KEYS[key][1]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
        dtype = {int: "Int64", float: "float64", bool: "boolean"}.get(kind, "string")
        columns[key] = pd.array([values[key]], dtype=dtype)
    return columns


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
