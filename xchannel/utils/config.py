"""Typed run configurations.

A run's configuration is a (nested) dataclass. This module turns YAML files and ``key=value`` overrides into
those dataclasses, strictly:

* unknown keys are an error that names them (with the keys that exist),
* a key given twice in one YAML mapping is an error that names it and its line,
* values are parsed as YAML scalars/lists (``lr=3e-5``, ``steps=[200,375]``): nothing is evaluated as code,
* each value is checked against the field's type.

:func:`to_dict` gives the JSON-able form saved next to every checkpoint and result.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from xchannel.errors import UserError

T = TypeVar("T")
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise UserError(f"{key_node.start_mark.name}:{line}: duplicate key {key!r} "
                            f"(first given on line {seen[key]})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from err
    finally:
        loader.dispose()


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursively, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "3e-5" (no dot) as a string; it is meant as a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def add_config_arguments(parser: Any, what: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` (into ``args.config``, ``args.overrides``), the two
    arguments a command passes to :func:`build_config`; ``what`` names the config's fields in the help."""
    parser.add_argument("--config", help=f"YAML file with {what} fields")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override any {what} field, dotted keys (repeatable)")


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=1e-4", "model.name=vgg"]`` -> nested dict. Values are YAML scalars, never code."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UserError(f"override {item!r}: cannot parse value ({err})") from err
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {p!r} is not a section")
        if parts[-1] in node:
            raise UserError(f"override {key!r} given twice")
        node[parts[-1]] = value
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (), base: T | None = None) -> T:
    """Defaults (or ``base``) <- YAML file at ``path`` <- ``key=value`` overrides, validated into ``cls``."""
    upgrade = getattr(cls, "upgrade_legacy", lambda d: d)  # a config class may move keys of older layouts
    data = to_dict(base) if base is not None else to_dict(cls())
    if path is not None:
        file_data = load_yaml(path) or {}
        if not isinstance(file_data, dict):
            raise UserError(f"{path}: expected a mapping at the top level")
        file_data = upgrade(file_data)
        from_dict(cls, merge(data, file_data), where=str(path))  # validate file keys with their file name
        data = merge(data, file_data)
    data = merge(data, upgrade(parse_overrides(list(overrides))))
    return from_dict(cls, data)
