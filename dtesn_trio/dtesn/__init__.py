"""The DTESN engine: a deep tree echo state network and the processor that runs it.

``DTESNModel`` computes (synchronously, CPU); ``DTESNProcessor`` runs it in worker
threads under Trio without blocking the event loop or oversubscribing the cores.
"""

from dtesn_trio.dtesn.blas import available_cores, blas_threads
from dtesn_trio.dtesn.config import MAX_MEMBRANE_DEPTH, DTESNConfig
from dtesn_trio.dtesn.encoding import EncodedInput, InputLike, encode_input
from dtesn_trio.dtesn.engine_processes import EngineProcesses, open_engine_processes
from dtesn_trio.dtesn.model import (
    Checkpoint,
    DTESNModel,
    DTESNResult,
    Membrane,
    spectral_radius,
)
from dtesn_trio.dtesn.preemption import GateStatistics, PriorityGate
from dtesn_trio.dtesn.processor import (
    DTESNProcessor,
    ProcessorConfig,
    ProcessorStatistics,
    RateWindow,
)
from dtesn_trio.dtesn.readout import RidgeReadout
from dtesn_trio.dtesn.topology import a000081, membrane_count, tree_layout

__all__ = [
    "MAX_MEMBRANE_DEPTH",
    "Checkpoint",
    "DTESNConfig",
    "DTESNModel",
    "DTESNProcessor",
    "DTESNResult",
    "EncodedInput",
    "EngineProcesses",
    "GateStatistics",
    "InputLike",
    "Membrane",
    "PriorityGate",
    "ProcessorConfig",
    "ProcessorStatistics",
    "RateWindow",
    "RidgeReadout",
    "a000081",
    "available_cores",
    "blas_threads",
    "encode_input",
    "membrane_count",
    "open_engine_processes",
    "spectral_radius",
    "tree_layout",
]
