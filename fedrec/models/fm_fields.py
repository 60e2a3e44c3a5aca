"""The fields of :class:`~fedrec.models.fm.FactorizationMachine` built from the training rows: the one-hot
ids, the SVD++ history and its length, the side tables' encodings, the recency-weighted recent items,
and the context fields (item age, recent popularity) computed per sample from its time (the table of
fields and their formulas is the :mod:`fedrec.models.fm` docstring)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fedrec.data.features_time import ItemEvents, recency_history
from fedrec.data.idmap import IdMap
from fedrec.models.fields import Csr, FieldSpec, TableEncoder, history_rows, one_hot_rows
from fedrec.models.fm_config import FMConfig

logger = logging.getLogger("fedrec.models.fm")  # the model's log lines keep their logger name

DAY = 86400.0


class FMFields:
    """Field building and context features of :class:`~fedrec.models.fm.FactorizationMachine`."""

    # set by FactorizationMachine.__init__ / prepare_fit
    config: FMConfig
    user_map: IdMap | None
    item_map: IdMap | None
    field_specs: list[FieldSpec]
    tables: dict[str, Csr]
    encoders: dict[str, TableEncoder]
    age_norm: tuple[float, float]
    item_first_seen: np.ndarray
    item_events: ItemEvents | None
    context_windows: dict[str, tuple[float, float, float]]

    def _build_fields(self, train: pd.DataFrame, uf: pd.DataFrame | None, itf: pd.DataFrame | None) -> None:
        assert self.user_map is not None and self.item_map is not None
        c = self.config
        n_u, n_i = len(self.user_map), len(self.item_map)
        u = self.user_map.to_inner(train["user_id"])
        i = self.item_map.to_inner(train["item_id"])
        specs: list[FieldSpec] = []
        tables: dict[str, Csr] = {}
        self.encoders = {}

        def add(spec: FieldSpec, table: Csr | None) -> None:
            specs.append(spec)
            if table is not None:
                tables[spec.name] = table

        counts = np.bincount(u, minlength=n_u)
        if c.use_user_id:
            add(FieldSpec("user_id", "guest", "user", n_u), one_hot_rows(n_u, counts > 0))
        if c.use_history:
            add(FieldSpec("history", "guest", "user", n_i), history_rows(u, i, n_u))
        if c.use_history_length:
            h = np.log1p(counts)
            hv = (h - h[counts > 0].mean()) / (h[counts > 0].std() or 1.0)
            add(FieldSpec("history_length", "guest", "user", 1),
                Csr.from_lists(np.arange(n_u), np.zeros(n_u, np.int64), hv, n_u))
        for name, table, owner, side, cols, id_map in (
                ("user_features", uf, "host", "user", c.user_feature_columns, self.user_map),
                ("item_features", itf, "guest", "item", c.item_feature_columns, self.item_map)):
            if not getattr(c, f"use_{name}") or table is None:
                if getattr(c, f"use_{name}") and table is None:
                    logger.info("FactorizationMachine: use_%s=True but no %s table given; field skipped",
                                name, name)
                continue
            enc = TableEncoder.fit(table, name, cols)
            self.encoders[name] = enc
            add(FieldSpec(name, owner, side, enc.size), enc.transform(table, id_map.raw_ids, name))
        if c.use_item_id:
            seen_items = np.bincount(i, minlength=n_i) > 0
            add(FieldSpec("item_id", "guest", "item", n_i), one_hot_rows(n_i, seen_items))
        if c.use_recent_items:
            rr, cc, vv = recency_history(u, i, train["timestamp"].to_numpy(dtype=np.int64), n_u,
                                         self._train_time(train), c.recent_items_n, c.recency_half_life_days)
            add(FieldSpec("recent_items", "guest", "user", n_i), Csr.from_lists(rr, cc, vv, n_u))
        self.item_events, self.context_windows = None, {}
        if c.use_recent_popularity:
            ts = train["timestamp"].to_numpy(dtype=np.int64)
            self.item_events = ItemEvents.build(i, ts, n_i)
            for days in c.recent_windows_days:
                name = f"recent_popularity_{days:g}d"
                raw = np.log1p(self.item_events.window_counts(i, ts, days))
                self.context_windows[name] = (float(days), float(raw.mean()), float(raw.std()) or 1.0)
                add(FieldSpec(name, "guest", "context", 1), None)
        if c.use_item_age:
            first = np.full(n_i, -1, dtype=np.int64)
            ts = train["timestamp"].to_numpy(dtype=np.int64)
            order = np.argsort(ts, kind="stable")[::-1]
            first[i[order]] = ts[order]  # the last write per item is its earliest timestamp
            self.item_first_seen = first
            raw = self._raw_age(i, ts)
            self.age_norm = (float(raw.mean()), float(raw.std()) or 1.0)
            add(FieldSpec("item_age", "guest", "context", 1), None)
        self.field_specs, self.tables = specs, tables

    @staticmethod
    def _train_time(train: pd.DataFrame) -> int:
        """The reference time ``T`` of the time-aware fields: the latest timestamp they are built from."""
        return int(train["timestamp"].max())

    def _raw_age(self, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        first = np.where(items >= 0, self.item_first_seen[np.maximum(items, 0)], -1)
        return np.log1p(np.maximum(ts - first, 0) / DAY)

    def _context_feature(self, spec: FieldSpec, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The value of context field ``spec`` for samples ``(items[s], ts[s])``: the item's age, or its
        standardised ``log1p`` row count in the window before ``ts`` (:mod:`fedrec.data.features_time`)."""
        if spec.name == "item_age":
            return self._age_feature(items, ts)
        days, mean, std = self.context_windows[spec.name]
        assert self.item_events is not None
        x = (np.log1p(self.item_events.window_counts(items, ts, days)) - mean) / std
        return np.where(items >= 0, x, 0.0)

    def _age_feature(self, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        first = np.where(items >= 0, self.item_first_seen[np.maximum(items, 0)], -1)
        x = (self._raw_age(items, ts) - self.age_norm[0]) / self.age_norm[1]
        return np.where(first >= 0, x, 0.0)
