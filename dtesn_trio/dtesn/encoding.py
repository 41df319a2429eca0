"""How an input becomes a sequence of steps.

- Text (``str`` → its UTF-8 bytes, or ``bytes``/``bytearray``): one step per byte; byte
  ``b`` drives every one of the ``input_dim`` inputs with ``u = (b - 127.5) / 127.5``,
  a value in ``[-1, 1]``.
- Numeric: a ``T × D`` float array (or nested sequences), ``D == input_dim``; a 1-D
  array of length ``T`` is accepted when ``input_dim == 1``. Values must be finite.

Empty inputs are rejected: a reservoir that never stepped has nothing to say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from dtesn_trio.errors import InvalidRequest

__all__ = ["EncodedInput", "InputLike", "encode_input", "text_values"]

InputLike: TypeAlias = (
    str | bytes | bytearray | npt.NDArray[np.floating] | Sequence[float] | Sequence[Sequence[float]]
)

FloatArray: TypeAlias = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class EncodedInput:
    """A validated input: ``text`` (bytes) or ``values`` (``T × D`` float64)."""

    text: bytes | None
    values: FloatArray | None

    @property
    def steps(self) -> int:
        if self.text is not None:
            return len(self.text)
        assert self.values is not None
        return int(self.values.shape[0])


def text_values(byte_codes: npt.NDArray[np.integer]) -> FloatArray:
    """The scalar drive of each byte: ``(b - 127.5) / 127.5``."""
    return (byte_codes.astype(np.float64) - 127.5) / 127.5


def encode_input(x: object, input_dim: int, *, field: str = "input") -> EncodedInput:
    """Validate one input; raise :class:`InvalidRequest` naming ``field`` when it is bad."""
    if isinstance(x, str):
        data = x.encode("utf-8")
        if not data:
            raise InvalidRequest(f"{field} must not be empty", field=field)
        return EncodedInput(data, None)
    if isinstance(x, bytes | bytearray | memoryview):
        data = bytes(x)
        if not data:
            raise InvalidRequest(f"{field} must not be empty", field=field)
        return EncodedInput(data, None)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"{field} must be text or a T x {input_dim} array of numbers ({exc})", field=field
        ) from None
    if arr.ndim == 1 and input_dim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != input_dim:
        raise InvalidRequest(
            f"{field} must be a T x {input_dim} array (got shape {arr.shape})", field=field
        )
    if arr.shape[0] == 0:
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if not np.isfinite(arr).all():
        raise InvalidRequest(f"{field} must contain only finite numbers", field=field)
    return EncodedInput(None, np.ascontiguousarray(arr))
