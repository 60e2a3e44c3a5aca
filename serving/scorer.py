"""The scorer: serving bundle (+ host partials) -> top-K items per user, batch first, bounded memory.

For a chunk of users ``U`` (at most ``chunk_size``) it computes, in float32 torch on all cores::

    S = P_U Q^T + (b + m)          m_i = -inf for items outside the allow list or on the deny list
    S[u, seen(u)] = -inf           when filter_seen
    top-K of each row of S, then score = value + a_u

(``a_u`` is constant per user, so it is added to the K winners only). Memory is
``O(chunk_size * n_items)`` whatever the number of users. For a vertical bundle the user side is
joined with the host partial of each user first: ``a_u = a_G + z_H + <p_G, e_H>``, ``p_u = p_G + e_H``.

Explicit fallbacks (column ``fallback`` of every result; counts in :attr:`Recommendations.counts`):

* ``"none"``: the model's full score;
* ``"no_host_partial"`` (vertical bundles): the host exported no partial for this user; the guest-only
  score (``z_H = 0, e_H = 0``) is used;
* ``"unknown_user"``: the model has no row for this user; items are ranked by the bundle's
  ``fallback_score`` (popularity); nothing is filtered as seen.

Ties between equal scores are broken by ``torch.topk`` (not guaranteed stable). Raw ids are matched by
their string form, so ids read from a CSV (``"42"``) find the model's integer id ``42``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fedrec.data.idmap import IdMap
from serving.artifacts import ArtifactError, HostPartials, ServingBundle, load_bundle, read_host_partials

logger = logging.getLogger(__name__)

FALLBACK_NONE = "none"
FALLBACK_NO_HOST = "no_host_partial"
FALLBACK_UNKNOWN = "unknown_user"
FALLBACKS = (FALLBACK_NONE, FALLBACK_NO_HOST, FALLBACK_UNKNOWN)
_CHUNK_FLOATS = 1 << 24  # 64 MB of float32 scores per chunk


def string_index(id_map: IdMap) -> pd.Index:
    """The map's raw ids as strings (inner-id order), for type-tolerant look-ups."""
    return pd.Index([str(v) for v in id_map.raw_ids.tolist()])


def lookup(index: pd.Index, raw: Iterable[Any]) -> np.ndarray:
    """Inner ids (``-1`` = unknown) of raw ids matched by string form."""
    keys = [str(v) for v in raw]
    if len(keys) <= 16:  # online requests: skip building an Index for a handful of keys
        out = np.empty(len(keys), dtype=np.int64)
        for j, key in enumerate(keys):
            try:
                pos = index.get_loc(key)
            except KeyError:
                pos = -1
            out[j] = pos if isinstance(pos, (int, np.integer)) else -1
        return out
    return np.asarray(index.get_indexer(pd.Index(keys)), dtype=np.int64)


@dataclass
class Recommendations:
    """Top-K per user: ``item_ids[n, K]`` (raw), ``scores[n, K]`` (``-inf`` = empty slot), ``fallback[n]``."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Long form ``user_id, rank (1-based), item_id, score, fallback``; empty slots dropped."""
        n, k = self.scores.shape
        valid = np.isfinite(self.scores).ravel()
        frame = pd.DataFrame({
            "user_id": np.repeat(self.user_ids, k)[valid],
            "rank": np.tile(np.arange(1, k + 1), n)[valid],
            "item_id": self.item_ids.ravel()[valid],
            "score": self.scores.ravel()[valid],
            "fallback": np.repeat(self.fallback, k)[valid],
        })
        return frame


class Scorer:
    """Ranks a bundle's items for raw user ids (see the module docstring)."""

    def __init__(self, bundle: ServingBundle, host_partials: HostPartials | None = None, *,
                 chunk_size: int | None = None) -> None:
        self.bundle = bundle
        self.n_items = len(bundle.item_map)
        self.chunk_size = chunk_size or max(1, min(4096, _CHUNK_FLOATS // max(self.n_items, 1)))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._users = string_index(bundle.user_map)
        self._items = string_index(bundle.item_map)
        self._item_raw = bundle.item_map.raw_ids  # cached: IdMap.raw_ids converts on every call
        self._q = torch.from_numpy(np.ascontiguousarray(bundle.q_i, dtype=np.float32))
        self._b = torch.from_numpy(np.ascontiguousarray(bundle.b_i, dtype=np.float32))
        self._a = torch.from_numpy(np.ascontiguousarray(bundle.a_u, dtype=np.float32))
        self._p = torch.from_numpy(np.ascontiguousarray(bundle.p_u, dtype=np.float32))
        self._host_row = np.full(len(bundle.user_map), -1, dtype=np.int64)
        self._z_h = torch.zeros(0)
        self._e_h = torch.zeros(0, bundle.n_factors)
        self.host_report: dict[str, int] = {}
        self._fallback_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if host_partials is not None:
            self._join_host(host_partials)
        elif bundle.kind == "vertical":
            logger.warning("vertical bundle loaded without host partials: every known user gets the "
                           "guest-only fallback (flag %r)", FALLBACK_NO_HOST)

    @classmethod
    def load(cls, model_dir: str | Path, host_partials: str | Path | None = None, *,
             chunk_size: int | None = None) -> Scorer:
        """Load a serving bundle directory (and a host-partials file for a vertical bundle)."""
        bundle = load_bundle(model_dir)
        partials = None
        if host_partials is not None:
            partials = read_host_partials(host_partials, bundle.n_factors)
        return cls(bundle, partials, chunk_size=chunk_size)

    def _join_host(self, hp: HostPartials) -> None:
        if self.bundle.kind != "vertical":
            raise ArtifactError(f"{hp.source}: host partials given but the bundle is of kind "
                                f"{self.bundle.kind!r}, not 'vertical'")
        if hp.n_factors != self.bundle.n_factors:
            raise ArtifactError(f"{hp.source}: host partials have k={hp.n_factors}, the bundle "
                                f"n_factors={self.bundle.n_factors}")
        inner = lookup(self._users, hp.user_ids)
        known = inner >= 0
        self._host_row[inner[known]] = np.flatnonzero(known)
        self._z_h = torch.from_numpy(hp.z_h.astype(np.float32))
        self._e_h = torch.from_numpy(hp.e_h.astype(np.float32))
        self.host_report = {"host_partials": len(inner), "joined": int(known.sum()),
                            "unknown_to_guest": int((~known).sum())}
        if (~known).any():
            logger.warning("%s: %d of %d host partials are for users the guest model does not know; "
                           "ignored", hp.source, int((~known).sum()), len(inner))

    # ------------------------------------------------------------------ item masks
    def item_bias(self, allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None
                  ) -> torch.Tensor:
        """``b + m``: ``-inf`` on items outside ``allow`` (when given) or in ``deny``."""
        mask = torch.zeros(self.n_items)
        for name, ids in (("allow", allow), ("deny", deny)):
            if ids is None:
                continue
            raw = list(ids)
            inner = lookup(self._items, raw)
            if (inner < 0).any():
                bad = [raw[j] for j in np.flatnonzero(inner < 0)[:5].tolist()]
                raise ValueError(f"{name} list: {int((inner < 0).sum())} item id(s) not in the model's "
                                 f"catalogue, e.g. {bad!r}")
            if name == "allow":
                mask.fill_(-np.inf)
                mask[torch.from_numpy(inner)] = 0.0
            else:
                mask[torch.from_numpy(inner)] = -np.inf
        return self._b + mask

    # ------------------------------------------------------------------ scoring
    def _user_side(self, inner: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Effective ``a, p`` for known inner users and their fallback flags."""
        ti = torch.from_numpy(inner)
        a, p = self._a[ti].clone(), self._p[ti].clone()
        flags = np.full(len(inner), FALLBACK_NONE, dtype=object)
        if self.bundle.kind == "vertical":
            rows = self._host_row[inner]
            has = rows >= 0
            flags[~has] = FALLBACK_NO_HOST
            if has.any():
                th = torch.from_numpy(np.flatnonzero(has))
                tr = torch.from_numpy(rows[has])
                e = self._e_h[tr]
                a[th] += self._z_h[tr] + (p[th] * e).sum(dim=1)
                p[th] += e
        return a, p, flags

    def _mask_seen(self, scores: torch.Tensor, inner: np.ndarray) -> None:
        ptr, idx = self.bundle.seen_indptr, self.bundle.seen_indices
        starts, lens = ptr[inner], ptr[inner + 1] - ptr[inner]
        total = int(lens.sum())
        if total == 0:
            return
        rows = np.repeat(np.arange(len(inner)), lens)
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        cols = idx[offsets + np.arange(total)]
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -np.inf

    def _top_known(self, inner: np.ndarray, k: int, bias: torch.Tensor, filter_seen: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, p, flags = self._user_side(inner)
        with torch.no_grad():
            scores = torch.addmm(bias, p, self._q.T)
            if filter_seen:
                self._mask_seen(scores, inner)
            val, idx = torch.topk(scores, k, dim=1)
            val = val + a[:, None]
        return idx.numpy(), val.numpy().astype(np.float64), flags

    def _top_fallback(self, k: int, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        s = torch.from_numpy(self.bundle.fallback_score) + torch.where(torch.isinf(bias), -np.inf, 0.0)
        val, idx = torch.topk(s, k)
        return idx.numpy(), val.numpy()

    def iter_recommend(self, user_ids: Iterable[Any], k: int = 10, *, filter_seen: bool = True,
                       allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
                       show_progress: bool = False) -> Iterator[Recommendations]:
        """Yield :class:`Recommendations` chunk by chunk (``chunk_size`` users each), in input order."""
        raw = np.asarray(list(user_ids), dtype=object)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if k > self.n_items:
            raise ValueError(f"k={k} exceeds the catalogue size ({self.n_items} items)")
        if allow is None and deny is None:
            bias = self._b
            if k not in self._fallback_cache:
                self._fallback_cache[k] = self._top_fallback(k, bias)
            fb_idx, fb_val = self._fallback_cache[k]
        else:
            bias = self.item_bias(allow, deny)
            fb_idx, fb_val = self._top_fallback(k, bias)
        starts = range(0, len(raw), self.chunk_size)
        bar = tqdm(starts, desc="recommend", unit="chunk", disable=not show_progress)
        for start in bar:
            chunk = raw[start:start + self.chunk_size]
            inner = lookup(self._users, chunk)
            known = inner >= 0
            idx = np.empty((len(chunk), k), dtype=np.int64)
            val = np.empty((len(chunk), k), dtype=np.float64)
            flags = np.full(len(chunk), FALLBACK_UNKNOWN, dtype=object)
            idx[~known], val[~known] = fb_idx, fb_val
            if known.any():
                idx[known], val[known], flags[known] = self._top_known(inner[known], k, bias, filter_seen)
            counts = {f: int((flags == f).sum()) for f in FALLBACKS}
            yield Recommendations(chunk, self._item_raw[idx], val, flags, counts)

    def recommend(self, user_ids: Iterable[Any], k: int = 10, *, filter_seen: bool = True,
                  allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
                  show_progress: bool = False) -> Recommendations:
        """Top-``k`` for every user in ``user_ids`` (row ``r`` belongs to ``user_ids[r]``)."""
        parts = list(self.iter_recommend(user_ids, k, filter_seen=filter_seen, allow=allow, deny=deny,
                                         show_progress=show_progress))
        if not parts:
            empty = np.zeros((0, k))
            return Recommendations(np.zeros(0, dtype=object), empty.astype(object), empty,
                                   np.zeros(0, dtype=object), dict.fromkeys(FALLBACKS, 0))
        counts = {f: sum(p.counts[f] for p in parts) for f in FALLBACKS}
        return Recommendations(np.concatenate([p.user_ids for p in parts]),
                               np.concatenate([p.item_ids for p in parts]),
                               np.concatenate([p.scores for p in parts]),
                               np.concatenate([p.fallback for p in parts]), counts)
