"""Result types of the disentanglement metrics.

Each metric returns a frozen dataclass that is also a read-only ``Mapping[str, float]`` over its
scalar scores (``result["mig"]``, ``dict(result)``), while matrices that a report may want (the
DCI importance matrix, the mutual-information matrix) stay available as attributes without
being part of the mapping. ``factor_indices`` names the columns of ``factors`` that were
scored: factors that take a single value are dropped
(see :func:`gmgcore.metrics.inputs.informative_factors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = [
    "MetricResult",
    "DCIResult",
    "MIGResult",
    "SAPResult",
    "ModularityExplicitnessResult",
    "FactorVAEResult",
    "BetaVAEResult",
]


@dataclass(frozen=True, eq=False)
class MetricResult(Mapping[str, float]):
    """Base class: the fields listed in ``score_keys`` form the mapping, as Python floats."""

    score_keys: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: str) -> float:
        if key not in self.score_keys:
            raise KeyError(key)
        return float(getattr(self, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self.score_keys)

    def __len__(self) -> int:
        return len(self.score_keys)


@dataclass(frozen=True, eq=False)
class DCIResult(MetricResult):
    """DCI scores; ``importance`` is ``R`` ``[n_codes, n_scored_factors]``, columns sum to 1 or 0.

    ``accuracy_train`` and ``accuracy_test`` ``[n_scored_factors]`` are the per-factor
    accuracies whose means are the two informativeness scores.
    """

    disentanglement: float
    completeness: float
    informativeness_train: float
    informativeness_test: float
    importance: np.ndarray = field(repr=False)
    accuracy_train: np.ndarray = field(repr=False)
    accuracy_test: np.ndarray = field(repr=False)
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = (
        "disentanglement",
        "completeness",
        "informativeness_train",
        "informativeness_test",
    )


@dataclass(frozen=True, eq=False)
class MIGResult(MetricResult):
    """MIG; ``mutual_info`` ``[n_codes, n_scored_factors]`` and ``factor_entropy`` in nats."""

    mig: float
    mutual_info: np.ndarray = field(repr=False)
    factor_entropy: np.ndarray = field(repr=False)
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = ("mig",)


@dataclass(frozen=True, eq=False)
class SAPResult(MetricResult):
    """SAP; ``score_matrix`` ``[n_codes, n_scored_factors]`` (accuracy or squared correlation)."""

    sap: float
    score_matrix: np.ndarray = field(repr=False)
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = ("sap",)


@dataclass(frozen=True, eq=False)
class ModularityExplicitnessResult(MetricResult):
    """Modularity and explicitness; ``mutual_info`` ``[n_codes, n_scored_factors]`` in nats."""

    modularity: float
    explicitness_train: float
    explicitness_test: float
    mutual_info: np.ndarray = field(repr=False)
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = (
        "modularity",
        "explicitness_train",
        "explicitness_test",
    )


@dataclass(frozen=True, eq=False)
class FactorVAEResult(MetricResult):
    """FactorVAE score; ``votes_train`` ``[n_scored_factors, n_codes]`` majority-vote counts."""

    train_accuracy: float
    eval_accuracy: float
    num_active_dims: int
    votes_train: np.ndarray = field(repr=False)
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = ("train_accuracy", "eval_accuracy", "num_active_dims")


@dataclass(frozen=True, eq=False)
class BetaVAEResult(MetricResult):
    """BetaVAE score: accuracies of a logistic regression predicting the fixed factor."""

    train_accuracy: float
    eval_accuracy: float
    factor_indices: tuple[int, ...] = ()

    score_keys: ClassVar[tuple[str, ...]] = ("train_accuracy", "eval_accuracy")
