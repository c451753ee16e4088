"""Loading configs: YAML files, ``base:`` inheritance, dotted overrides, plain-data views.

* ``base: other.yaml`` (relative to the file that names it) makes a config inherit another one:
  the file's keys are merged over the base's, section by section, so a method config need only
  state its differences. Chains are followed; a cycle is an error.
* Overrides ``["method.name=ffa", "server.rounds=3"]`` are parsed once here (the sweep uses the
  same functions); values are read as YAML.
* Switching ``method.name`` (by override or in a file over its base) keeps only the keys shared
  by every method from the old method section: one method's keys are unknown to another.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .methods import method_config_class
from .schema import ConfigError, Experiment, MethodConfig, PrivacyConfig

__all__ = [
    "load_config",
    "read_config_file",
    "from_dict",
    "to_dict",
    "parse_overrides",
    "nest_overrides",
]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"`{key}` must be {' or '.join(map(_type_name, args))}. Found {value!r}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list. Found {value!r}.")
        return tuple(_coerce(v, args[0], key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping. Found {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}` must be true or false. Found {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"`{key}` must be an integer. Found {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; "inf" means infinity (non-private).
            try:
                return float(value.strip().lower().replace(".inf", "inf"))
            except ValueError:
                pass
        raise ConfigError(f"`{key}` must be a number. Found {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"`{key}` must be a string. Found {value!r}.")
    if is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    raise ConfigError(f"`{key}`: unsupported config type {tp!r}.")  # pragma: no cover


# A key given makes another key's default meaningless: a risk target (privacy.target_tpr)
# replaces the default ε target, so that default is dropped unless the ε target is given too
# (anywhere: the file, its base, an override), and then the schema refuses the pair.
_DEFAULT_DROPPED_BY: dict[type, dict[str, str]] = {PrivacyConfig: {"target_epsilon": "target_tpr"}}


def from_dict(cls: type, data: Any, *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"`{prefix or 'config'}` must be a mapping. Found {data!r}.")
    if isinstance(cls, type) and issubclass(cls, MethodConfig):
        cls = method_config_class(str(data.get("name", MethodConfig.name)))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key `{where}{unknown[0]}`. Allowed under "
            f"`{prefix or 'top level'}`: {', '.join(sorted(names))}."
        )
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    for dropped, by in _DEFAULT_DROPPED_BY.get(cls, {}).items():
        if data.get(by) is not None and dropped not in data:
            kwargs[dropped] = None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`{prefix or 'config'}`: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (inverse of from_dict), for YAML and hashing."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj


def nest_overrides(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``[("server.rounds", 3)]`` -> ``{"server": {"rounds": 3}}`` (values already parsed)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.strip().split(".")
        if not key.strip() or any(not part for part in parts):
            raise ConfigError(
                f"override key must be dotted names like server.rounds. Found {key!r}."
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override.")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"override {key!r} conflicts with another override.")
        node[parts[-1]] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["method.name=ffa", "server.rounds=3"]`` -> nested dict (values parsed as YAML)."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override must look like key=value. Found {pair!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(
                f"override {pair!r}: the value is not valid YAML. Quote it, e.g. {key}='...'."
            ) from None
        parsed.append((key, value))
    return nest_overrides(parsed)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# Privacy targets are alternatives: a layer (an override, a file over its base) that names one
# drops the other from the layers below it; both in one layer is an error of the schema.
_ALTERNATIVE_TARGETS = (("target_tpr", ("target_epsilon",)),
                        ("target_epsilon", ("target_tpr", "target_fpr")))  # fmt: skip


def _layer(data: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``data``; a new method name drops the old method's own keys, a new
    privacy target (ε, or TPR at FPR) the other kind's keys."""
    method = over.get("method")
    if isinstance(method, dict) and "name" in method and isinstance(data.get("method"), dict):
        if method["name"] != data["method"].get("name"):
            shared = {f.name for f in fields(MethodConfig)}
            data = dict(data, method={k: v for k, v in data["method"].items() if k in shared})
    privacy = over.get("privacy")
    if isinstance(privacy, dict) and isinstance(data.get("privacy"), dict):
        for key, others in _ALTERNATIVE_TARGETS:
            if privacy.get(key) is not None:
                kept = {k: v for k, v in data["privacy"].items() if k not in others}
                data = dict(data, privacy=kept)
    return _merge(data, over)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping. Found {type(data).__name__}.")
    return data


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The plain data of a config file with its ``base:`` chain resolved (not yet validated)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"`base` forms a cycle: {loop}. Remove one of the `base:` keys.")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `base` must be the path of another config. Found {base!r}.")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: `base` = {base!r} does not exist (paths are relative to {path.parent})."
        )
    return _layer(read_config_file(base_path, (*_chain, resolved)), data)


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Experiment:
    """Load an Experiment from YAML (or defaults), following ``base:``, then apply overrides."""
    data = read_config_file(path) if path is not None else {}
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = _layer(data, over)
    return from_dict(Experiment, data)
