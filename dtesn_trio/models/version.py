"""``ModelVersion`` and the safe encoding of a trained readout (``.npz`` + JSON, no pickle).

A version stores what decides its answers: the reservoir's config (the reservoir is
redrawn from it -- same config and seed, same weights, bit for bit) and the readout's
weights.  The readout travels as NumPy ``.npz`` bytes holding only numeric arrays and a
JSON string, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dtesn_trio.dtesn import DTESNModel, RidgeReadout

__all__ = ["ModelVersion", "VersionInfo", "readout_from_npz", "readout_to_npz"]

_FORMAT = "dtesn-trio-readout/1"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One stored version without its weights: what ``GET /v1/models/{name}`` lists.

    ``scores``: the fit's figures (``train_nrmse``, ``validation_nrmse``, every alpha
    tried, every trial of a search).  ``fit``: how it was made (mode, washout, alpha,
    steps).  ``created_at``: seconds since the epoch."""

    name: str
    version: int
    config: dict[str, Any]
    scores: dict[str, Any]
    fit: dict[str, Any]
    created_at: float

    def to_dict(self, active: int | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "active": self.version == active,
            "config": self.config,
            "scores": self.scores,
            "fit": self.fit,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A resolved, immutable model version: ``name``, ``version`` (1, 2, ...; 0 is the
    server's built-in model, name ``"default"``) and ``model``, a ``DTESNModel`` with its
    readout attached.  Treat ``model`` as read only: it is shared by every request."""

    name: str
    version: int
    model: DTESNModel
    info: VersionInfo | None = field(default=None, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def readout_to_npz(readout: RidgeReadout) -> bytes:
    """The readout's weights and settings as ``.npz`` bytes."""
    if readout.weights is None:
        raise ValueError("readout is not fitted")
    meta = {
        "format": _FORMAT,
        "alpha": readout.alpha,
        "mode": readout.mode,
        "washout": readout.washout,
        "flat": readout._flat,
    }
    buf = io.BytesIO()
    np.savez(
        buf, weights=np.asarray(readout.weights, dtype=np.float64), meta=np.array(json.dumps(meta))
    )
    return buf.getvalue()


def readout_from_npz(data: bytes) -> RidgeReadout:
    """Inverse of :func:`readout_to_npz` (``allow_pickle=False``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        weights = np.asarray(z["weights"], dtype=np.float64)
    if meta.get("format") != _FORMAT:
        raise ValueError("not a dtesn-trio readout")
    readout = RidgeReadout(alpha=meta["alpha"], mode=meta["mode"], washout=meta["washout"])
    readout._flat = bool(meta["flat"])
    readout.weights = weights
    return readout
