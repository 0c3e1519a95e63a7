"""Disentanglement metrics on codes ``[n, n_codes]`` (float) and factors ``[n, n_factors]``
(integer classes), with disentanglement_lib's semantics unless a docstring says otherwise.

- :func:`dci` (Eastwood & Williams 2018), :func:`mig` (Chen et al. 2018), :func:`sap`
  (Kumar et al. 2018), :func:`modularity_explicitness` (Ridgeway & Mozer 2018): pure functions
  of codes and factors.
- :func:`factor_vae_score` (Kim & Mnih 2018) and :func:`beta_vae_score` (Higgins et al. 2017):
  sample from a ground-truth data set and call an encoder.

Each returns a result that is a ``Mapping[str, float]`` of its scores and also carries the
matrices behind them (see :mod:`gmgcore.metrics.results`).
"""

from gmgcore.metrics.beta_vae import beta_vae_score
from gmgcore.metrics.boosting import BACKENDS as DCI_BACKENDS
from gmgcore.metrics.boosting import DCIBackend, importance_matrix
from gmgcore.metrics.dci import completeness, dci, disentanglement
from gmgcore.metrics.factor_vae import factor_vae_score
from gmgcore.metrics.information import (
    entropy,
    histogram_discretize,
    mutual_info_matrix,
    mutual_information,
)
from gmgcore.metrics.inputs import ConstantFactorWarning
from gmgcore.metrics.mig import mig, mig_from_mutual_info
from gmgcore.metrics.modularity import modularity_explicitness, modularity_from_mutual_info
from gmgcore.metrics.results import (
    BetaVAEResult,
    DCIResult,
    FactorVAEResult,
    MetricResult,
    MIGResult,
    ModularityExplicitnessResult,
    SAPResult,
)
from gmgcore.metrics.sampling import Encoder, GroundTruthData
from gmgcore.metrics.sap import sap, sap_from_scores

__all__ = [
    "dci",
    "disentanglement",
    "completeness",
    "importance_matrix",
    "DCIBackend",
    "DCI_BACKENDS",
    "mig",
    "mig_from_mutual_info",
    "sap",
    "sap_from_scores",
    "modularity_explicitness",
    "modularity_from_mutual_info",
    "factor_vae_score",
    "beta_vae_score",
    "histogram_discretize",
    "mutual_information",
    "mutual_info_matrix",
    "entropy",
    "ConstantFactorWarning",
    "Encoder",
    "GroundTruthData",
    "MetricResult",
    "DCIResult",
    "MIGResult",
    "SAPResult",
    "ModularityExplicitnessResult",
    "FactorVAEResult",
    "BetaVAEResult",
]
