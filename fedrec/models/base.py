"""The estimator API shared by every fedrec model (the role of implicit's ``RecommenderBase``).

Every model is fitted on an interaction table with **raw** ids and answers with raw ids:

* ``fit(interactions, user_features=None, item_features=None, validation=None) -> self``
* ``predict(pairs, unknown="fallback") -> np.ndarray`` for a DataFrame of ``user_id, item_id(, timestamp)``
* ``recommend(user_ids, k=10, filter_seen=True, filter_items=None) -> (item_ids, scores)`` (serving's
  spelling; ``N`` / ``filter_already_seen`` are deprecated aliases),
  batch first: row ``r`` belongs to ``user_ids[r]``; implemented once here from a per-model score
  matrix for a chunk of users (:meth:`Recommender._score_users`), so memory stays ``O(chunk * n_items)``
  and a single-user call returns the same row as the batch call. Ranking is :func:`top_k`, the one
  kernel ``serving.Scorer`` uses too: best first, equal scores by inner item id.
* ``save(directory)`` / ``Class.load(directory)``: a ``fedrec.model`` artifact
  (:mod:`fedrec.artifacts`: ``arrays.npz`` read with ``allow_pickle=False`` + ``meta.json`` with the
  model class, format version, hyperparameters, id maps, model state and ``content_sha256``), written
  atomically. A model saved before digests existed (no ``content_sha256``) still loads: every other
  check (format, listed arrays, shapes, dtypes) applies; a digest, when present, must match.

Unknown users/items (not seen at fit) get the model's own fallback: the model with that entity's
fields empty (FM: no id, history or feature terms; MF: no ``b_u``/``p_u``; popularity: the item score),
so an unknown user is ranked by ``score(i) = b_i``, the same in :meth:`Recommender.recommend` and in a
serving bundle exported from the model. Fallbacks are counted in ``last_fallbacks`` (input rows per
reason code, :data:`FALLBACKS`) and logged; ``unknown="raise"`` raises
:class:`~fedrec.data.idmap.UnknownIdError`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch

from fedrec.artifacts import ARRAYS_FILE, ArtifactError, read_artifact, write_artifact
from fedrec.data.dataset import Dataset
from fedrec.data.idmap import IdMap, UnknownIdError
from fedrec.progress import progress_bar

logger = logging.getLogger(__name__)

FORMAT_NAME = "fedrec.model"
META_FILE = "meta.json"
_REGISTRY: dict[str, type[Recommender]] = {}

# Reason codes of explicit fallbacks: the one vocabulary of ``last_fallbacks`` (library and vertical
# guest: counts of input rows) and of serving's per-user ``fallback`` column.
FALLBACK_NONE = "none"  #: the model's full score (serving's column only)
UNKNOWN_USER = "unknown_user"  #: not seen at fit: the user's fields are empty (ranked by b_i)
UNKNOWN_ITEM = "unknown_item"  #: not seen at fit: the item's fields are empty (predict)
NO_HOST_PARTIAL = "no_host_partial"  #: vertical FM, known user without host partials: z_H = 0, e_H = 0
FALLBACKS = (FALLBACK_NONE, UNKNOWN_USER, UNKNOWN_ITEM, NO_HOST_PARTIAL)


class ModelFormatError(ArtifactError):
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


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of every row of ``scores[n, m]``, best first: ``(idx[n, k], val[n, k])``.

    fedrec's one ranking kernel (:meth:`Recommender.recommend`, ``serving.Scorer``). Equal scores are
    ordered by column (inner item id) ascending, exactly as ``argsort(-scores, kind="stable")[:, :k]``;
    ``-inf`` marks a filtered item and ranks last. ``torch.topk`` finds the ``k + 1`` best; the rows
    whose ``k``-th and ``(k+1)``-th scores are equal, where a tie may straddle the cut (rare for
    real-valued scores, usual for counts or mostly filtered rows), are redone exactly: every score above
    the k-th, then the tied ones by column.
    """
    m = scores.shape[1] if scores.ndim == 2 else 0
    if scores.ndim != 2 or not 1 <= k <= m:
        raise ValueError(f"top_k: need a [n, m] score matrix and 1 <= k <= m, got {tuple(scores.shape)}, "
                         f"k={k}")
    val, idx = torch.topk(scores, min(k + 1, m), dim=1)
    if torch.isnan(val).any():
        raise ValueError("top_k: scores contain NaN")
    straddle = val[:, k] == val[:, k - 1] if k < m else torch.zeros(len(val), dtype=torch.bool)
    val, idx = val[:, :k].contiguous(), idx[:, :k].contiguous()
    kth = val[:, -1:]
    if straddle.any():
        rows = straddle.nonzero().squeeze(1)
        sub, sub_kth = scores[rows], kth[rows]
        above, tied = sub > sub_kth, sub == sub_kth
        need = k - above.sum(dim=1, keepdim=True)
        take = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= need))
        fixed = take.nonzero()[:, 1].view(-1, k)  # row-major: each row's k columns, ascending
        idx[rows], val[rows] = fixed, sub.gather(1, fixed)
    idx, perm = torch.sort(idx, dim=1)
    val, perm2 = torch.sort(val.gather(1, perm), dim=1, descending=True, stable=True)
    return idx.gather(1, perm2), val


def rank_items(score_rows: Callable[[int, int], np.ndarray], users: np.ndarray, k: int, *,
               seen: SeenItems | None, banned: np.ndarray, chunk_size: int = 256,
               show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner items ``(idx[n, k], scores[n, k])`` for request rows ``0..n-1``.

    ``score_rows(lo, hi)`` gives the ``[hi - lo, n_items]`` scores of rows ``lo:hi``; ``banned`` items and,
    when ``seen`` is given, the training items of ``users[r]`` (inner id, ``-1``: none) get ``-inf``;
    then :func:`top_k`. Memory is ``O(chunk_size * n_items)``."""
    n = len(users)
    out_idx = np.zeros((n, k), dtype=np.int64)
    out_scores = np.zeros((n, k), dtype=np.float64)
    for start in progress_bar(range(0, n, chunk_size), desc="recommend", disable=not show_progress):
        stop = min(start + chunk_size, n)
        scores = np.array(score_rows(start, stop), dtype=np.float64, copy=True)
        if banned.size:
            scores[:, banned] = -np.inf
        if seen is not None:
            for r, u in enumerate(users[start:stop]):
                scores[r, seen.row(int(u))] = -np.inf
        idx, val = top_k(torch.from_numpy(scores), k)
        out_idx[start:stop], out_scores[start:stop] = idx.numpy(), val.numpy()
    return out_idx, out_scores


def recommend_aliases(k: int, filter_seen: bool, N: int | None, filter_already_seen: bool | None
                      ) -> tuple[int, bool]:
    """``(k, filter_seen)`` after the deprecated spellings ``N`` / ``filter_already_seen`` (each warns;
    giving both spellings of one argument with different values is an error)."""
    import warnings

    for old, new, value in (("N", "k", N), ("filter_already_seen", "filter_seen", filter_already_seen)):
        if value is None:
            continue
        warnings.warn(f"recommend({old}=...) is deprecated; use {new}= (the spelling serving uses)",
                      DeprecationWarning, stacklevel=3)
        current = k if new == "k" else filter_seen
        default = 10 if new == "k" else True
        if current not in (default, value):
            raise TypeError(f"recommend: got {new}={current!r} and the deprecated {old}={value!r}; give one")
        if new == "k":
            k = int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
        else:
            filter_seen = bool(value)
    return k, filter_seen


def check_recommend_args(user_ids: Iterable[Any] | Any, k: int, filter_items: Iterable[Any] | None,
                         item_map: IdMap, chunk_size: int = 1) -> tuple[list[Any], np.ndarray]:
    """Validate ``recommend``'s arguments: ``(raw user ids as a list, inner ids of filter_items)``."""
    if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
        user_ids = [user_ids]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k > len(item_map):
        raise ValueError(f"k={k} exceeds the number of items the model knows ({len(item_map)})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    banned = np.zeros(0, dtype=np.int64)
    if filter_items is not None:
        try:
            banned = item_map.to_inner(list(filter_items), unknown="raise")
        except UnknownIdError as exc:
            raise ValueError(f"filter_items: {exc}") from exc
    return list(user_ids), banned


def canonical_order(interactions: pd.DataFrame) -> pd.DataFrame:
    """``interactions`` sorted by (user key, item key, timestamp, then every other column), so any
    permutation of the same rows gives the same table (``row_order="canonical"``)."""
    from fedrec.data.idmap import id_keys

    keys = pd.DataFrame({"u": id_keys(interactions["user_id"], source="interactions user_id"),
                         "i": id_keys(interactions["item_id"], source="interactions item_id"),
                         "t": interactions["timestamp"].to_numpy()})
    others = [c for c in interactions.columns if c not in ("user_id", "item_id", "timestamp")]
    for j, c in enumerate(others):
        keys[f"x{j}"] = interactions[c].to_numpy()
    order = keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()
    return interactions.iloc[order].reset_index(drop=True)


def check_replaceable(directory: Path, meta_file: str) -> None:
    """Saving replaces the whole directory: refuse one that holds files but no ``meta_file``."""
    if directory.exists() and (not directory.is_dir() or (
            any(directory.iterdir()) and not (directory / meta_file).is_file())):
        raise ArtifactError(f"{directory}: exists and is not a saved artifact (no {meta_file}); refusing to "
                            "replace it: save into a new or empty directory")


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
        if isinstance(inter, pd.DataFrame) and "rating" not in inter.columns:
            if not self.implicit_feedback:
                raise ValueError(f"interactions has no 'rating' column (it has {list(inter.columns)}): "
                                 f"{type(self).__name__} with these settings learns ratings; for implicit "
                                 "feedback use a ranking model (FactorizationMachine.for_ranking(), "
                                 "Popularity) or fedrec.data.implicit.implicit_interactions")
            logger.info("%s: interactions without 'rating': implicit feedback, every row a positive",
                        type(self).__name__)
            inter = inter.assign(rating=1.0)
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
    def implicit_feedback(self) -> bool:
        """Whether ``fit`` accepts interactions without a ``rating`` column (every row a positive): models
        configured with ``objective="ranking"`` (the FM, the vertical FM's guest) and popularity."""
        return getattr(getattr(self, "config", None), "objective", None) == "ranking"

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
            logger.info("%s: %d of %d %s id(s) unknown at fit time; their fields are empty (%r)",
                        type(self).__name__, n_unknown, len(inner), id_map.kind, what)
        return inner

    def predict(self, pairs: pd.DataFrame, unknown: str = "fallback") -> np.ndarray:
        """Predict for each row of ``pairs`` (``user_id, item_id`` and optionally ``timestamp``).

        Unknown ids use the model's documented fallback (counted in ``last_fallbacks``) unless
        ``unknown="raise"``.
        """
        user_map, item_map, _ = self._require_fitted()
        pairs = check_frame(pairs, "pairs", ("user_id", "item_id"))
        self.last_fallbacks = {}
        users = self._map_ids(pairs["user_id"], user_map, unknown, UNKNOWN_USER)
        items = self._map_ids(pairs["item_id"], item_map, unknown, UNKNOWN_ITEM)
        return np.asarray(self._predict_inner(users, items, pairs.reset_index(drop=True)), dtype=np.float64)

    def recommend(self, user_ids: Iterable[Any] | Any, k: int = 10, filter_seen: bool = True,
                  filter_items: Iterable[Any] | None = None, *, unknown: str = "fallback",
                  chunk_size: int = 256, show_progress: bool = False, N: int | None = None,
                  filter_already_seen: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each user: ``(item_ids[n, k] raw, scores[n, k])``, best first.

        ``k`` and ``filter_seen`` are spelled as in serving (``Scorer.recommend``); the older ``N`` and
        ``filter_already_seen`` still work as keywords and warn (``DeprecationWarning``).

        Ties are broken by inner item id (:func:`top_k`), so results are deterministic and a single-user
        call equals the corresponding row of a batch call. When fewer than ``N`` items remain for a
        user after filtering, the trailing slots have score ``-inf`` (their item ids are filtered
        items and must be ignored). Unknown users get the model's empty-user scores ``b_i``, no seen
        filtering (counted as ``last_fallbacks["unknown_user"]``).
        """
        k, filter_seen = recommend_aliases(k, filter_seen, N, filter_already_seen)
        user_map, item_map, seen = self._require_fitted()
        raw_users, banned = check_recommend_args(user_ids, k, filter_items, item_map, chunk_size)
        self.last_fallbacks = {}
        users = self._map_ids(raw_users, user_map, unknown, UNKNOWN_USER)
        idx, scores = rank_items(lambda lo, hi: self._score_users(users[lo:hi]), users, k,
                                 seen=seen if filter_seen else None, banned=banned,
                                 chunk_size=chunk_size, show_progress=show_progress)
        return item_map.to_raw(idx.ravel()).reshape(idx.shape), scores

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write the model atomically into ``directory`` (``arrays.npz`` + ``meta.json``, see the module
        docstring); a previous save there is replaced, a directory holding anything else is refused."""
        user_map, item_map, seen = self._require_fitted()
        path = Path(directory)
        check_replaceable(path, META_FILE)
        arrays, state = self._state()
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        arrays["seen_indptr"] = seen.indptr
        arrays["seen_indices"] = seen.indices
        meta = {"model_class": type(self).__name__, "hyperparameters": self.get_params(),
                "user_map": user_map.to_json(), "item_map": item_map.to_json(), "state": state}
        write_artifact(path, FORMAT_NAME, self.format_version, arrays, meta, meta_file=META_FILE)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Load a model saved by :meth:`save`; fails with :class:`ModelFormatError` naming file and field."""
        path = Path(directory)
        meta_path = path / META_FILE
        versions = {c.format_version for c in _REGISTRY.values()}
        try:
            art = read_artifact(path, FORMAT_NAME, versions, meta_file=META_FILE, require_digest=False,
                                required=("model_class", "hyperparameters", "user_map", "item_map", "state"))
        except ArtifactError as exc:
            raise ModelFormatError(str(exc)) from exc
        meta, arrays = art.meta, dict(art.arrays)
        name = meta["model_class"]
        target = _REGISTRY.get(name)
        if target is None or not issubclass(target, cls):
            raise ModelFormatError(f"{meta_path}: field 'model_class' is {name!r}, expected {cls.__name__}"
                                   " or a subclass")
        if art.format_version != target.format_version:
            raise ModelFormatError(f"{meta_path}: field 'format_version' is {art.format_version!r}, "
                                   f"{name} reads version {target.format_version}")
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
