"""Classifier heads: random projection + analytic ridge (Gram and recursive forms), NCM, linear/cosine."""

from pace.heads.analytic import (
    RIDGE_GRID,
    AnalyticHead,
    RandomProjection,
    RidgePath,
    RidgeSelection,
    cheaper_form,
    fit_session_ranpac,
    select_ridge,
    select_ridge_direct,
    select_ridge_reference,
    solve_ridge,
)
from pace.heads.linear import CosineHead, LinearHead
from pace.heads.ncm import NCMHead

__all__ = [
    "RIDGE_GRID",
    "AnalyticHead",
    "CosineHead",
    "LinearHead",
    "NCMHead",
    "RandomProjection",
    "RidgePath",
    "RidgeSelection",
    "cheaper_form",
    "fit_session_ranpac",
    "select_ridge",
    "select_ridge_direct",
    "select_ridge_reference",
    "solve_ridge",
]
