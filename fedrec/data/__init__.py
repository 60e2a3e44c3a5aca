"""fedrec's data layer: the :class:`Dataset` type, id maps, loaders, validation, splits, partitions and
the built-in synthetic dataset."""

from fedrec.data.ads_split import load_talkingdata, synthetic_ads_split, talkingdata_split
from fedrec.data.dataset import INTERACTION_COLUMNS, Dataset
from fedrec.data.idmap import IdMap, UnknownIdError
from fedrec.data.movielens import (
    ChecksumError,
    download_movielens,
    load_ml1m,
    load_ml100k,
    load_ml100k_split,
    read_ml1m_movies,
    read_ml1m_users,
    read_ml100k_items,
    read_ml100k_users,
)
from fedrec.data.partition import GuestView, HostView, horizontal_split, vertical_split
from fedrec.data.schema import (
    DataValidationError,
    ValidationReport,
    validate_interactions,
    validate_side_table,
)
from fedrec.data.split import (
    cold_users,
    leave_last_out,
    pseudo_new_user_split,
    quantile_time,
    random_split,
    time_split,
    validation_split,
)
from fedrec.data.synthetic import SyntheticConfig, SyntheticData, SyntheticTruth, generate
from fedrec.data.tables import read_interactions, read_side_table, write_table

__all__ = [
    "INTERACTION_COLUMNS", "ChecksumError", "DataValidationError", "Dataset", "GuestView", "HostView",
    "IdMap",
    "SyntheticConfig", "SyntheticData", "SyntheticTruth", "UnknownIdError", "ValidationReport", "cold_users",
    "download_movielens", "generate", "horizontal_split", "leave_last_out", "load_ml1m", "load_ml100k",
    "load_ml100k_split", "pseudo_new_user_split", "quantile_time", "random_split", "read_interactions",
    "read_ml1m_movies", "read_ml1m_users", "read_ml100k_items", "read_ml100k_users", "read_side_table",
    "load_talkingdata", "synthetic_ads_split", "talkingdata_split",
    "time_split", "validate_interactions", "validate_side_table", "validation_split", "vertical_split",
    "write_table",
]
