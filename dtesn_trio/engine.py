"""The engine protocol: what the runtime, the queue and the server need of a model.

A plain class, no base class needed::

    class MyEngine:
        def decode(self, payload: Any) -> Item: ...
        def process_batch(self, items: Sequence[Item]) -> Sequence[Output]: ...
        def encode(self, output: Output) -> Any: ...

- ``decode`` turns a request's ``input`` into one item (on the event loop: keep it
  cheap); a bad input raises :class:`~dtesn_trio.errors.InvalidRequest` naming its
  field.  Anything else it raises is a bug of the engine: a 500, logged with its
  traceback.  Keyword-only parameters of ``decode`` are the engine's request options
  (DTESN's ``membrane_depth``); a request naming another option is refused.
- ``process_batch`` is synchronous and runs in a worker thread or worker process (the
  executor, :mod:`dtesn_trio.executor`); it returns one output per item, in order.  An
  output that is an exception instance fails that input alone.  Raising fails the
  batch: the runtime then runs each member alone, so one poisoned input fails only
  itself.  A wrong number of outputs is an :class:`~dtesn_trio.errors.EngineError`.
- ``encode`` turns an output into a JSON-able value (NumPy arrays and scalars are
  fine).  It runs in the worker too, right after ``process_batch``, and the runtime
  keeps the JSON bytes (:func:`encode_outputs`): the event loop never formats a
  float, and the result cache holds bytes.  Keep it a pure function of the output.

Optional members, each with its default when absent:

- ``group_key(item) -> Hashable``: items with different keys never share a
  ``process_batch`` call (default: one group).
- ``cache_key(item) -> str | bytes | None``: the result cache's key (it must cover
  everything that decides the output: input, weights, version); ``None`` for an item
  never cached.  Absent: no result cache.
- ``cost(item) -> float``: the item's share of the engine's work, in items of a typical
  size (default 1): a batch holds at most ``queue.max_batch_size`` of these units
  (rounded up, at least 1 an item), and an item that costs more than that runs alone.
- ``input_type``: a type msgspec decodes (``list[float]``, a ``msgspec.Struct``...):
  the server validates a request's ``input`` against it before ``decode`` (default:
  any JSON value).
- ``input_schema`` / ``output_schema``: JSON Schema ``dict``s of the input and of
  ``encode``'s value, for the OpenAPI document (default: derived from ``input_type``;
  any value).  ``options_schema``: a JSON Schema per option name.
- ``open()``: an async context manager for set-up and tear-down (loading weights,
  connections), entered by ``open_runtime`` inside its nursery, before any request.
- ``statistics()``: a record (dataclass or mapping) shown under ``engine`` in the stats.

With ``processor.executor = "process"`` the engine is pickled once (after ``open()``)
and loaded by every worker process: it must be picklable.

:func:`resolve_engine` looks the optional members up once; the hot path calls the
resolved functions, never ``getattr``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from dtesn_trio.errors import EngineError, InvalidRequest

__all__ = ["Engine", "ResolvedEngine", "check_outputs", "load_engine", "resolve_engine"]


@runtime_checkable
class Engine(Protocol):
    """The required members of an engine (see the module docstring for the optional)."""

    def decode(self, payload: Any) -> Any: ...

    def process_batch(self, items: Sequence[Any]) -> Sequence[Any]: ...

    def encode(self, output: Any) -> Any: ...


def engine_name(engine: object) -> str:
    """An engine's name in messages: its class, with its module."""
    cls = type(engine)
    return f"{cls.__module__}.{cls.__qualname__}"


def _options(decode: Callable[..., Any]) -> frozenset[str]:
    try:
        params = inspect.signature(decode).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True, eq=False)
class ResolvedEngine:
    """An engine with its optional members looked up once (``resolve_engine``)."""

    engine: Any
    name: str
    decode_fn: Callable[..., Any]
    encode: Callable[[Any], Any]
    group_key: Callable[[Any], Hashable] | None
    cache_key_fn: Callable[[Any], str | bytes | None] | None
    cost: Callable[[Any], float] | None
    input_type: Any
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    options: frozenset[str]
    options_schema: Mapping[str, Any] = field(default_factory=dict)
    open: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    statistics: Callable[[], Any] | None = None

    def decode(self, payload: Any, options: Mapping[str, Any] | None = None) -> Any:
        """``engine.decode(payload, **options)``; an option the engine does not take is
        an ``InvalidRequest`` naming it."""
        if not options:
            return self.decode_fn(payload)
        for name in options:
            if name not in self.options:
                raise InvalidRequest(
                    f"{name} is not an option of this server's engine ({self.name})",
                    field=name,
                )
        return self.decode_fn(payload, **options)

    def cache_key(self, item: Any) -> str | None:
        """The cache key of ``item`` as a string (bytes are hashed), or ``None``."""
        assert self.cache_key_fn is not None
        key = self.cache_key_fn(item)
        if key is None or isinstance(key, str):
            return key
        return hashlib.blake2b(key, digest_size=20).hexdigest()


def resolve_engine(engine: Any) -> ResolvedEngine:
    """Check ``engine`` has the required members and look up the optional ones."""
    if isinstance(engine, ResolvedEngine):
        return engine
    missing = [
        m for m in ("decode", "process_batch", "encode") if not callable(getattr(engine, m, None))
    ]
    if missing:
        raise TypeError(
            f"{engine_name(engine)} is not an engine: it has no {', '.join(missing)} method"
            " (an engine needs decode, process_batch and encode)"
        )

    def optional(name: str) -> Any:
        value = getattr(engine, name, None)
        return value if callable(value) else None

    return ResolvedEngine(
        engine=engine,
        name=engine_name(engine),
        decode_fn=engine.decode,
        encode=engine.encode,
        group_key=optional("group_key"),
        cache_key_fn=optional("cache_key"),
        cost=optional("cost"),
        input_type=getattr(engine, "input_type", Any),
        input_schema=_schema(engine, "input_schema"),
        output_schema=_schema(engine, "output_schema"),
        options=_options(engine.decode),
        options_schema=dict(getattr(engine, "options_schema", None) or {}),
        open=optional("open"),
        statistics=optional("statistics"),
    )


def _schema(engine: Any, name: str) -> dict[str, Any] | None:
    value = getattr(engine, name, None)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{engine_name(engine)}.{name} must be a JSON Schema dict (got {type(value).__name__})"
        )
    return dict(value)


def _json_default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # NumPy arrays and scalars
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


json_encoder = msgspec.json.Encoder(enc_hook=_json_default)
"""The JSON encoder of every answer: msgspec's, with NumPy values as lists/numbers."""


def encode_outputs(encode: Callable[[Any], Any], outputs: Sequence[Any]) -> list[Any]:
    """Each output as its JSON (``msgspec.Raw`` of ``encode(output)``); an output that
    is an exception stays one, and an output ``encode`` fails on becomes an
    ``EngineError`` for that input alone."""
    out: list[Any] = []
    for output in outputs:
        if isinstance(output, BaseException):
            out.append(output)
            continue
        try:
            out.append(msgspec.Raw(json_encoder.encode(encode(output))))
        except Exception as exc:
            out.append(EngineError(f"the engine's encode failed on one output: {exc!r}"))
    return out


def check_outputs(name: str, items: int, outputs: Sequence[Any]) -> list[Any]:
    """``outputs`` as a list, or ``EngineError`` when there is not one per item."""
    try:
        out = list(outputs)
    except TypeError:
        raise EngineError(
            f"{name}.process_batch returned {type(outputs).__name__}, not a sequence of"
            f" {items} outputs"
        ) from None
    if len(out) != items:
        raise EngineError(
            f"{name}.process_batch returned {len(out)} outputs for {items} items"
            " (it must return one output per item, in order)"
        )
    return out


def load_engine(spec: str, options: Mapping[str, Any] | None = None) -> Any:
    """Import ``package.module:factory`` and return ``factory(**options)``, checked to
    be an engine.  The current directory is importable (as for ``uvicorn``), so
    ``examples.sklearn_digits:factory`` works from the project's root.  Every failure
    is a ``ValueError`` that says what to fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--engine must be package.module:factory (got {spec!r})")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--engine {spec}: cannot import {module_name!r} ({exc})") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"--engine {spec}: {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ValueError(f"--engine {spec}: {attr!r} is not callable")
    try:
        engine = factory(**(options or {}))
    except TypeError as exc:
        raise ValueError(
            f"--engine {spec}: {attr}(**engine options) failed: {exc}"
            " (the options are the --set engine.KEY=VALUE flags)"
        ) from None
    try:
        resolve_engine(engine)
    except TypeError as exc:
        raise ValueError(f"--engine {spec}: {exc}") from None
    return engine
