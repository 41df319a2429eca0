"""``ModelRegistry``: named, versioned DTESN models over a ``ModelStore``.

``await registry.resolve(ref)`` turns a request's ``model`` -- ``None`` (the server's
built-in model), ``"name"`` (its active version) or ``"name@version"`` -- into a
``ModelVersion``.  A request resolves once, when it starts, and carries the version it
got: an ``activate`` that lands while it runs changes what *later* requests resolve
to, never the model it is running on.  Activation itself is one upsert in the store,
so every instance sharing the database sees the switch at once and together.

Built models are kept in memory (the newest ``cache_size`` versions; reservoirs are
shared by versions of one config), so resolving a version costs one indexed read of
the active version; loading a version not yet built redraws its reservoir from its
config in a worker thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from dtesn_trio.dtesn import DTESNConfig, DTESNModel, RidgeReadout
from dtesn_trio.errors import InvalidRequest, ModelNotFound
from dtesn_trio.models.store import ModelStore
from dtesn_trio.models.version import ModelVersion, VersionInfo, readout_from_npz, readout_to_npz

__all__ = [
    "DEFAULT_MODEL",
    "ModelRegistry",
    "ModelRegistryStatistics",
    "UnknownModel",
    "check_name",
    "parse_ref",
    "parse_version",
]

DEFAULT_MODEL = "default"
MAX_FIT_RESERVOIR = 4096  # the largest reservoir a request may fit (beyond the server's)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


class UnknownModel(ModelNotFound):
    """No model by that name, or no such version of it: 404 ``model_not_found`` naming
    which (the code sessions use too)."""


def check_name(name: str, field: str = "name") -> str:
    """``name`` if it is a valid model name (1-64 of letters, digits, ``_.-``; not the
    reserved ``default``), else ``InvalidRequest``."""
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"model name must be 1-64 letters, digits, '_', '.' or '-' (got {name!r})",
            field=field,
        )
    if name == DEFAULT_MODEL:
        raise InvalidRequest(f"the model name {DEFAULT_MODEL!r} is reserved", field=field)
    return name


def parse_version(text: str, field: str = "version") -> int:
    """A version number (1 and up) from text, else ``InvalidRequest``."""
    if not _VERSION.fullmatch(text):
        raise InvalidRequest(f"version must be an integer >= 1 (got {text!r})", field=field)
    return int(text)


def parse_ref(ref: str, field: str = "model") -> tuple[str, int | None]:
    """``"name"`` -> ``(name, None)``; ``"name@3"`` -> ``(name, 3)``."""
    name, at, version = ref.partition("@")
    if at and not _VERSION.fullmatch(version):
        raise InvalidRequest(
            f"model must be 'name' or 'name@version' with a version >= 1 (got {ref!r})",
            field=field,
        )
    if name == DEFAULT_MODEL:
        if at:
            raise UnknownModel(
                f"the built-in model {DEFAULT_MODEL!r} has no versions: leave the version out",
                field=field,
            )
        return name, None
    check_name(name, field)
    return name, int(version) if at else None


@dataclass(frozen=True, slots=True)
class ModelRegistryStatistics:
    """Built models held in memory, and versions built since the registry was made."""

    versions_cached: int
    reservoirs_cached: int
    loads: int


class ModelRegistry:
    """See the module docstring.  ``default``: the server's built-in model (version 0);
    ``base_config``: the config a fit starts from (its ``config`` overrides fields)."""

    def __init__(
        self,
        store: ModelStore,
        default: Callable[[], DTESNModel],
        base_config: DTESNConfig,
        *,
        cache_size: int = 16,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.base_config = base_config
        self.now = wall_clock
        self._default = default
        self._cache_size = cache_size
        self._versions: OrderedDict[tuple[str, int], ModelVersion] = OrderedDict()
        self._reservoirs: OrderedDict[DTESNConfig, DTESNModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loads = 0

    def statistics(self) -> ModelRegistryStatistics:
        return ModelRegistryStatistics(len(self._versions), len(self._reservoirs), self._loads)

    # ---------------------------------------------------------------- resolving

    async def resolve(self, ref: str | None) -> ModelVersion:
        """The version ``ref`` names (see the module docstring); ``UnknownModel`` (404)
        for a name or version that does not exist, ``InvalidRequest`` for a bad ref."""
        if ref is None or ref == DEFAULT_MODEL:
            await trio.lowlevel.checkpoint()
            return ModelVersion(DEFAULT_MODEL, 0, self._default())
        name, version = parse_ref(ref)
        if version is None:
            version = await self.store.active(name)
            if version is None:
                raise UnknownModel(f"no model named {name!r}", field="model")
        return await self.get(name, version)

    async def get(self, name: str, version: int) -> ModelVersion:
        """Version ``version`` of ``name``, built (and kept) on first use."""
        cached = self._versions.get((name, version))
        if cached is not None:
            self._versions.move_to_end((name, version))
            await trio.lowlevel.checkpoint()
            return cached
        found = await self.store.version(name, version)
        if found is None:
            if await self.store.active(name) is None:
                raise UnknownModel(f"no model named {name!r}", field="model")
            raise UnknownModel(f"model {name!r} has no version {version}", field="model")
        info, blob = found
        model = await trio.to_thread.run_sync(self._build, info, blob)
        self._loads += 1
        resolved = ModelVersion(name, version, model, info)
        self._versions[(name, version)] = resolved
        while len(self._versions) > self._cache_size:
            self._versions.popitem(last=False)
        return resolved

    def _build(self, info: VersionInfo, blob: bytes) -> DTESNModel:
        reservoir = self.reservoir(DTESNConfig.from_dict(info.config))
        model = DTESNModel(reservoir.config, _membranes=list(reservoir.membranes))
        model.readout = readout_from_npz(blob)
        return model

    def reservoir(self, config: DTESNConfig) -> DTESNModel:
        """The reservoir of ``config`` without a readout, built once (synchronous:
        call it in a worker thread).  Shared: never attach a readout to it; the
        server's own config uses the engine's model (only its reservoir is read)."""
        if config == self.base_config:
            return self._default()
        with self._lock:
            model = self._reservoirs.get(config)
            if model is None:
                model = self._reservoirs[config] = DTESNModel(config)
                while len(self._reservoirs) > 4:
                    self._reservoirs.popitem(last=False)
            return model

    def config_for(self, overrides: dict[str, Any] | None, field: str = "config") -> DTESNConfig:
        """``base_config`` with ``overrides``; ``InvalidRequest`` naming a bad field."""
        try:
            config = DTESNConfig.from_dict({**self.base_config.to_dict(), **(overrides or {})})
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"{field}: {exc}", field=field) from None
        # a fit holds a reservoir_size^2 matrix: a request must not ask for gigabytes
        largest = max(self.base_config.reservoir_size, MAX_FIT_RESERVOIR)
        if config.reservoir_size > largest:
            raise InvalidRequest(
                f"{field}: reservoir_size must be <= {largest} (got {config.reservoir_size})",
                field=field,
            )
        return config

    # ---------------------------------------------------------------- versions

    async def add_version(
        self,
        name: str,
        config: DTESNConfig,
        readout: RidgeReadout,
        *,
        scores: dict[str, Any],
        fit: dict[str, Any],
        fit_id: str,
    ) -> VersionInfo:
        """Store a new immutable version (the first of a name becomes active)."""
        return await self.store.add_version(
            name,
            config=config.to_dict(),
            readout=readout_to_npz(readout),
            scores=scores,
            fit=fit,
            created_at=self.now(),
            fit_id=fit_id,
        )

    async def version_info(self, name: str, version: int) -> VersionInfo:
        """The stored record of ``version`` of ``name`` (no model built); ``UnknownModel``
        (404, ``field`` ``name`` or ``version``) naming which does not exist."""
        found = await self.store.version(name, version)
        if found is None:
            if await self.store.active(name) is None:
                raise UnknownModel(f"no model named {name!r}", field="name")
            raise UnknownModel(f"model {name!r} has no version {version}", field="version")
        return found[0]

    async def activate(self, name: str, version: int) -> None:
        """Make ``version`` the one ``resolve(name)`` returns, atomically."""
        if not await self.store.activate(name, version):
            if await self.store.active(name) is None:
                raise UnknownModel(f"no model named {name!r}", field="name")
            raise UnknownModel(f"model {name!r} has no version {version}", field="version")

    async def describe(self, name: str) -> dict[str, Any]:
        """``GET /v1/models/{name}``: the active version and every version's record."""
        versions = await self.store.versions(name)
        if not versions:
            raise UnknownModel(f"no model named {name!r}", field="name")
        active = await self.store.active(name)
        return {
            "name": name,
            "active_version": active,
            "versions": [v.to_dict(active) for v in versions],
        }

    async def list(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: every model's name, version count and active version."""
        return [
            {"name": name, "versions": count, "active_version": active}
            for name, count, active in await self.store.names()
        ]
