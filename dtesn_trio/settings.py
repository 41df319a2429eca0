"""Load a tree of frozen config dataclasses from TOML, ``DTESN_*`` variables and flags.

Precedence, lowest first: the dataclass defaults < a TOML file < environment variables
< ``--set section.key=value`` flags.  Every value is converted to the type of its
dataclass field by ``msgspec.convert`` (strictly for typed TOML values; text from the
environment and flags is read leniently: ``"80"`` is an integer, ``"a,b"`` a tuple,
``"none"`` None where the field allows it, ``yes``/``on``/``no``/``off`` booleans), and
every failure -- an unknown key, a value of the
wrong type, a value the dataclass's own ``__post_init__`` rejects -- raises
``SettingsError`` naming the key and where it came from, so start-up stops with a
message a person can act on.

Environment variables: ``DTESN_SECTION__KEY`` (double underscore between levels, case
insensitive), e.g. ``DTESN_SERVER__PORT=9000`` or ``DTESN_REDIS__POOL__MAX_CONNECTIONS``.
A variable with ``__`` that names no key is an error; a single-level ``DTESN_NAME`` is
used when it names a top-level field or an alias (``aliases={"API_KEYS":
"server.api_keys"}``) and is otherwise left alone, because other tools of the project
read their own ``DTESN_*`` variables (``DTESN_API_KEY`` of the soak client).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["SettingsError", "load_settings", "parse_set_option", "settings_keys"]

T = TypeVar("T")

ENV_PREFIX = "DTESN_"
_NONE_WORDS = frozenset({"none", "null", ""})
_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}  # msgspec: true/false/1/0


class SettingsError(ValueError):
    """A configuration key or value is wrong; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str, *, source: str | None = None) -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {key}{where}: {message}")
        self.key = key
        self.source = source


def parse_set_option(option: str) -> tuple[str, str]:
    """Split one ``section.key=value`` flag; raise ``SettingsError`` if it has no ``=``."""
    key, sep, value = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(option, "expected section.key=value", source="--set")
    return key, value


def settings_keys(cls: type[Any], prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass tree ``cls`` (for help texts and errors)."""
    keys: list[str] = []
    for name, tp in _fields(cls).items():
        sub = _dataclass_type(tp)
        keys.extend(settings_keys(sub, f"{prefix}{name}.") if sub else [prefix + name])
    return keys


def load_settings(
    cls: type[T],
    *,
    toml_path: str | os.PathLike[str] | None = None,
    toml_data: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, str | Any]] = (),
    aliases: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` (a frozen dataclass tree) from the layered sources.

    ``environ`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    ``overrides`` are ``(dotted_key, value)`` pairs (strings are coerced, other values
    checked), applied last.  ``aliases`` maps extra single-level environment names
    (without the prefix) to dotted keys.
    """
    tree: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError("--config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("--config", f"{path} is not valid TOML: {exc}") from None
        _merge_toml(cls, tree, data, "", str(path))
    if toml_data is not None:
        _merge_toml(cls, tree, toml_data, "", "config")
    env = os.environ if environ is None else environ
    alias_map = {k.upper(): v for k, v in (aliases or {}).items()}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].upper()
        if rest in alias_map:
            _assign(cls, tree, alias_map[rest], env[name], name, from_text=True)
            continue
        if "__" not in rest:
            top = rest.lower()
            if top in _fields(cls) and _dataclass_type(_fields(cls)[top]) is None:
                _assign(cls, tree, top, env[name], name, from_text=True)
            continue
        key = ".".join(part.lower() for part in rest.split("__"))
        _assign(cls, tree, key, env[name], name, from_text=True)
    for key, value in overrides:
        _assign(cls, tree, key, value, "--set", from_text=isinstance(value, str))
    return _build(cls, tree, "")


# --------------------------------------------------------------------------- internals


def _fields(cls: type[Any]) -> dict[str, Any]:
    """The field names of the dataclass ``cls`` and their (resolved) types, in order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_type(tp: Any) -> type[Any] | None:
    """``tp`` when it is a dataclass (a section), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return None


def _merge_toml(
    cls: type[Any], tree: dict[str, Any], data: Mapping[str, Any], prefix: str, source: str
) -> None:
    fields = _fields(cls)
    for name, value in data.items():
        key = prefix + name
        if name not in fields:
            raise SettingsError(key, _unknown(cls, name, prefix), source=source)
        sub = _dataclass_type(fields[name])
        if sub is not None:
            if not isinstance(value, Mapping):
                raise SettingsError(key, "expected a table (section)", source=source)
            _merge_toml(sub, tree.setdefault(name, {}), value, key + ".", source)
        else:
            tree[name] = (_coerce(fields[name], value, key, source, from_text=False), source)


def _assign(
    cls: type[Any], tree: dict[str, Any], key: str, value: Any, source: str, *, from_text: bool
) -> None:
    parts = key.split(".")
    node_cls, node = cls, tree
    for depth, name in enumerate(parts):
        prefix = ".".join(parts[:depth])
        fields = _fields(node_cls)
        if name not in fields:
            raise SettingsError(
                key, _unknown(node_cls, name, prefix + "." if prefix else ""), source=source
            )
        sub = _dataclass_type(fields[name])
        last = depth == len(parts) - 1
        if sub is None:
            if not last:
                raise SettingsError(
                    key, f"{'.'.join(parts[: depth + 1])} is not a section", source=source
                )
            node[name] = (_coerce(fields[name], value, key, source, from_text), source)
            return
        if last:
            raise SettingsError(key, "is a section; set one of its keys", source=source)
        node_cls, node = sub, node.setdefault(name, {})


def _unknown(cls: type[Any], name: str, prefix: str) -> str:
    known = ", ".join(prefix + f for f in _fields(cls))
    return f"unknown key {prefix}{name!s} (known here: {known})"


def _build(cls: type[T], tree: Mapping[str, Any], prefix: str) -> T:
    kwargs: dict[str, Any] = {}
    sources: set[str] = set()
    fields = _fields(cls)
    for name, entry in tree.items():
        sub = _dataclass_type(fields[name])
        if sub is not None:
            kwargs[name] = _build(sub, entry, f"{prefix}{name}.")
        else:
            kwargs[name], src = entry
            sources.add(src)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # The dataclass names the field in its own words ("pool.max_connections ...");
        # we add where the section sits in the tree and which sources set it.
        section = prefix[:-1] or cls.__name__
        where = ", ".join(sorted(sources)) or None
        raise SettingsError(section, str(exc), source=where) from None


def _coerce(tp: Any, value: Any, key: str, source: str, from_text: bool) -> Any:
    """``value`` as the field type ``tp``, by ``msgspec.convert``; text from the environment
    or a flag is first put in the shape it stands for (see ``_from_text``)."""
    if from_text and isinstance(value, str):
        value = _from_text(tp, value)
    try:
        return msgspec.convert(value, tp, strict=not from_text)
    except msgspec.ValidationError:
        raise SettingsError(
            key, f"expected {_type_name(tp)}, got {value!r}", source=source
        ) from None
    except TypeError:
        # Callables and other objects are set in code, not in a config file.
        if not from_text and isinstance(tp, type) and isinstance(value, tp):
            return value
        expected = f"{_type_name(tp)}, which cannot be set from configuration"
        raise SettingsError(key, f"expected {expected}, got {value!r}", source=source) from None


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return typing.get_args(tp)
    return (tp,)


def _from_text(tp: Any, text: str) -> Any:
    """What ``text`` stands for as ``tp``: None for a none word (when ``tp`` allows None),
    a list of items for comma-separated text (when ``tp`` is or allows a sequence), a
    bool for yes/on/no/off; otherwise the text, stripped unless ``tp`` allows a string."""
    members = _members(tp)
    word = text.strip()
    if type(None) in members and word.lower() in _NONE_WORDS:
        return None
    sequences = [m for m in members if typing.get_origin(m) in (tuple, list, frozenset, set)]
    scalars = [m for m in members if m is not type(None) and m not in sequences]
    if sequences and ("," in word or not scalars):
        items = [v.strip() for v in word.split(",")] if word else []
        args = typing.get_args(sequences[0])
        if not (typing.get_origin(sequences[0]) is tuple and args[-1:] != (Ellipsis,)):
            args = (args[0] if args else Any,) * len(items)
        if len(args) != len(items):
            return items  # a tuple of another length: msgspec says what it expected
        return [_from_text(a, v) for a, v in zip(args, items, strict=True)]
    if bool in members and word.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[word.lower()]
    return text if str in members else word


_TYPE_NAMES: dict[Any, str] = {
    type(None): "none",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _type_name(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is collections.abc.Callable:
        return "a function (set in code, not in configuration)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))
