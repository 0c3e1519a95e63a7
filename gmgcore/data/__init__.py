"""Ground-truth data sets: procedural renderers (offline, the default) and readers of real files.

``get_dataset(name, **options)`` returns a :class:`GroundTruthData` with ``factor_names``,
``factor_sizes``, ``factor_values``, ``observation_shape``, ``num_images``,
``images(classes [n, k]) -> uint8 [n, 64, 64(, 3)]``, ``sample_factors(n, rng)``,
``index_to_classes`` and ``classes_to_index``. Names:

- ``dsprites_procedural``: dSprites rendered from its factors (no file needed);
- ``shapes3d_procedural``: a new procedural data set with Shapes3D's factor structure
  (not Shapes3D itself; scores are not comparable with published Shapes3D numbers);
- ``dsprites``, ``shapes3d``, ``mpi3d``, ``smallnorb``, ``cars3d``: the published files,
  read from ``path=...``.

``get_dataset(data.name, **data.options)`` rebuilds an equal data set, which is how a stored
manifest (dataset + options) recovers its ground truth.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from gmgcore.data.base import ArrayGroundTruthData, GroundTruthData
from gmgcore.data.cars3d import load_cars3d
from gmgcore.data.dsprites_procedural import DSpritesProcedural
from gmgcore.data.readers import load_dsprites, load_mpi3d, load_shapes3d
from gmgcore.data.shapes3d_procedural import Shapes3DProcedural
from gmgcore.data.smallnorb import load_smallnorb

__all__ = [
    "ArrayGroundTruthData",
    "DATASETS",
    "DSpritesProcedural",
    "GroundTruthData",
    "Shapes3DProcedural",
    "get_dataset",
]

DATASETS: dict[str, Callable[..., GroundTruthData]] = {
    "dsprites_procedural": DSpritesProcedural,
    "shapes3d_procedural": Shapes3DProcedural,
    "dsprites": load_dsprites,
    "shapes3d": load_shapes3d,
    "mpi3d": load_mpi3d,
    "smallnorb": load_smallnorb,
    "cars3d": load_cars3d,
}


def get_dataset(name: str, **options: Any) -> GroundTruthData:
    """Build the data set ``name`` with ``options``; unknown names or options raise ValueError.

    Procedural data sets are cached per process (their geometry caches are costly to warm).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    factory = DATASETS[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        allowed = sorted(p for p in params if p != "self") or "none"
        raise ValueError(f"dataset {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
    missing = sorted(
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty and p.name not in options
    )
    if missing:
        raise ValueError(f"dataset {name!r}: missing option(s) {missing} (e.g. path=...)")
    if not params:
        return _procedural(name)
    return factory(**options)


@functools.cache
def _procedural(name: str) -> GroundTruthData:
    return DATASETS[name]()
