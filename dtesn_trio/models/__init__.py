"""Named, versioned DTESN models: the registry, its store, and training as durable jobs.

``ModelRegistry.resolve(ref)`` -> ``ModelVersion`` (``.name``, ``.version``,
``.model``); ``ModelStore`` keeps versions in the job store's database; the fit,
chunked-fit and search jobs are in :mod:`dtesn_trio.models.training` and
:mod:`dtesn_trio.models.search` (its default space: ``DEFAULT_SPACE``), the SVG of a
search's trials in :mod:`dtesn_trio.models.plot`.
"""

from dtesn_trio.models.registry import (
    DEFAULT_MODEL,
    ModelRegistry,
    UnknownModel,
    check_name,
    parse_ref,
)
from dtesn_trio.models.store import ModelStore, postgres_model_store, sqlite_model_store
from dtesn_trio.models.training import JOB_KINDS, ChunkConflict, run_job
from dtesn_trio.models.version import ModelVersion, VersionInfo

__all__ = [
    "DEFAULT_MODEL",
    "JOB_KINDS",
    "ChunkConflict",
    "ModelRegistry",
    "ModelStore",
    "ModelVersion",
    "UnknownModel",
    "VersionInfo",
    "check_name",
    "parse_ref",
    "postgres_model_store",
    "run_job",
    "sqlite_model_store",
]
