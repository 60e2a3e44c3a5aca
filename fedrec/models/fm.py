"""Factorization machine over fields (torch, CPU): the centralized reference of the vertical FM.

Model (fields and their owners/sides in :mod:`fedrec.models.fields`, arithmetic in
:mod:`fedrec.models.fm_core`)::

    z(u, i, t) = w0 + Σ_j w_j x_j + Σ_{j<l} <v_j, v_l> x_j x_l

Fields (any subset, chosen by the ``use_*`` arguments):

====================  =====  =======  ======================================================
field                 owner  side     features
====================  =====  =======  ======================================================
``user_id``           guest  user     one-hot user (only users with training rows)
``history``           guest  user     SVD++ implicit set: ``|N(u)|^{-1/2}`` on each train item
``history_length``    guest  user     standardised ``log1p |N(u)|``
``user_features``     host   user     the ``user_features`` table (categorical one-hot, numeric)
``item_id``           guest  item     one-hot item
``item_features``     guest  item     the ``item_features`` table
``item_age``          guest  context  standardised ``log1p(days since the item's first train row)``
``recent_items``      guest  user     the customer's last ``recent_items_n`` items, weights
                                      ``∝ 2^{-age/recency_half_life_days}`` (opt-in)
``recent_popularity_  guest  context  standardised ``log1p`` of the item's train rows in the
<D>d``                                ``D`` days before the sample's time, per ``D`` in
                                      ``recent_windows_days`` (opt-in; at recommendation time
                                      ``T``: the last ``D`` days, joins ``q_i``)
====================  =====  =======  ======================================================

The time-aware fields (:mod:`fedrec.data.features_time`) are the guest's, so the vertical FM uses them
with no protocol change; ``FactorizationMachine.ids_only()`` is the FM of the two id fields alone.

Objectives and losses (``ŷ = z``; ``σ`` the logistic function; ``R(b) = Σ_f Σ_{j∈f} x_j²
(λ_f ‖v_j‖² + λ_w w_j²)`` the per-sample L2 of the parameters sample ``b`` touches):

* ``regression``: ``mean_b (z_b − r_b)² + mean_b R(b)``; ``w0`` starts at the train mean rating
  (global-mean centering); predictions are clipped to the rating scale.
* ``logistic``: ``mean_b BCE(σ(z_b), y_b) + mean_b R(b)`` on 0/1 labels; ``predict`` returns ``σ(z)``.
* ``ranking`` (implicit feedback): each row is a positive; ``n_negatives`` items per positive are
  drawn uniformly each epoch; ``loss="bce"``: ``BCE(σ(z⁺), 1) + mean BCE(σ(z⁻), 0)``;
  ``loss="bpr"``: ``−mean log σ(z⁺ − z⁻)``; ``predict`` returns ``z``. ``negatives="popularity"``
  draws negatives with ``P(i) ∝ (n_i + 1)^negative_alpha`` instead (``n_i`` the item's training rows);
  ``weight_column`` weights each positive's terms (``Σ w ℓ / Σ w``; e.g. the count/recency weights of
  :func:`fedrec.data.implicit.implicit_interactions`). Interactions without ``rating`` are accepted
  (every row a positive).

Update: ``optimizer="adam"`` (default) or ``"sgd"`` (``lr``) on mini-batches, early stopping on a
validation set (see :mod:`fedrec.models.training` for the updates and the batching order, a function of
``seed``). Initial parameters: ``w = 0``, ``V_f ~ N(0, init_std²)`` drawn field by field from
``torch.Generator().manual_seed(seed)`` (:meth:`FactorizationMachine.init_params`). The validation set is
``fit(validation=DataFrame)``, or carved from the training rows: ``"random"`` (a random
``validation_fraction`` of rows), ``"cold"`` (``pseudo_new_user_split``: ``cold_user_fraction`` of the
users keep only their first ``cold_keep_first`` rows by time; early stopping on their other rows —
cold-aware model selection), ``"last"`` (each user's last row by time: the leave-last-out slice of the
training data) or ``"none"`` (train all ``epochs``). ``early_stopping="hr"|"ndcg"`` (ranking only)
stops on full-ranking HR/NDCG@``ranking_k`` of the validation users instead of the sampled loss
(:class:`fedrec.models.ranking.RankingTarget`); ``refit=True`` then trains again on all rows for the
selected number of epochs (``selection_history`` keeps the selecting run). ``row_order="canonical"``
sorts the rows by (user, item, time) first, so results depend on the seed and the rows, not their order.
``FactorizationMachine.for_ranking()`` sets all of these as issue #12's benchmark tunes them.

Code: the fields are built in :mod:`fedrec.models.fm_fields`, the losses, validation metric, row weights
and output transform are :mod:`fedrec.models.fm_objective`, persistence :mod:`fedrec.models.fm_state`;
this module is the model (forward, fit, predict, decompositions).

Decompositions: ``party_terms`` gives ``z = z_G + z_H + <e_G, e_H>`` (DESIGN §4.2);
``scoring_factors(at)`` gives ``score(u, i) = a_u + b_i + <p_u, q_i>`` at time ``at`` (recommendation
is one matmul). Unknown users/items: their fields are empty (the model without their id, history and
feature terms); ``item_age`` of an unknown item is the training mean.

Defaults (``n_factors=32, lr=1e-3, l2_factors=0.1, l2_linear=0.01, init_std=0.05, batch_size=512,
patience=4``) were chosen by ``benchmarks/accuracy.py --search``: fit on the ML-100K fixed-split train
set minus a 10% validation split, scored on that split only (never the test set). Validation RMSE:
start (lr 2e-3, l2 0.05) 0.8995; l2 0.1: 0.8935; l2 0.2: 0.899; l2 0.02: 0.906; 64 factors: 0.8997;
lr 1e-3: 0.8927; lr 1e-3 + l2 0.1: 0.8931 (chosen: the stronger L2 at equal accuracy); + 16
factors: 0.8953; + init_std 0.01: 0.8928; + history L2 0.02: 0.8935.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any, Self

import numpy as np
import pandas as pd
import torch

from fedrec.data.features_time import ItemEvents
from fedrec.models.base import Recommender, canonical_order, factor_scores
from fedrec.models.fields import Csr, FieldSpec, TableEncoder
from fedrec.models.fm_config import VALIDATIONS, FMConfig, PartyTerms, ScoringFactors, ValidationRows
from fedrec.models.fm_core import FieldTerms, FMParams, combine, fm_output
from fedrec.models.fm_fields import DAY, FMFields
from fedrec.models.fm_objective import FMObjective, popularity_cdf
from fedrec.models.fm_state import dump_state, load_state
from fedrec.models.training import Trainer, TrainHistory, random_holdout

__all__ = ["DAY", "FMConfig", "FactorizationMachine", "PartyTerms", "ScoringFactors", "ValidationRows",
           "popularity_cdf"]

logger = logging.getLogger(__name__)

_PRED_CHUNK = 65536


class FactorizationMachine(FMFields, FMObjective, Recommender):
    """Field-aware-owner FM with regression / logistic / ranking objectives (see module docstring)."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        names = {f.name for f in fields(FMConfig)}
        bad = sorted(set(params) - names)
        if bad:
            raise TypeError(f"FactorizationMachine: unknown argument(s) {bad}; allowed: {sorted(names)}")
        self.config = FMConfig(**params)
        self.params: FMParams | None = None
        self.field_specs: list[FieldSpec] = []
        self.tables: dict[str, Csr] = {}
        self.encoders: dict[str, TableEncoder] = {}
        self.age_norm = (0.0, 1.0)
        self.item_first_seen = np.zeros(0, dtype=np.int64)
        self.reference_time = 0
        self.rating_scale = (1.0, 5.0)
        self.history = TrainHistory()
        self._factor_cache: ScoringFactors | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._negative_cdf: np.ndarray | None = None
        #: ``use_recent_popularity``: the items' training timestamps and, per context field, its window
        #: (days) and standardisation (mean, std)
        self.item_events: ItemEvents | None = None
        self.context_windows: dict[str, tuple[float, float, float]] = {}
        #: with ``refit``: the history of the fit that selected the epoch count
        self.selection_history: TrainHistory | None = None

    @classmethod
    def ids_only(cls, **params: Any) -> FactorizationMachine:
        """An FM of the user and item ids alone (``ŷ = w0 + w_u + w_i + <v_u, v_i>``: biased MF); ``params``
        as for the constructor (``use_*`` flags other than the ids may not be given)."""
        flags = {f"use_{n}": False for n in ("history", "history_length", "user_features", "item_features",
                                              "item_age", "recent_items", "recent_popularity")}
        clash = sorted(set(flags) & set(params))
        if clash:
            raise TypeError(f"FactorizationMachine.ids_only: {clash} cannot be set (the model has the ids "
                            "only)")
        return cls(**flags, **params)

    @classmethod
    def for_ranking(cls, **params: Any) -> FactorizationMachine:
        """An FM trained to rank implicit feedback the way issue #12's benchmark tunes it: BPR with 4
        popularity-aware negatives, early stopping on NDCG@10 of each user's last training interaction,
        refit on all rows, canonical row order. ``params`` override any of these."""
        defaults: dict[str, Any] = {"objective": "ranking", "loss": "bpr", "n_negatives": 4,
                                    "negatives": "popularity", "validation": "last",
                                    "early_stopping": "ndcg", "refit": True, "row_order": "canonical",
                                    "use_item_age": False}
        return cls(**{**defaults, **params})

    def get_params(self) -> dict[str, Any]:
        return asdict(self.config)

    # ------------------------------------------------------------------ forward
    def terms(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> list[FieldTerms]:
        """Per-field terms (:class:`FieldTerms`, fields in model order) of the samples ``(users[s],
        items[s], ts[s])`` (inner ids, ``-1`` = unknown: empty field)."""
        assert self.params is not None
        by_side: dict[str, list[FieldSpec]] = {"user": [], "item": [], "context": []}
        for spec in self.field_specs:
            by_side[spec.side].append(spec)
        terms = self.params.entity_terms(by_side["user"], self.tables, users)
        terms += self.params.entity_terms(by_side["item"], self.tables, items)
        for spec in by_side["context"]:
            terms.append(self.params.numeric_terms(spec, self._context_feature(spec, items, ts)))
        return terms

    def _z(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.params is not None
        terms = self.terms(users, items, ts)
        reg = torch.zeros(len(users))
        for t in terms:
            reg = reg + t.reg
        return fm_output(terms, self.params.bias, len(users), self.config.n_factors), reg

    def _timestamps(self, pairs: pd.DataFrame) -> np.ndarray:
        if "timestamp" in pairs.columns:
            return pd.to_numeric(pairs["timestamp"]).to_numpy(dtype=np.int64)
        if self.config.use_item_age:
            logger.info("FactorizationMachine: pairs have no 'timestamp'; item_age at reference time %d",
                        self.reference_time)
        return np.full(len(pairs), self.reference_time, dtype=np.int64)

    # ------------------------------------------------------------------ fit
    def _split(self, inter: pd.DataFrame, validation: object) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        c = self.config
        if isinstance(validation, pd.DataFrame):
            return inter, validation
        mode = c.validation if validation is None else validation
        if mode == "none":
            return inter, None
        if mode == "random":
            return random_holdout(inter, c.validation_fraction, c.seed)
        if mode == "last":
            from fedrec.models.ranking import carve_last

            return carve_last(inter)
        if mode == "cold":
            from fedrec.data.split import pseudo_new_user_split

            return pseudo_new_user_split(inter, user_fraction=c.cold_user_fraction,
                                         keep_first=c.cold_keep_first, seed=c.seed)
        raise ValueError(f"validation must be a DataFrame or one of {', '.join(map(repr, VALIDATIONS))}; "
                         f"got {mode!r}")

    def fit(self, interactions: pd.DataFrame | Any, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, validation: object = None,
            initial_state: Mapping[str, torch.Tensor] | None = None) -> Self:
        """As :meth:`Recommender.fit`. Initial parameters: by default drawn from
        ``torch.Generator().manual_seed(seed)`` (:meth:`init_params`); ``initial_state`` (a complete
        ``FMParams.state_dict()``: ``bias``, ``w.<field>``, ``v.<field>`` for every field) replaces the
        draw — e.g. the tensors the two parties of the vertical FM drew from their own streams, so the
        centralized model replays a protocol run exactly."""
        self._initial_state = None if initial_state is None else dict(initial_state)
        try:
            return super().fit(interactions, user_features, item_features, validation)
        finally:
            self._initial_state = None

    def prepare_fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
                    item_features: pd.DataFrame | None, validation: object
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """Split, id maps, rating scale, reference time and fields; returns ``(train, validation)``
        (the vertical FM's guest calls it without ``user_features``)."""
        from fedrec.data.idmap import IdMap

        if self.config.row_order == "canonical":
            interactions = canonical_order(interactions)
        train, val = self._split(interactions, validation)
        self.user_map = IdMap.from_raw(interactions["user_id"], kind="user")
        self.item_map = IdMap.from_raw(interactions["item_id"], kind="item")
        y_all = interactions["rating"].to_numpy(dtype=np.float64)
        self.rating_scale = (float(y_all.min()), float(y_all.max()))
        self.reference_time = int(interactions["timestamp"].max())
        self._factor_cache = None
        self._build_fields(train, user_features, item_features)
        y = train["rating"].to_numpy(dtype=np.float64)
        if self.config.objective == "logistic" and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("objective='logistic' needs 0/1 labels in column 'rating'")
        self._negative_cdf = None
        if self.config.negatives == "popularity":
            counts = np.bincount(self.item_map.to_inner(train["item_id"]), minlength=len(self.item_map))
            self._negative_cdf = popularity_cdf(counts, self.config.negative_alpha)
        return train, val

    def init_params(self, y: np.ndarray, *, generator: torch.Generator | None = None,
                    initial_state: Mapping[str, torch.Tensor] | None = None) -> None:
        """``FMParams`` of :attr:`field_specs` drawn from ``generator`` (default:
        ``torch.Generator().manual_seed(seed)``), ``w0`` = the mean rating (regression) or its logit
        (logistic); then ``initial_state``, if any, is loaded (every tensor, shapes checked)."""
        c = self.config
        if generator is None:
            generator = torch.Generator().manual_seed(c.seed)
        mean = float(y.mean())
        init_bias = 0.0
        if c.objective == "regression":
            init_bias = mean
        elif c.objective == "logistic":
            init_bias = float(np.log((mean + 1e-6) / (1 - mean + 1e-6)))
        l2 = {s.name: c.l2_per_field.get(s.name, c.l2_factors) for s in self.field_specs}
        self.params = FMParams(self.field_specs, c.n_factors, c.init_std, init_bias, l2, c.l2_linear,
                               generator=generator)
        if initial_state is None:
            return
        own = self.params.state_dict()
        missing, extra = sorted(set(own) - set(initial_state)), sorted(set(initial_state) - set(own))
        if missing or extra:
            raise ValueError(f"FactorizationMachine.fit: initial_state must hold exactly {sorted(own)}; "
                             f"missing {missing}, unexpected {extra}")
        for name, tensor in own.items():
            given = torch.as_tensor(initial_state[name])
            if tuple(given.shape) != tuple(tensor.shape):
                raise ValueError(f"FactorizationMachine.fit: initial_state[{name!r}] has shape "
                                 f"{tuple(given.shape)}, the model needs {tuple(tensor.shape)}")
        self.params.load_state_dict({k: torch.as_tensor(v) for k, v in initial_state.items()})

    def _fit(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
             item_features: pd.DataFrame | None, validation: object) -> None:
        c = self.config
        self._train_once(interactions, user_features, item_features, validation, c.epochs)
        if c.refit and self.history.val_metric:
            selection, epochs = self.history, max(self.history.best_epoch, 1)
            logger.info("FactorizationMachine: refit on all %d rows for %d epoch(s) (selected on validation)",
                        len(interactions), epochs)
            self._train_once(interactions, user_features, item_features, "none", epochs)
            self.selection_history = selection

    def _train_once(self, interactions: pd.DataFrame, user_features: pd.DataFrame | None,
                    item_features: pd.DataFrame | None, validation: object, epochs: int) -> None:
        c = self.config
        train, val = self.prepare_fit(interactions, user_features, item_features, validation)
        assert self.user_map is not None and self.item_map is not None
        u = self.user_map.to_inner(train["user_id"])
        i = self.item_map.to_inner(train["item_id"])
        ts = train["timestamp"].to_numpy(dtype=np.int64)
        y = train["rating"].to_numpy(dtype=np.float64)
        self.init_params(y, initial_state=self._initial_state)
        assert self.params is not None
        ty = torch.from_numpy(y.astype(np.float32))
        ranking = c.objective == "ranking"
        weights = self.row_weights(train)

        def loss_fn(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
            z, reg = self._z(*self.expand_negatives(u[idx], i[idx], ts[idx], rng))
            wb = None if weights is None else weights[idx]
            return self.data_loss(z, None if ranking else ty[idx], len(idx), wb) + reg.mean()

        val_fn = None
        if val is not None:
            val_fn = (self._make_val_fn(val) if c.early_stopping == "loss"
                      else self._make_rank_val_fn(train, val))
        self.history = Trainer(self.params, len(train), epochs=epochs, batch_size=c.batch_size, lr=c.lr,
                               seed=c.seed, patience=c.patience, loss_fn=loss_fn, val_fn=val_fn,
                               optimizer=c.optimizer, show_progress=c.show_progress,
                               desc=f"FM[{c.objective}]").run()

    # ------------------------------------------------------------------ validation
    def _make_val_fn(self, val: pd.DataFrame) -> Callable[[int], float]:
        rows = self.validation_rows(val)

        def metric(epoch: int) -> float:
            if self.config.objective == "ranking":
                z, reg = self._z(*self.expand_negatives(rows.u, rows.i, rows.ts, None, rows.neg))
                return self.validation_metric_from_scores(z, None, reg, len(rows.u))
            return self.validation_metric_from_scores(self._raw_scores(rows.u, rows.i, rows.ts), rows.y, None,
                                                      len(rows.u))

        return metric

    def _make_rank_val_fn(self, train: pd.DataFrame, val: pd.DataFrame) -> Callable[[int], float]:
        """``−mean HR@K`` or ``−mean NDCG@K`` (lower is better) of ``val``, every item not in ``train``
        ranked by the current parameters (:class:`~fedrec.models.ranking.RankingTarget`)."""
        from fedrec.models.base import SeenItems
        from fedrec.models.ranking import RankingTarget

        assert self.user_map is not None and self.item_map is not None
        seen = SeenItems.from_pairs(self.user_map.to_inner(train["user_id"]),
                                    self.item_map.to_inner(train["item_id"]), len(self.user_map))
        target = RankingTarget.build(self, val, seen)
        c = self.config

        def metric(epoch: int) -> float:
            f = self._factors()
            per = target.metrics(lambda users: factor_scores(users, f.a_u, f.p_u, f.b_i, f.q_i), c.ranking_k)
            return -float(per[c.early_stopping].mean())

        return metric

    # ------------------------------------------------------------------ predict / decompose
    def _raw_scores(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        out = np.empty(len(users))
        with torch.no_grad():
            for s in range(0, len(users), _PRED_CHUNK):
                sl = slice(s, s + _PRED_CHUNK)
                out[sl] = self._z(users[sl], items[sl], ts[sl])[0].numpy()
        return out

    def _predict_inner(self, users: np.ndarray, items: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
        return self.finish(self._raw_scores(users, items, self._timestamps(pairs)))

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """The raw FM output ``z`` (no clipping, no sigmoid) for each row of ``pairs``."""
        user_map, item_map, _ = self._require_fitted()
        u = user_map.to_inner(pairs["user_id"], unknown="mask")
        i = item_map.to_inner(pairs["item_id"], unknown="mask")
        return self._raw_scores(u, i, self._timestamps(pairs))

    def party_terms(self, pairs: pd.DataFrame) -> dict[str, PartyTerms]:
        """Per-party ``z_P`` and ``e_P`` with ``z = z_guest + z_host + <e_guest, e_host>`` (DESIGN §4.2)."""
        user_map, item_map, _ = self._require_fitted()
        assert self.params is not None
        u = user_map.to_inner(pairs["user_id"], unknown="mask")
        i = item_map.to_inner(pairs["item_id"], unknown="mask")
        with torch.no_grad():
            terms = self.terms(u, i, self._timestamps(pairs))
            out = {}
            for party in ("guest", "host"):
                mine = [t for t in terms if t.spec.owner == party]
                z, e = combine(mine, self.params.bias if party == "guest" else None, len(u),
                               self.config.n_factors)
                out[party] = PartyTerms(z.numpy().astype(np.float64), e.numpy().astype(np.float64))
        return out

    def scoring_factors(self, at: int | None = None) -> ScoringFactors:
        """``a_u, p_u`` (user-side fields) and ``b_i, q_i`` (item + context fields at time ``at``)."""
        self._require_fitted()
        return self._factors(at)

    def _factors(self, at: int | None = None) -> ScoringFactors:
        """:meth:`scoring_factors` of the current parameters (also during training)."""
        user_map, item_map = self.user_map, self.item_map
        assert self.params is not None and user_map is not None and item_map is not None
        at = self.reference_time if at is None else int(at)
        n_u, n_i, k = len(user_map), len(item_map), self.config.n_factors
        users, items = np.arange(n_u), np.arange(n_i)
        with torch.no_grad():
            u_terms = self.params.entity_terms([s for s in self.field_specs if s.side == "user"],
                                               self.tables, users)
            i_specs = [s for s in self.field_specs if s.side == "item"]
            i_terms = self.params.entity_terms(i_specs, self.tables, items)
            for spec in (s for s in self.field_specs if s.side == "context"):
                i_terms.append(self.params.numeric_terms(spec, self._context_feature(spec, items,
                                                                                     np.full(n_i, at))))
            a, p = combine(u_terms, None, n_u, k)
            b, q = combine(i_terms, self.params.bias, n_i, k)
        return ScoringFactors(a.numpy().astype(np.float64), p.numpy().astype(np.float64),
                              b.numpy().astype(np.float64), q.numpy().astype(np.float64), at)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        if self._factor_cache is None or self._factor_cache.at != self.reference_time:
            self._factor_cache = self.scoring_factors()
        f = self._factor_cache
        return factor_scores(users, f.a_u, f.p_u, f.b_i, f.q_i)

    # ------------------------------------------------------------------ persistence (fm_state)
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return dump_state(self)

    def _set_state(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        load_state(self, arrays, state)
