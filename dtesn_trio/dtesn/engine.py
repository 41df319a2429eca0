"""The DTESN engine: the deep tree echo state network behind the engine protocol.

``DTESNEngine(model_or_config)`` implements :mod:`dtesn_trio.engine`: ``decode`` turns
text or a ``T × input_dim`` array (the one place numeric input is encoded) into a
:class:`DTESNItem` with its membrane depth (the request option ``membrane_depth``,
default the model's); ``group_key`` is that depth (one model per call); ``cache_key``
hashes the input with the model's config at that depth and, at the model's own depth,
its readout's weights; ``cost`` is the input's length in units of
``STEPS_PER_COST_UNIT`` steps (so short inputs count one item each toward
``queue.max_batch_size`` and a long one as several); ``encode`` is the
result's JSON.

The request option ``model`` runs the input on a registered model version instead
(any object with ``.name``, ``.version`` and ``.model``, a ``DTESNModel``: what
``dtesn_trio.models.ModelRegistry.resolve`` returns).  The item carries that model, so
a request resolved before an activation finishes on the version it started with; its
group and cache keys hold ``name@version`` and the version's weights.

A depth other than the model's uses a variant built once, on first use, in the worker
that needs it (it has no readout: a readout belongs to one state size).  The engine
pickles (for ``processor.executor = "process"``) with the models built so far.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any

import msgspec
import trio

from dtesn_trio.dtesn.config import MAX_MEMBRANE_DEPTH, DTESNConfig
from dtesn_trio.dtesn.encoding import EncodedInput, encode_input
from dtesn_trio.dtesn.model import DTESNModel, DTESNResult
from dtesn_trio.errors import InvalidRequest

__all__ = ["DTESNEngine", "DTESNEngineStatistics", "DTESNInput", "DTESNItem"]

_TextInput = Annotated[
    str,
    msgspec.Meta(min_length=1, description="Text; each UTF-8 byte is one time step."),
]
_NumericInput = Annotated[
    list[Annotated[list[float], msgspec.Meta(min_length=1)]],
    msgspec.Meta(min_length=1, description="A T x D array of numbers driving the root."),
]
DTESNInput = _TextInput | _NumericInput
"""What a request's ``input`` may be (the server validates it before ``decode``)."""

STEPS_PER_COST_UNIT = 256
"""Steps of input per unit of ``DTESNEngine.cost``: one batch-budget unit."""


@dataclass(frozen=True, eq=False, slots=True)
class DTESNItem:
    """One decoded input and the membrane depth it runs at; ``model`` and ``ref``
    (``name@version``) when it runs on a registered model version.

    Pickled (to a worker process), an item on a model version carries the version's
    config and readout, not the model: the worker builds the model once per version
    (``_worker_model``) and reuses it for every later item of that version."""

    encoded: EncodedInput
    depth: int
    model: DTESNModel | None = None
    ref: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self.model is None or self.ref is None:
            return (DTESNItem, (self.encoded, self.depth))
        model = self.model
        return (_unpickle_item, (self.encoded, self.depth, self.ref, model.config, model.readout))


_WORKER_MODELS: dict[tuple[str, DTESNConfig, str], DTESNModel] = {}
_WORKER_RESERVOIRS: dict[DTESNConfig, DTESNModel] = {}
_WORKER_LOCK = threading.Lock()
_WORKER_KEEP = 8


def _worker_model(ref: str, config: DTESNConfig, readout: Any) -> DTESNModel:
    """The model of version ``ref`` in this process, built on first use.  Keyed by the
    readout's weights too: a worker process may outlive the runtime (and database) that
    sent an earlier ``ref``."""
    weights = getattr(readout, "weights", None)
    digest = "" if weights is None else hashlib.blake2b(weights.tobytes()).hexdigest()
    key = (ref, config, digest)
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(key)
        if model is None:
            reservoir = _WORKER_RESERVOIRS.get(config)
            if reservoir is None:
                reservoir = _WORKER_RESERVOIRS[config] = DTESNModel(config)
            model = DTESNModel(config, _membranes=list(reservoir.membranes))
            model.readout = readout
            _WORKER_MODELS[key] = model
            while len(_WORKER_MODELS) > _WORKER_KEEP:
                del _WORKER_MODELS[next(iter(_WORKER_MODELS))]
            while len(_WORKER_RESERVOIRS) > _WORKER_KEEP:
                del _WORKER_RESERVOIRS[next(iter(_WORKER_RESERVOIRS))]
        return model


def _unpickle_item(
    encoded: EncodedInput, depth: int, ref: str, config: DTESNConfig, readout: Any
) -> DTESNItem:
    return DTESNItem(encoded, depth, _worker_model(ref, config, readout), ref)


@dataclass(frozen=True)
class DTESNEngineStatistics:
    model_depths: tuple[int, ...]  # membrane depths with a built model


class DTESNEngine:
    """The built-in engine; see the module docstring."""

    input_type: Any = DTESNInput
    output_schema: dict[str, Any] = {"type": "object"}  # noqa: RUF012 (read only)

    def __init__(self, model_or_config: DTESNModel | DTESNConfig | None = None) -> None:
        if isinstance(model_or_config, DTESNModel):
            self.config = model_or_config.config
            self._models = {self.config.membrane_depth: model_or_config}
        else:
            self.config = model_or_config if model_or_config is not None else DTESNConfig()
            self._models = {}
        self._configs: dict[int, DTESNConfig] = {self.config.membrane_depth: self.config}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    @property
    def model(self) -> DTESNModel:
        """The model at the configured depth (built here, synchronously, if not yet)."""
        return self._model(self.config.membrane_depth)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[DTESNEngine]:
        """Build the model at the configured depth (in a worker thread) before the block."""
        await trio.to_thread.run_sync(self._model, self.config.membrane_depth)
        yield self

    @property
    def input_schema(self) -> dict[str, Any]:
        """Text, or ``T × input_dim`` numbers."""
        schema: dict[str, Any] = msgspec.json.schema(DTESNInput)
        numeric = schema["anyOf"][1]
        numeric["items"]["minItems"] = numeric["items"]["maxItems"] = self.config.input_dim
        return schema

    @property
    def options_schema(self) -> dict[str, Any]:
        """JSON Schema of the request option ``membrane_depth`` (the depths this
        reservoir can hold)."""
        deepest = 1
        for depth in range(2, MAX_MEMBRANE_DEPTH + 1):
            try:
                replace(self.config, membrane_depth=depth)
            except ValueError:
                break
            deepest = depth
        return {"membrane_depth": {"type": "integer", "minimum": 1, "maximum": deepest}}

    def config_at(self, depth: int) -> DTESNConfig:
        """The model config at ``depth``; a depth this reservoir cannot hold (too few
        units for that many membranes) is the caller's error, named as such."""
        config = self._configs.get(depth)
        if config is None:
            try:
                config = replace(self.config, membrane_depth=depth)
            except ValueError as exc:
                raise InvalidRequest(str(exc), field="membrane_depth") from None
            self._configs[depth] = config
        return config

    def model_key(self, depth: int | None = None) -> str:
        """The model's part of a cache key at ``depth``: config and readout."""
        depth = self.config.membrane_depth if depth is None else depth
        model = self._models.get(depth)
        if model is not None:
            return model.cache_key()
        return self.config_at(depth).cache_key()

    def _model(self, depth: int) -> DTESNModel:
        model = self._models.get(depth)
        if model is None:
            with self._lock:  # built once, however many workers want it
                model = self._models.get(depth)
                if model is None:
                    model = self._models[depth] = DTESNModel(self.config_at(depth))
        return model

    # ------------------------------------------------------------------ the protocol
    def decode(
        self, payload: Any, *, membrane_depth: int | None = None, model: Any = None
    ) -> DTESNItem:
        """Validate one input (text or ``T × input_dim`` numbers) and its depth;
        ``model``: a resolved model version (see the module docstring)."""
        if model is None:
            return self.decode_as(payload, "input", membrane_depth)
        dtesn: DTESNModel = model.model
        depth = dtesn.config.membrane_depth
        if membrane_depth is not None and membrane_depth != depth:
            raise InvalidRequest(
                f"membrane_depth must be {depth} for model {model.name}@{model.version}"
                f" (got {membrane_depth!r}); leave it out to use the model's",
                field="membrane_depth",
            )
        encoded = encode_input(payload, dtesn.config.input_dim, field="input")
        return DTESNItem(encoded, depth, dtesn, f"{model.name}@{model.version}")

    def decode_as(self, payload: Any, field: str, membrane_depth: int | None) -> DTESNItem:
        """``decode``, naming ``field`` in the error when the input is bad."""
        if membrane_depth is None:
            depth = self.config.membrane_depth
        else:
            if (
                not isinstance(membrane_depth, int)
                or isinstance(membrane_depth, bool)
                or not 1 <= membrane_depth <= MAX_MEMBRANE_DEPTH
            ):
                raise InvalidRequest(
                    "membrane_depth must be an integer between 1 and "
                    f"{MAX_MEMBRANE_DEPTH} (got {membrane_depth!r})",
                    field="membrane_depth",
                )
            self.config_at(membrane_depth)
            depth = membrane_depth
        return DTESNItem(encode_input(payload, self.config.input_dim, field=field), depth)

    def group_key(self, item: DTESNItem) -> int | tuple[int, str]:
        return item.depth if item.ref is None else (item.depth, item.ref)

    def cache_key(self, item: DTESNItem) -> str:
        h = hashlib.blake2b(digest_size=20)
        if item.model is None:
            h.update(self.model_key(item.depth).encode())
        else:
            assert item.ref is not None
            h.update(b"v:" + item.ref.encode() + b"\x00" + item.model.cache_key().encode())
        h.update(b"\x00")
        enc = item.encoded
        if enc.text is not None:
            h.update(b"s")
            h.update(enc.text)
        else:
            assert enc.values is not None
            h.update(b"n")
            h.update(msgspec.json.encode(enc.values.tolist()))
        return h.hexdigest()

    def cost(self, item: DTESNItem) -> int:
        return -(-item.encoded.steps // STEPS_PER_COST_UNIT)

    def process_batch(self, items: Sequence[DTESNItem]) -> list[DTESNResult]:
        """One set of matrix products per time step for the items of each depth."""
        if not items:
            return []
        first = self.group_key(items[0])
        if all(self.group_key(item) == first for item in items):
            return self._run(self._item_model(items[0]), [item.encoded for item in items])
        out: list[DTESNResult | None] = [None] * len(items)
        groups: dict[int | tuple[int, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self.group_key(item), []).append(i)
        for idxs in groups.values():
            model = self._item_model(items[idxs[0]])
            encs = [items[i].encoded for i in idxs]
            for i, result in zip(idxs, self._run(model, encs), strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    def _item_model(self, item: DTESNItem) -> DTESNModel:
        return item.model if item.model is not None else self._model(item.depth)

    def process_single(self, items: Sequence[DTESNItem]) -> list[DTESNResult]:
        """The single-input path (``DTESNModel.process_one``) for a list of one item."""
        (item,) = items
        return [self._item_model(item).process_one(item.encoded)]

    def _run(self, model: DTESNModel, encs: list[EncodedInput]) -> list[DTESNResult]:
        if len(encs) == 1:
            return [model.process_one(encs[0])]
        return model.process_batch(encs)

    def encode(self, output: DTESNResult) -> dict[str, Any]:
        return output.to_dict()

    def statistics(self) -> DTESNEngineStatistics:
        return DTESNEngineStatistics(model_depths=tuple(sorted(self._models)))
