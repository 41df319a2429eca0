"""Where a session's model comes from: ``ModelSource.resolve(ref) -> ModelVersion``.

``ref`` is ``"name"`` (the name's active version), ``"name@version"``, or ``None``
(the server's built-in model).  ``dtesn_trio.models.ModelRegistry`` is one.  A session resolves its ``ref`` once, when it opens,
and keeps that version (its ``name`` and ``version``) for its whole life, whatever is
activated later.  ``BuiltinModelSource`` knows only the runtime's own DTESN model,
``default`` version 0; the model registry implements the same protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import trio

from dtesn_trio.dtesn.model import DTESNModel
from dtesn_trio.errors import InvalidRequest, ModelNotFound

__all__ = ["BuiltinModelSource", "ModelSource", "ModelVersion", "parse_ref"]

DEFAULT_MODEL = "default"


@runtime_checkable
class ModelVersion(Protocol):
    """One immutable version of a named model."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def model(self) -> DTESNModel: ...


@runtime_checkable
class ModelSource(Protocol):
    """Resolves a model reference; an unknown name or version raises
    ``ModelNotFound`` (404) naming it, a malformed ``ref`` ``InvalidRequest``."""

    async def resolve(self, ref: str | None) -> ModelVersion: ...


def parse_ref(ref: str, field: str = "model") -> tuple[str, int | None]:
    """``"name"`` -> ``(name, None)``; ``"name@3"`` -> ``(name, 3)``."""
    name, sep, version = ref.partition("@")
    if not name or (sep and not version.isdigit()):
        raise InvalidRequest(
            f"{field} must be 'name' or 'name@version' with a whole version (got {ref!r})",
            field=field,
        )
    return name, int(version) if sep else None


class _Builtin:
    __slots__ = ("model",)

    name = DEFAULT_MODEL
    version = 0

    def __init__(self, model: DTESNModel) -> None:
        self.model = model


class BuiltinModelSource:
    """The runtime's built-in model as ``default`` (version 0); nothing else."""

    def __init__(self, model: DTESNModel) -> None:
        self._version = _Builtin(model)

    async def resolve(self, ref: str | None) -> ModelVersion:
        await trio.lowlevel.checkpoint()
        if ref is None:
            return self._version
        name, version = parse_ref(ref)
        if name != DEFAULT_MODEL:
            raise ModelNotFound(
                f"no model named {name!r} (this server has only {DEFAULT_MODEL!r})",
                field="model",
            )
        if version not in (None, 0):
            raise ModelNotFound(
                f"model {DEFAULT_MODEL!r} has no version {version} (it has only 0)",
                field="model",
            )
        return self._version
