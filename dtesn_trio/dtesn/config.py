"""The model's configuration: a frozen, validated dataclass with a stable cache key."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from dtesn_trio import _checks

__all__ = ["MAX_MEMBRANE_DEPTH", "DTESNConfig"]

MAX_MEMBRANE_DEPTH = 8


@dataclass(frozen=True)
class DTESNConfig:
    """Hyperparameters of a deep tree echo state network.

    ``reservoir_size`` is the total number of units over all membranes; it is split as
    evenly as possible between the ``sum(A000081(k) for k in 1..membrane_depth)``
    membranes (so it must be at least that count: 8 for depth 4, 200 for depth 8).
    Every random draw comes from ``numpy.random.default_rng(seed)``: the same config
    builds the same weights, bit for bit.

    - ``spectral_radius``: each membrane's recurrent matrix ``W`` is rescaled to it.
    - ``leak_rate``: ``a`` in ``x' = (1 - a) x + a tanh(...)``.
    - ``input_scaling``: ``W_in`` entries are uniform in ``[-input_scaling, input_scaling]``.
    - ``sparsity``: fraction of non-zero entries of ``W`` and ``W_parent`` (0 < s <= 1).
    - ``input_dim``: ``D`` of numeric inputs (``T × D``); text drives all ``D`` inputs
      with the same byte value.
    - ``bias_scaling``: ``bias`` entries are uniform in ``[-bias_scaling, bias_scaling]``.
    - ``parent_scaling``: ``W_parent`` entries are uniform in
      ``[-parent_scaling, parent_scaling]``.
    """

    membrane_depth: int = 4
    reservoir_size: int = 1024
    spectral_radius: float = 0.95
    leak_rate: float = 0.3
    input_scaling: float = 1.0
    sparsity: float = 0.1
    seed: int = 42
    input_dim: int = 1
    bias_scaling: float = 0.5
    parent_scaling: float = 0.2

    def __post_init__(self) -> None:
        _checks.integer("model.membrane_depth", self.membrane_depth)
        _checks.in_range("model.membrane_depth", self.membrane_depth, 1, MAX_MEMBRANE_DEPTH)
        _checks.integer("model.reservoir_size", self.reservoir_size, minimum=1)
        from dtesn_trio.dtesn.topology import membrane_count

        needed = membrane_count(self.membrane_depth)
        if self.reservoir_size < needed:
            raise ValueError(
                f"model.reservoir_size must be >= {needed} for membrane_depth "
                f"{self.membrane_depth}, one unit per membrane (got {self.reservoir_size})"
            )
        _checks.non_negative("model.spectral_radius", self.spectral_radius)
        _checks.in_range("model.leak_rate", self.leak_rate, 0.0, 1.0)
        if self.leak_rate == 0:
            raise ValueError("model.leak_rate must be > 0 (got 0)")
        _checks.non_negative("model.input_scaling", self.input_scaling)
        _checks.in_range("model.sparsity", self.sparsity, 0.0, 1.0)
        if self.sparsity == 0:
            raise ValueError("model.sparsity must be > 0 (got 0)")
        _checks.integer("model.seed", self.seed, minimum=0)
        _checks.integer("model.input_dim", self.input_dim, minimum=1)
        _checks.non_negative("model.bias_scaling", self.bias_scaling)
        _checks.non_negative("model.parent_scaling", self.parent_scaling)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DTESNConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model has no field {unknown[0]!r}")
        return cls(**data)

    def cache_key(self) -> str:
        """A stable hash of every field (same across processes and runs)."""
        return _config_key(self)


@functools.lru_cache(maxsize=64)
def _config_key(config: DTESNConfig) -> str:
    # Asked for on every request that may hit the result cache: computed once a config.
    blob = json.dumps({"v": 1, **config.to_dict()}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
