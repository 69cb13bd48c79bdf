"""Scenario lookup by name, and scenario files (TOML) validated before anything starts.

A scenario file names a scenario and sets its parameters::

    scenario = "fleet"
    seed = 7

    [params]
    vehicles = 20000
    failure.flash = 0.01

Every error names the file, the key and why.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scenarios.core import Scenario, ScenarioError, ScenarioParams

_REGISTRY: dict[str, type[Scenario]] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: make a scenario known by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ScenarioError(f"two scenarios are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    # Imported for their @register side effect; late, since they import this module.
    import scenarios.builtin  # noqa: F401


def builtin_scenarios() -> dict[str, type[Scenario]]:
    """Return every known scenario by name, in name order."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_scenario(name: str) -> type[Scenario]:
    """Return the scenario called ``name``; :class:`ScenarioError` naming the known ones."""
    known = builtin_scenarios()
    if name not in known:
        raise ScenarioError(f"no scenario named {name!r} (known: {', '.join(known)})")
    return known[name]


def describe_errors(exc: ValidationError, prefix: str) -> str:
    """Return pydantic's errors as ``key: why`` items joined by ``; ``."""
    parts = []
    for error in exc.errors():
        key = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{key}: {message}")
    return "; ".join(parts)


def make_params(
    scenario: type[Scenario], values: Mapping[str, Any], *, source: str = "parameters"
) -> ScenarioParams:
    """Validate ``values`` against the scenario's parameters."""
    try:
        return scenario.Params.model_validate(dict(values))
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_errors(exc, 'params')}") from None


@dataclass(frozen=True)
class ScenarioFile:
    """A scenario file, validated."""

    path: Path
    scenario: type[Scenario]
    params: dict[str, Any]
    seed: int | None


def load_scenario_file(path: Path) -> ScenarioFile:
    """Read and validate a scenario file (the parameters are checked by :func:`make_params`)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a folder, not a scenario file") from None
    except PermissionError:
        raise ScenarioError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"scenario", "seed", "params"})
    if unknown:
        raise ScenarioError(f"{path}: {unknown[0]}: unknown key (expected scenario, seed, params)")
    name = data.get("scenario")
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{path}: scenario: required, the name of a scenario")
    try:
        scenario = get_scenario(name)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: scenario: {exc}") from None
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ScenarioError(f"{path}: seed: must be a non-negative integer")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ScenarioError(f"{path}: params: must be a table")
    make_params(scenario, params, source=str(path))
    return ScenarioFile(path, scenario, params, seed)


__all__ = [
    "ScenarioFile",
    "builtin_scenarios",
    "describe_errors",
    "get_scenario",
    "load_scenario_file",
    "make_params",
    "register",
]
