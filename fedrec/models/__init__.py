"""Plaintext reference models behind one estimator API (see :mod:`fedrec.models.base`)."""

from fedrec.models.base import ModelFormatError, NotFittedError, Recommender, load_model
from fedrec.models.fm import FactorizationMachine, FMConfig, PartyTerms, ScoringFactors
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.models.popularity import Popularity, PopularityConfig

__all__ = [
    "BiasedMF", "FMConfig", "FactorizationMachine", "MFConfig", "ModelFormatError", "NotFittedError",
    "PartyTerms", "Popularity", "PopularityConfig", "Recommender", "ScoringFactors", "load_model",
]
