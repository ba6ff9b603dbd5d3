"""Loading a run config: YAML files and ``--set`` overrides, built into the typed sections with every key and type
checked (:class:`ConfigError` names the file, the key and the closest valid key)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sb3_carla_td3.config.sections import (
    ENV_CONFIG_CLASSES,
    EncoderConfig,
    EnvSection,
    MonitorConfig,
    RunConfig,
    RunSettings,
    TD3Config,
    env_options_class,
)
from sb3_carla_td3.errors import ConfigError


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """:return: ``"; did you mean 'X'?"`` naming the valid key closest to ``key``, or "" when there is none"""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint, converting only lossless cases (int -> float, '1e-3' -> float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return build_dataclass(hint, value, where)
    if hint is Any:
        return value
    return _coerce_scalar(value, hint, where)


def _coerce_scalar(value: Any, hint: type, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # PyYAML reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking every type.

    :param cls: the dataclass; its optional ``ALIASES`` class attribute maps alternative key names to fields
    :param data: the mapping read from YAML
    :param where: location prefix for messages, e.g. ``"configs/x.yaml: td3"``
    :return: the instance (its ``__post_init__`` checks ranges)
    :raises ConfigError: naming the location, the key and the closest valid key
    """
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(str(key), valid + list(aliases))}")
        if name in kwargs:
            raise ConfigError(f"{where}: {key!r} and its alias both set {name!r}; keep one")
        kwargs[name] = _coerce(value, hints[name], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


SECTIONS: dict[str, type] = {"encoder": EncoderConfig, "td3": TD3Config, "run": RunSettings, "monitor": MonitorConfig}


def config_from_dict(data: Mapping[str, Any] | None, source: str = "<dict>") -> RunConfig:
    """Build a :class:`RunConfig` from already-parsed YAML data.

    :param data: mapping with any of the sections env, encoder, td3, run, monitor
    :param source: name of the origin, used in messages
    :return: the checked config
    """
    data = dict(data or {})
    valid = ["env", *SECTIONS]
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"{source}: unknown section {key!r}{did_you_mean(str(key), valid)}")
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{source}: section {key!r} must be a mapping, got {value!r}")
    env_data = dict(data.get("env") or {})
    name = env_data.pop("name", "carracing")
    if name not in ENV_CONFIG_CLASSES:
        raise ConfigError(f"{source}: env.name={name!r} is not one of {', '.join(ENV_CONFIG_CLASSES)}")
    options = build_dataclass(env_options_class(name), env_data, f"{source}: env")
    sections["env"] = EnvSection(name=name, options=options)
    for key, cls in SECTIONS.items():
        sections[key] = build_dataclass(cls, data.get(key) or {}, f"{source}: {key}")
    return RunConfig(**sections, source=source)


def apply_overrides(data: Mapping[str, Any] | None, overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``SECTION.KEY=VALUE`` overrides (``env.reward.stuck_penalty=-5``) on parsed YAML data.

    Values are read as YAML (``1e-3``, ``null``, ``[64, 64]``, ``true``); keys are checked later, when the data is
    built into a :class:`RunConfig`, like those of the file.

    :param data: the parsed YAML (not modified)
    :param overrides: ``"dotted.key=value"`` strings, applied in order
    :return: a copy of ``data`` with the overrides set
    :raises ConfigError: for an override without ``=`` or without a section, or one that descends into a value
    """
    result: dict[str, Any] = copy.deepcopy(dict(data or {}))
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {override!r} must look like SECTION.KEY=VALUE, e.g. td3.preact_penalty=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: the value is not valid YAML: {error}") from error
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load and check a run config YAML file.

    :param path: the YAML file
    :param overrides: ``SECTION.KEY=VALUE`` strings set on top of the file (see :func:`apply_overrides`)
    :return: the checked config
    :raises ConfigError: for a missing file, invalid YAML, unknown keys, wrong types or out-of-range values
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if not data:
        raise ConfigError(
            f"{path}: the config is empty; it needs at least one of the sections {', '.join(['env', *SECTIONS])} "
            "(start from configs/phase1_validation.yaml: an empty file would train the library defaults, hours on a CPU)"
        )
    source = str(path) + "".join(f" --set {o}" for o in overrides)
    config = config_from_dict(apply_overrides(data, overrides), source=source)
    route = getattr(config.env.options, "route", None)
    if route is not None and route.waypoint_file and not Path(route.waypoint_file).is_absolute():
        # A waypoint file named in a config is relative to that config, not to the working directory.
        route.waypoint_file = str((path.parent / route.waypoint_file).resolve())
    return config
