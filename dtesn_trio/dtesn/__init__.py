"""The DTESN engine: a deep tree echo state network, the built-in engine.

``DTESNModel`` computes (synchronously, CPU); ``DTESNEngine`` puts it behind the engine
protocol (:mod:`dtesn_trio.engine`) that the runtime serves; ``DTESNProcessor`` is the
seed's processor API over the engine and the executor.
"""

from dtesn_trio.blas import available_cores, blas_threads
from dtesn_trio.dtesn.config import MAX_MEMBRANE_DEPTH, DTESNConfig
from dtesn_trio.dtesn.encoding import EncodedInput, InputLike, encode_input
from dtesn_trio.dtesn.engine import DTESNEngine, DTESNEngineStatistics, DTESNInput, DTESNItem
from dtesn_trio.dtesn.model import (
    Checkpoint,
    DTESNModel,
    DTESNResult,
    Membrane,
    spectral_radius,
)
from dtesn_trio.dtesn.processor import DTESNProcessor, ProcessorStatistics
from dtesn_trio.dtesn.readout import RidgeReadout
from dtesn_trio.dtesn.topology import a000081, membrane_count, tree_layout
from dtesn_trio.executor import ProcessorConfig, RateWindow

__all__ = [
    "MAX_MEMBRANE_DEPTH",
    "Checkpoint",
    "DTESNConfig",
    "DTESNEngine",
    "DTESNEngineStatistics",
    "DTESNInput",
    "DTESNItem",
    "DTESNModel",
    "DTESNProcessor",
    "DTESNResult",
    "EncodedInput",
    "InputLike",
    "Membrane",
    "ProcessorConfig",
    "ProcessorStatistics",
    "RateWindow",
    "RidgeReadout",
    "a000081",
    "available_cores",
    "blas_threads",
    "encode_input",
    "membrane_count",
    "spectral_radius",
    "tree_layout",
]
