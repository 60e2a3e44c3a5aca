"""The estimator API shared by every fedrec model (the role of implicit's ``RecommenderBase``).

Every model is fitted on an interaction table with **raw** ids and answers with raw ids:

* ``fit(interactions, user_features=None, item_features=None, validation=None) -> self``
* ``predict(pairs, unknown="fallback") -> np.ndarray`` for a DataFrame of ``user_id, item_id(, timestamp)``
* ``recommend(user_ids, N=10, filter_already_seen=True, filter_items=None) -> (item_ids, scores)``,
  batch first: row ``r`` belongs to ``user_ids[r]``; implemented once here from a per-model score
  matrix for a chunk of users (:meth:`Recommender._score_users`), so memory stays ``O(chunk * n_items)``
  and a single-user call returns the same row as the batch call.
* ``save(directory)`` / ``Class.load(directory)``: ``arrays.npz`` (loaded with ``allow_pickle=False``)
  plus ``meta.json`` (model class, format version, hyperparameters, id maps, model state).

Unknown users/items (not seen at fit) get a documented per-model fallback and are counted in
``last_fallbacks`` and logged; ``unknown="raise"`` raises :class:`~fedrec.data.idmap.UnknownIdError`.
"""

from __future__ import annotations

import json
import logging
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from tqdm import tqdm

from fedrec.data.dataset import Dataset
from fedrec.data.idmap import IdMap, UnknownIdError

logger = logging.getLogger(__name__)

FORMAT_NAME = "fedrec.model"
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
_REGISTRY: dict[str, type[Recommender]] = {}


class ModelFormatError(ValueError):
    """A saved model directory is missing, corrupt or does not match the class loading it."""


class NotFittedError(RuntimeError):
    """The model was used before ``fit`` (or ``load``)."""


def check_frame(df: object, what: str, required: Sequence[str]) -> pd.DataFrame:
    """Validate that ``df`` is a DataFrame with the ``required`` columns and finite numeric values."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")
    for col in ("rating", "timestamp"):
        if col in required:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{what}: column {col!r} has {int(bad.sum())} non-finite/non-numeric "
                                 f"value(s), first at row {row} ({df[col].iloc[row]!r})")
    for col in ("user_id", "item_id"):
        if col in required and df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise ValueError(f"{what}: column {col!r} has a missing id at row {row}")
    return df


def unpack_fit_args(interactions: pd.DataFrame | Dataset, user_features: pd.DataFrame | None,
                    item_features: pd.DataFrame | None
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Accept a :class:`Dataset` in place of the interaction table (its side tables fill the gaps)."""
    if isinstance(interactions, Dataset):
        user_features = interactions.user_features if user_features is None else user_features
        item_features = interactions.item_features if item_features is None else item_features
        interactions = interactions.interactions
    return interactions, user_features, item_features


class SeenItems:
    """Per-user training items as CSR (``indptr[n_users+1]``, sorted ``indices``) over inner ids."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> SeenItems:
        pairs = np.unique(np.stack([users, items], axis=1), axis=0) if len(users) else np.zeros((0, 2))
        counts = np.bincount(pairs[:, 0].astype(np.int64), minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(indptr, pairs[:, 1].astype(np.int64))

    def row(self, user: int) -> np.ndarray:
        if user < 0:
            return np.zeros(0, dtype=np.int64)
        return self.indices[self.indptr[user]:self.indptr[user + 1]]


class Recommender(ABC):
    """Base class: id maps, argument validation, top-N, persistence. Subclasses implement the model."""

    format_version: ClassVar[int] = 1
    user_map: IdMap | None
    item_map: IdMap | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        self.user_map = None
        self.item_map = None
        self.seen: SeenItems | None = None
        self.last_fallbacks: dict[str, int] = {}

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def _fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
             item_features: pd.DataFrame | None, validation: object) -> None:
        """Build id maps (``self.user_map``, ``self.item_map``) and train."""

    @abstractmethod
    def _predict_inner(self, users: np.ndarray, items: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        """Predictions for inner ids (``-1`` = unknown: apply the model's fallback)."""

    @abstractmethod
    def _score_users(self, users: np.ndarray) -> np.ndarray:
        """Score matrix ``[len(users), n_items]`` (float64) for inner user ids (``-1`` = unknown)."""

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """JSON-safe hyperparameters; ``type(self)(**get_params())`` builds an unfitted twin."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted arrays and JSON-safe state for :meth:`save`."""

    @abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        """Restore from :meth:`_state` output; raise :class:`ModelFormatError` naming the field."""

    # ---------------------------------------------------------------- public API
    def fit(self, interactions: pd.DataFrame | Dataset, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, validation: object = None) -> Self:
        """Fit on ``interactions`` (``user_id, item_id, rating, timestamp``, raw ids). Returns ``self``."""
        inter, uf, itf = unpack_fit_args(interactions, user_features, item_features)
        inter = check_frame(inter, "interactions", ("user_id", "item_id", "rating", "timestamp"))
        if len(inter) == 0:
            raise ValueError("interactions is empty: nothing to fit")
        for name, table in (("user_features", uf), ("item_features", itf)):
            if table is not None and not isinstance(table, pd.DataFrame):
                raise TypeError(f"{name} must be a DataFrame indexed by raw id, got {type(table).__name__}")
        self._fit(inter.reset_index(drop=True), uf, itf, validation)
        assert self.user_map is not None and self.item_map is not None
        self.seen = SeenItems.from_pairs(self.user_map.to_inner(inter["user_id"]),
                                         self.item_map.to_inner(inter["item_id"]), len(self.user_map))
        return self

    @property
    def is_fitted(self) -> bool:
        return self.user_map is not None and self.item_map is not None and self.seen is not None

    def _require_fitted(self) -> tuple[IdMap, IdMap, SeenItems]:
        if self.user_map is None or self.item_map is None or self.seen is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")
        return self.user_map, self.item_map, self.seen

    def _map_ids(self, raw: Iterable[Any], id_map: IdMap, unknown: str, what: str) -> np.ndarray:
        if unknown not in ("fallback", "raise"):
            raise ValueError(f"unknown= must be 'fallback' or 'raise', got {unknown!r}")
        inner = id_map.to_inner(raw, unknown="raise" if unknown == "raise" else "mask")
        n_unknown = int((inner < 0).sum())
        self.last_fallbacks[what] = n_unknown
        if n_unknown:
            logger.info("%s: %d of %d %s id(s) unknown at fit time; using the %s fallback",
                        type(self).__name__, n_unknown, len(inner), id_map.kind, type(self).__name__)
        return inner

    def predict(self, pairs: pd.DataFrame, unknown: str = "fallback") -> np.ndarray:
        """Predict for each row of ``pairs`` (``user_id, item_id`` and optionally ``timestamp``).

        Unknown ids use the model's documented fallback (counted in ``last_fallbacks``) unless
        ``unknown="raise"``.
        """
        user_map, item_map, _ = self._require_fitted()
        pairs = check_frame(pairs, "pairs", ("user_id", "item_id"))
        self.last_fallbacks = {}
        users = self._map_ids(pairs["user_id"], user_map, unknown, "users")
        items = self._map_ids(pairs["item_id"], item_map, unknown, "items")
        return np.asarray(self._predict_inner(users, items, pairs.reset_index(drop=True)), dtype=np.float64)

    def recommend(self, user_ids: Iterable[Any] | Any, N: int = 10, filter_already_seen: bool = True,
                  filter_items: Iterable[Any] | None = None, *, unknown: str = "fallback",
                  chunk_size: int = 256, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for each user: ``(item_ids[n, N] raw, scores[n, N])``, best first.

        Ties are broken by inner item id (stable), so results are deterministic and a single-user
        call equals the corresponding row of a batch call. When fewer than ``N`` items remain for a
        user after filtering, the trailing slots have score ``-inf`` (their item ids are filtered
        items and must be ignored). Unknown users get the model's fallback scores, no seen filtering.
        """
        user_map, item_map, seen = self._require_fitted()
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
            user_ids = [user_ids]
        raw_users = list(user_ids)
        if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
            raise ValueError(f"N must be an integer >= 1, got {N!r}")
        if N > len(item_map):
            raise ValueError(f"N={N} exceeds the number of items the model knows ({len(item_map)})")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        banned = np.zeros(0, dtype=np.int64)
        if filter_items is not None:
            try:
                banned = item_map.to_inner(list(filter_items), unknown="raise")
            except UnknownIdError as exc:
                raise ValueError(f"filter_items: {exc}") from exc
        self.last_fallbacks = {}
        users = self._map_ids(raw_users, user_map, unknown, "users")
        out_idx = np.zeros((len(users), N), dtype=np.int64)
        out_scores = np.zeros((len(users), N), dtype=np.float64)
        starts = range(0, len(users), chunk_size)
        for start in tqdm(starts, desc="recommend", disable=not show_progress):
            chunk = users[start:start + chunk_size]
            scores = np.array(self._score_users(chunk), dtype=np.float64, copy=True)
            if banned.size:
                scores[:, banned] = -np.inf
            if filter_already_seen:
                for r, u in enumerate(chunk):
                    scores[r, seen.row(int(u))] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :N]
            out_idx[start:start + len(chunk)] = order
            out_scores[start:start + len(chunk)] = np.take_along_axis(scores, order, axis=1)
        return item_map.to_raw(out_idx.ravel()).reshape(out_idx.shape), out_scores

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``arrays.npz`` + ``meta.json`` into ``directory`` (created if needed)."""
        user_map, item_map, seen = self._require_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        arrays, state = self._state()
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        arrays["seen_indptr"] = seen.indptr
        arrays["seen_indices"] = seen.indices
        for name, arr in arrays.items():
            if arr.dtype == object:
                raise TypeError(f"array {name!r} has dtype object; only numeric arrays are saved")
        meta = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "model_class": type(self).__name__,
            "hyperparameters": self.get_params(),
            "user_map": user_map.to_json(),
            "item_map": item_map.to_json(),
            "state": state,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        }
        np.savez(path / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]
        (path / META_FILE).write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Load a model saved by :meth:`save`; fails with :class:`ModelFormatError` naming file and field."""
        path = Path(directory)
        meta_path = path / META_FILE
        meta = _read_meta(meta_path)
        name = meta["model_class"]
        target = _REGISTRY.get(name)
        if target is None or not issubclass(target, cls):
            raise ModelFormatError(f"{meta_path}: field 'model_class' is {name!r}, expected {cls.__name__}"
                                   " or a subclass")
        if meta["format_version"] != target.format_version:
            raise ModelFormatError(f"{meta_path}: field 'format_version' is {meta['format_version']!r}, "
                                   f"{name} reads version {target.format_version}")
        arrays = _read_arrays(path / ARRAYS_FILE, meta["arrays"], meta_path)
        params = meta["hyperparameters"]
        if not isinstance(params, dict):
            raise ModelFormatError(f"{meta_path}: field 'hyperparameters' must be an object")
        try:
            model = target(**params)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{meta_path}: field 'hyperparameters' is invalid: {exc}") from exc
        for key in ("user_map", "item_map"):
            try:
                setattr(model, key, IdMap.from_json(meta[key]))
            except (ValueError, TypeError) as exc:
                raise ModelFormatError(f"{meta_path}: field {key!r} is invalid: {exc}") from exc
        assert model.user_map is not None and model.item_map is not None
        indptr, indices = arrays.pop("seen_indptr", None), arrays.pop("seen_indices", None)
        if indptr is None or indices is None:
            raise ModelFormatError(f"{path / ARRAYS_FILE}: arrays 'seen_indptr'/'seen_indices' are missing")
        n_users, n_items = len(model.user_map), len(model.item_map)
        if (indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != len(indices)
                or np.any(np.diff(indptr) < 0) or (indices.size and (indices.min() < 0
                                                                     or indices.max() >= n_items))):
            raise ModelFormatError(f"{path / ARRAYS_FILE}: array 'seen_indptr'/'seen_indices' is not a "
                                   f"valid CSR over {n_users} users x {n_items} items")
        model.seen = SeenItems(indptr, indices)
        state = meta["state"]
        if not isinstance(state, dict):
            raise ModelFormatError(f"{meta_path}: field 'state' must be an object")
        try:
            model._set_state(arrays, state)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{meta_path}: field 'state' is invalid: {exc!r}") from exc
        return model


def expect_array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Fetch a saved array and check its shape (for :meth:`Recommender._set_state`)."""
    if name not in arrays:
        raise ModelFormatError(f"{ARRAYS_FILE}: array {name!r} is missing")
    arr = arrays[name]
    if tuple(arr.shape) != tuple(shape):
        raise ModelFormatError(f"{ARRAYS_FILE}: array {name!r} has shape {tuple(arr.shape)}, "
                               f"expected {tuple(shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ModelFormatError(f"{ARRAYS_FILE}: array {name!r} has non-numeric dtype {arr.dtype}")
    return arr


def _read_meta(meta_path: Path) -> dict[str, Any]:
    if not meta_path.is_file():
        raise ModelFormatError(f"{meta_path}: file not found (not a saved fedrec model directory?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_path}: top level must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{meta_path}: field 'format' is {meta.get('format')!r}, "
                               f"expected {FORMAT_NAME!r}")
    for key in ("format_version", "model_class", "hyperparameters", "user_map", "item_map", "state",
                "arrays"):
        if key not in meta:
            raise ModelFormatError(f"{meta_path}: field {key!r} is missing")
    if not isinstance(meta["arrays"], dict):
        raise ModelFormatError(f"{meta_path}: field 'arrays' must be an object")
    return meta


def _read_arrays(npz_path: Path, listed: dict[str, Any], meta_path: Path) -> dict[str, np.ndarray]:
    if not npz_path.is_file():
        raise ModelFormatError(f"{npz_path}: file not found")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFormatError(f"{npz_path}: cannot read arrays ({exc})") from exc
    for name, desc in listed.items():
        if name not in arrays:
            raise ModelFormatError(f"{npz_path}: array {name!r} listed in {meta_path.name} is missing")
        shape = list(arrays[name].shape)
        if not isinstance(desc, dict) or desc.get("shape") != shape or desc.get("dtype") != str(
                arrays[name].dtype):
            raise ModelFormatError(f"{npz_path}: array {name!r} is {arrays[name].dtype}{shape}, "
                                   f"{meta_path.name} field 'arrays.{name}' says {desc!r}")
    extra = sorted(set(arrays) - set(listed))
    if extra:
        raise ModelFormatError(f"{npz_path}: arrays {extra} are not listed in {meta_path.name}")
    return arrays


def load_model(directory: str | Path) -> Recommender:
    """Load any saved fedrec model (the class is read from ``meta.json``)."""
    return Recommender.load(directory)


def factor_scores(users: np.ndarray, a_u: np.ndarray, p_u: np.ndarray, b_i: np.ndarray,
                  q_i: np.ndarray) -> np.ndarray:
    """``score(u, i) = a_u + b_i + <p_u, q_i>`` for a chunk of inner users (``-1`` -> a=0, p=0)."""
    known = users >= 0
    safe = np.where(known, users, 0)
    a = np.where(known, a_u[safe], 0.0)
    p = p_u[safe] * known[:, None]
    return a[:, None] + b_i[None, :] + p @ q_i.T
