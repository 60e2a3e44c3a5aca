"""The scorer: serving bundle (+ host partials) -> top-K items per user, batch first, bounded memory.

For a chunk of users ``U`` (at most ``chunk_size``) it computes, in float32 torch on all cores::

    S = P_U Q^T + (b + m)          m_i = -inf for items outside the allow list or on the deny list
    S[u, seen(u)] = -inf           when filter_seen
    top-K of each row of S, then score = value + a_u

(``a_u`` is constant per user, so it is added to the K winners only). Memory is
``O(chunk_size * n_items)`` whatever the number of users. For a vertical bundle the user side is
joined with the host partial of each user first (:func:`fedrec.models.vertical.join_user_factors`):
``a_u = a_G + z_H + <p_G, e_H>``, ``p_u = p_G + e_H``; partials of another training run than the
bundle's are refused (:func:`fedrec.models.vertical.check_run_id`). A guarded bundle (``host_scale``
``α < 1``, :mod:`serving.artifacts`) joins ``(α z_H, √α e_H)`` on its first ``host_factors`` columns, so
the ranking is exactly the blend ``(1 − α) · bank alone + α · federated``.

Top-K is :func:`fedrec.models.base.top_k`, the kernel ``Recommender.recommend`` uses: ties between
equal scores go to the lower inner item id. Explicit fallbacks (column ``fallback`` of every result,
counts in :attr:`Recommendations.counts`), with the reason codes of :mod:`fedrec.models.base`:

* ``"none"``: the model's full score;
* ``"no_host_partial"`` (vertical bundles): the host exported no partial for this known user; the
  guest-only score (``z_H = 0, e_H = 0``) is used;
* ``"unknown_user"``: the model has no row for this user: its user fields are empty (``a = 0, p = 0``),
  so items are ranked by ``b_i``, the model's own empty-user score and the library's answer for the
  same exported model; nothing is filtered as seen.

Raw ids are matched by :func:`fedrec.data.idmap.id_key`, so ids read from a CSV (``"42"``) find the
model's integer id ``42``; float or boolean ids are refused.

What the outputs show (issue #13; :meth:`Recommendations.to_frame`, ``fedrec recommend``, ``fedrec
serve``): ``item_id`` as text (its :func:`~fedrec.data.idmap.id_key`, in files and over HTTP alike), and
``score`` as the bundle's ``score_kind`` says (:mod:`serving.artifacts`): a predicted rating clipped to
the rating scale, a probability, or a ranking score. Ranking is always by the raw score (clipping would
tie the top items); :attr:`Recommendations.scores` keeps the raw scores, as the library's ``recommend``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.data.idmap import IdError, id_keys
from fedrec.models.base import FALLBACK_NONE, NO_HOST_PARTIAL, UNKNOWN_USER, top_k
from fedrec.models.guard import scale_partials
from fedrec.models.vertical import (
    HostPartials,
    check_run_id,
    combine_partials,
    join_user_factors,
    read_host_partials,
)
from fedrec.progress import progress_bar
from serving.artifacts import ArtifactError, ServingBundle

logger = logging.getLogger(__name__)

#: the reason codes a user's row can carry (defined in :mod:`fedrec.models.base`)
FALLBACKS = (FALLBACK_NONE, NO_HOST_PARTIAL, UNKNOWN_USER)
FALLBACK_NO_HOST = NO_HOST_PARTIAL  # the same codes under the names callers imported from here
FALLBACK_UNKNOWN = UNKNOWN_USER
_CHUNK_FLOATS = 1 << 24  # 64 MB of float32 scores per chunk


@dataclass
class Recommendations:
    """Top-K per user: ``item_ids[n, K]`` (raw), ``scores[n, K]`` (``-inf`` = empty slot), ``fallback[n]``."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    #: what :meth:`reported_scores` are (:data:`serving.artifacts.SCORE_KINDS`) and a rating's range
    score_kind: str = "ranking_score"
    rating_scale: tuple[float, float] | None = None
    #: the item ids as text (``id_key``), as every output writes them; ``None``: from ``item_ids``
    item_keys: np.ndarray | None = None

    def reported_scores(self) -> np.ndarray:
        """The scores as outputs show them: a predicted rating clipped to ``rating_scale``, a probability
        ``σ(score)``, a ranking score as ranked (``-inf`` empty slots stay ``-inf``)."""
        raw = self.scores
        if self.score_kind == "probability":
            with np.errstate(over="ignore"):
                return np.where(np.isfinite(raw), 1.0 / (1.0 + np.exp(-raw)), raw)
        if self.score_kind == "predicted_rating" and self.rating_scale is not None:
            return np.where(np.isfinite(raw), np.clip(raw, *self.rating_scale), raw)
        return raw

    def to_frame(self) -> pd.DataFrame:
        """Long form ``user_id, rank (1-based), item_id, score, score_kind, fallback``; empty slots
        dropped; ``item_id`` as text, ``score`` as :meth:`reported_scores`."""
        n, k = self.scores.shape
        valid = np.isfinite(self.scores).ravel()
        keys = self.item_keys if self.item_keys is not None else np.asarray(
            id_keys(self.item_ids.ravel(), source="item ids"), dtype=object).reshape(self.item_ids.shape)
        frame = pd.DataFrame({
            "user_id": np.repeat(self.user_ids, k)[valid],
            "rank": np.tile(np.arange(1, k + 1), n)[valid],
            "item_id": keys.ravel()[valid],
            "score": self.reported_scores().ravel()[valid],
            "score_kind": self.score_kind,
            "fallback": np.repeat(self.fallback, k)[valid],
        })
        return frame


class Scorer:
    """Ranks a bundle's items for raw user ids (see the module docstring).

    ``Scorer(bundle, host_partials=None, chunk_size=None)``, or ``Scorer.load(model_dir, host_partials_path)``
    from files."""

    def __init__(self, bundle: ServingBundle,
                 host_partials: HostPartials | Mapping[str, HostPartials] | None = None, *,
                 chunk_size: int | None = None) -> None:
        self.bundle = bundle
        self.n_items = len(bundle.item_map)
        self.chunk_size = chunk_size or max(1, min(4096, _CHUNK_FLOATS // max(self.n_items, 1)))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        # key -> inner user id: one hash look-up per requested id whatever the batch size (fails now,
        # naming the id, if the model's ids have no key)
        self._user_pos: dict[str, int] = {key: j for j, key in enumerate(bundle.user_map.keys.tolist())}
        self._item_raw = bundle.item_map.raw_ids  # cached: IdMap.raw_ids converts on every call
        self._item_key = np.asarray(bundle.item_map.keys, dtype=object)  # the text every output writes
        self._q = torch.from_numpy(np.ascontiguousarray(bundle.q_i, dtype=np.float32))
        self._b = torch.from_numpy(np.ascontiguousarray(bundle.b_i, dtype=np.float32))
        self._a = np.ascontiguousarray(bundle.a_u, dtype=np.float32)
        self._p = np.ascontiguousarray(bundle.p_u, dtype=np.float32)
        self._host_row = np.full(len(bundle.user_map), -1, dtype=np.int64)
        self._host: HostPartials | None = None
        self.host_report: dict[str, int] = {}
        self._fallback_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: several hosts (issue #11): per host, which joined row has that host's partials
        self._host_found: dict[str, np.ndarray] | None = None
        #: several hosts: per host, scored known users without that host's partials (its zeros), so far
        self.host_fallbacks: dict[str, int] = {}
        if isinstance(host_partials, Mapping):
            host_partials = self._combine_hosts(host_partials)
        if host_partials is not None:
            self._join_host(host_partials)
        elif bundle.kind == "vertical":
            logger.warning("vertical bundle loaded without host partials: every known user gets the "
                           "guest-only fallback (flag %r)", NO_HOST_PARTIAL)

    def _combine_hosts(self, tables: Mapping[str, HostPartials]) -> HostPartials | None:
        """Several hosts' partials files as one table over the union of their users
        (:func:`~fedrec.models.vertical.combine_partials`: host-host terms added; a user without one
        host's row gets that host's zeros, flagged per host). Each file must be of the model's run."""
        if len(tables) <= 1:
            return next(iter(tables.values()), None)
        for hp in tables.values():
            check_run_id(self.bundle.run_id, self.bundle.origin, hp)
        ids: list[Any] = []
        seen: set[str] = set()
        for hp in tables.values():
            for raw, key in zip(hp.user_ids.tolist(), hp.keys.tolist(), strict=True):
                if key not in seen:
                    seen.add(key)
                    ids.append(raw)
        joined = combine_partials({h: hp.take(ids) for h, hp in tables.items()})
        joined.run_id = self.bundle.run_id
        return joined

    @classmethod
    def load(cls, model_dir: str | Path, host_partials: str | Path | Mapping[str, str | Path] | None = None,
             *, chunk_size: int | None = None) -> Scorer:
        """A serving bundle directory, a saved fedrec model or the guest half of a vertical FM
        (:func:`serving.export.load_serving_bundle`), with a host-partials file of the same training
        run for a vertical one."""
        from serving.export import load_serving_bundle

        bundle = load_serving_bundle(model_dir)
        partials: HostPartials | dict[str, HostPartials] | None = None
        if isinstance(host_partials, Mapping):
            partials = {h: read_host_partials(p, bundle.host_width) for h, p in host_partials.items()}
        elif host_partials is not None:
            partials = read_host_partials(host_partials, bundle.host_width)
        return cls(bundle, partials, chunk_size=chunk_size)

    def _join_host(self, hp: HostPartials) -> None:
        if self.bundle.kind != "vertical":
            raise ArtifactError(f"{hp.source}: host partials given but the bundle is of kind "
                                f"{self.bundle.kind!r}, not 'vertical'")
        b = self.bundle
        if hp.n_factors != b.host_width:
            field = "host_factors" if b.host_factors is not None else "n_factors"
            raise ArtifactError(f"{hp.source}: host partials have k={hp.n_factors}, the bundle {b.origin} "
                                f"field {field!r} says {b.host_width}")
        check_run_id(b.run_id, b.origin, hp)
        inner = b.user_map.to_inner(np.asarray(hp.keys), unknown="mask", match="key")
        known = inner >= 0
        self._host_row[inner[known]] = np.flatnonzero(known)
        # the guard's blend (serving.artifacts): (host_scale z_H, sqrt(host_scale) e_H) on the first block
        z_h, e_h = scale_partials(hp.z_h.astype(np.float64), hp.e_h.astype(np.float64), b.host_scale,
                                  b.n_factors)
        self._host = HostPartials(hp.user_ids, z_h.astype(np.float32), e_h.astype(np.float32), hp.found,
                                  hp.source, hp.run_id)
        self._host_found = hp.host_found
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
            try:
                inner = self.bundle.item_map.to_inner(raw, unknown="mask", match="key")
            except IdError as exc:
                raise ValueError(f"{name} list: {exc}") from exc
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
        a, p = self._a[inner], self._p[inner]
        flags = np.full(len(inner), FALLBACK_NONE, dtype=object)
        if self.bundle.kind == "vertical":
            rows = self._host_row[inner]
            flags[rows < 0] = NO_HOST_PARTIAL
            if self._host is not None and (rows >= 0).any():
                a, p = join_user_factors(a, p, self._host.select(rows, inner))
            for h, f in (self._host_found or {}).items():  # per-host fallback flags (several hosts)
                missing = int(((rows < 0) | ~f[np.maximum(rows, 0)]).sum())
                self.host_fallbacks[h] = self.host_fallbacks.get(h, 0) + missing
        return torch.from_numpy(a), torch.from_numpy(p), flags

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
            idx, val = top_k(scores, k)
            val = val + a[:, None]
        return idx.numpy(), val.numpy().astype(np.float64), flags

    def _top_unknown(self, k: int, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Unknown users: ``a = 0, p = 0``, so ``score = b_i`` (+ the allow/deny mask), nothing seen."""
        idx, val = top_k(bias[None, :], k)
        return idx[0].numpy(), val[0].numpy().astype(np.float64)

    def iter_recommend(self, user_ids: Iterable[Any], k: int = 10, *, filter_seen: bool = True,
                       allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
                       show_progress: bool = False) -> Iterator[Recommendations]:
        """Yield :class:`Recommendations` chunk by chunk (``chunk_size`` users each), in input order."""
        raw = np.asarray(list(user_ids), dtype=object).reshape(-1)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if k > self.n_items:
            raise ValueError(f"k={k} exceeds the catalogue size ({self.n_items} items)")
        keys = np.asarray(id_keys(raw, source="user_ids"), dtype=object)
        if allow is None and deny is None:
            bias = self._b
            if k not in self._fallback_cache:
                self._fallback_cache[k] = self._top_unknown(k, bias)
            fb_idx, fb_val = self._fallback_cache[k]
        else:
            bias = self.item_bias(allow, deny)
            fb_idx, fb_val = self._top_unknown(k, bias)
        starts: Iterable[int] = range(0, len(raw), self.chunk_size)
        if show_progress:
            starts = progress_bar(starts, desc="recommend", unit="chunk")
        pos = self._user_pos
        for start in starts:
            chunk = raw[start:start + self.chunk_size]
            inner = np.fromiter((pos.get(key, -1) for key in keys[start:start + self.chunk_size]),
                                dtype=np.int64, count=len(chunk))
            known = inner >= 0
            idx = np.empty((len(chunk), k), dtype=np.int64)
            val = np.empty((len(chunk), k), dtype=np.float64)
            flags = np.full(len(chunk), UNKNOWN_USER, dtype=object)
            idx[~known], val[~known] = fb_idx, fb_val
            if known.any():
                idx[known], val[known], flags[known] = self._top_known(inner[known], k, bias, filter_seen)
            counts = {f: int((flags == f).sum()) for f in FALLBACKS}
            yield Recommendations(chunk, self._item_raw[idx], val, flags, counts, self.bundle.score_kind,
                                  self.bundle.rating_scale, self._item_key[idx])

    def recommend(self, user_ids: Iterable[Any], k: int = 10, *, filter_seen: bool = True,
                  allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
                  show_progress: bool = False) -> Recommendations:
        """Top-``k`` for every user in ``user_ids`` (row ``r`` belongs to ``user_ids[r]``)."""
        parts = list(self.iter_recommend(user_ids, k, filter_seen=filter_seen, allow=allow, deny=deny,
                                         show_progress=show_progress))
        kind, scale = self.bundle.score_kind, self.bundle.rating_scale
        if not parts:
            empty = np.zeros((0, k))
            return Recommendations(np.zeros(0, dtype=object), empty.astype(object), empty,
                                   np.zeros(0, dtype=object), dict.fromkeys(FALLBACKS, 0), kind, scale,
                                   empty.astype(object))
        counts = {f: sum(p.counts[f] for p in parts) for f in FALLBACKS}
        return Recommendations(np.concatenate([p.user_ids for p in parts]),
                               np.concatenate([p.item_ids for p in parts]),
                               np.concatenate([p.scores for p in parts]),
                               np.concatenate([p.fallback for p in parts]), counts, kind, scale,
                               np.concatenate([p.item_keys for p in parts if p.item_keys is not None]))
