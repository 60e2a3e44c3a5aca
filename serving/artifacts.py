"""The serving artifact: what the scorer loads (a *serving bundle*), beside the host's per-user partials.

Every ranking model of fedrec reduces, at a fixed time ``at``, to

    score(u, i) = a_u + b_i + <p_u, q_i>

(:meth:`fedrec.models.FactorizationMachine.scoring_factors`; biased MF: ``a = b_u``, ``b = μ + b_i``;
popularity: ``p = q = 0``, ``b = item score``). A **vertical** FM splits the user side by owner: the
guest holds ``a_G(u), p_G(u)`` (its user fields: id, history, history length), the host holds
``z_H(u), e_H(u)`` (its user-feature fields), joined by :mod:`fedrec.models.vertical`::

    score(u, i) = [a_G + z_H + <p_G, e_H>](u) + b_i + <p_G(u) + e_H(u), q_i>

so joining a host partial gives an effective ``a_u, p_u`` and the ranking is one matmul again. A known
user without a host partial is scored with ``z_H = 0, e_H = 0`` (the guest-only score) and flagged. A
user the model does not know has every user field empty: ``a = 0, p = 0``, so it is ranked by ``b_i``,
exactly as the library's ``Recommender.recommend`` ranks it.

Bundle directory: a ``fedrec.serving`` artifact of :mod:`fedrec.artifacts` (written atomically, read
with ``allow_pickle=False``, ``arrays.npz`` checked against ``content_sha256``)::

    serving.json   {"format": "fedrec.serving", "format_version": 3, "arrays": {name: {"shape", "dtype"}},
                    "content_sha256", "kind": "factors" | "vertical", "n_factors",
                    "at" (Unix seconds the item side was computed at), "source" (model class, params),
                    "run_id" (vertical: the training run of the guest half, or null),
                    "user_map", "item_map" (IdMap JSON: raw ids in inner order)}
    arrays.npz     a_u[n_users] f32, p_u[n_users, k] f32        (vertical: the guest halves a_G, p_G)
                   b_i[n_items] f32, q_i[n_items, k] f32
                   seen_indptr[n_users + 1] i64, seen_indices[nnz] i64   (CSR of items seen in training)

What the score is (issue #13): ``serving.json`` also records ``score_kind`` and, for ratings,
``rating_scale`` (optional keys; older bundles get them from ``source``, :func:`infer_score_kind`):

* ``predicted_rating``: a regression FM or biased MF; the scorer ranks by the raw score and reports it
  clipped to ``rating_scale`` (the training ratings' range, as the model's own ``predict`` does);
* ``probability``: a logistic FM; reported as ``σ(score)``;
* ``ranking_score``: a ranking FM (BPR/BCE) or a popularity model; only the order means something.

Version 1 bundles (fedrec <= 0.1: no digest, a ``fallback_score`` popularity array) still load; their
``fallback_score`` is ignored (logged), since unknown users are now ranked by the model's own ``b_i``.

The guarded vertical model (format_version 3; :mod:`fedrec.models.guard`): the blend
``(1 − α) · bank alone + α · federated`` is one ``a + b + <p, q>`` model of ``k_F + k_B`` factors, whose
first ``host_factors = k_F`` columns are the federated half's; ``host_scale = α`` says how a host
partial joins it: ``(α z_H, √α e_H)`` on those columns (:func:`fedrec.models.guard.scale_partials`).
Both keys are optional in ``serving.json``: older bundles (and unguarded ones) load with
``host_scale = 1`` and ``host_factors = n_factors``; a value out of range (``host_scale`` outside
[0, 1], ``host_factors`` outside 1..n_factors, either on a ``factors`` bundle) is refused naming the
file and the field.

Host partials (vertical only): :class:`~fedrec.models.vertical.HostPartials`,
:func:`~fedrec.models.vertical.read_host_partials` and :func:`~fedrec.models.vertical.write_host_partials`
(CSV/TSV/Parquet ``user_id, z_H, e_H_0 .. e_H_{k-1}`` + a ``run_id`` fingerprint sidecar), re-exported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.artifacts import ArtifactError, read_artifact, write_artifact
from fedrec.data.idmap import IdMap
from fedrec.models.base import check_replaceable
from fedrec.models.vertical import HostPartials, read_host_partials, write_host_partials

__all__ = ["ArtifactError", "HostPartials", "ServingBundle", "load_bundle", "random_bundle",
           "host_partials_arg", "read_host_partials", "write_host_partials"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "fedrec.serving"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
META_FILE = "serving.json"
KINDS = ("factors", "vertical")
_FLOAT_ARRAYS = ("a_u", "p_u", "b_i", "q_i")
#: what a bundle's scores are (module docstring)
SCORE_KINDS = ("predicted_rating", "probability", "ranking_score")
_ARRAYS = (*_FLOAT_ARRAYS, "seen_indptr", "seen_indices")


@dataclass
class ServingBundle:
    """In-memory serving bundle (see the module docstring for the meaning of every array).

    ``run_id``: the training run of a vertical guest half (checked against the host partials'),
    ``origin``: where it was loaded from (for errors)."""

    kind: str
    user_map: IdMap
    item_map: IdMap
    a_u: np.ndarray
    p_u: np.ndarray
    b_i: np.ndarray
    q_i: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    at: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    origin: str = "<serving bundle>"
    #: what the scores are (:data:`SCORE_KINDS`); ``rating_scale``: (min, max) a predicted rating is
    #: clipped to (``None``: not clipped)
    score_kind: str = "ranking_score"
    rating_scale: tuple[float, float] | None = None
    #: the guard (module docstring): a host partial joins as ``(host_scale · z_H, √host_scale · e_H)`` on
    #: the first ``host_factors`` columns (``None``: all ``n_factors``)
    host_scale: float = 1.0
    host_factors: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArtifactError(f"serving bundle: kind must be one of {KINDS}, got {self.kind!r}")
        if self.score_kind not in SCORE_KINDS:
            raise ArtifactError(f"serving bundle: score_kind must be one of {SCORE_KINDS}, got "
                                f"{self.score_kind!r}")
        if self.rating_scale is not None:
            lo, hi = (float(v) for v in self.rating_scale)
            finite = bool(np.isfinite(lo) and np.isfinite(hi))
            if self.score_kind != "predicted_rating" or not (finite and lo <= hi):
                raise ArtifactError(f"serving bundle: rating_scale {self.rating_scale!r} needs score_kind "
                                    f"'predicted_rating' and finite min <= max")
            self.rating_scale = (lo, hi)
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id):
            raise ArtifactError(f"serving bundle: run_id must be a non-empty string or None, got "
                                f"{self.run_id!r}")
        n_u, n_i = len(self.user_map), len(self.item_map)
        k = self.p_u.shape[1] if self.p_u.ndim == 2 else -1
        self._check_host_fields(k)
        expected = {"a_u": (n_u,), "p_u": (n_u, k), "b_i": (n_i,), "q_i": (n_i, k),
                    "seen_indptr": (n_u + 1,)}
        for name, shape in expected.items():
            arr = getattr(self, name)
            if k < 0 or tuple(arr.shape) != shape:
                raise ArtifactError(f"serving bundle: array {name!r} has shape {tuple(arr.shape)}, "
                                    f"expected {shape} for {n_u} users x {n_i} items")
        for name in _FLOAT_ARRAYS:
            if not np.isfinite(getattr(self, name)).all():
                raise ArtifactError(f"serving bundle: array {name!r} has non-finite values")
        ptr, idx = self.seen_indptr, self.seen_indices
        if (ptr[0] != 0 or ptr[-1] != len(idx) or np.any(np.diff(ptr) < 0)
                or (idx.size and (idx.min() < 0 or idx.max() >= n_i))):
            raise ArtifactError(f"serving bundle: 'seen_indptr'/'seen_indices' is not a CSR over "
                                f"{n_u} users x {n_i} items")

    def _check_host_fields(self, k: int) -> None:
        scale, width = self.host_scale, self.host_factors
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= float(scale) <= 1.0:
            raise ArtifactError(f"serving bundle: field 'host_scale' must be a number in [0, 1], got "
                                f"{scale!r}")
        self.host_scale = float(scale)
        if width is not None and (isinstance(width, bool) or not isinstance(width, int)
                                  or not 1 <= width <= k):
            raise ArtifactError(f"serving bundle: field 'host_factors' must be an integer in 1..n_factors "
                                f"({k}), got {width!r}")
        if self.kind != "vertical" and (self.host_scale != 1.0 or width is not None):
            raise ArtifactError(f"serving bundle: fields 'host_scale'/'host_factors' are for a 'vertical' "
                                f"bundle, this one is {self.kind!r}")

    @property
    def n_factors(self) -> int:
        return int(self.p_u.shape[1])

    @property
    def host_width(self) -> int:
        """How many factors a host partial has (``host_factors``, else ``n_factors``)."""
        return self.n_factors if self.host_factors is None else int(self.host_factors)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _ARRAYS}

    def save(self, directory: str | Path) -> Path:
        """Write the bundle atomically into ``directory`` (a previous bundle there is replaced, a directory
        holding anything else is refused)."""
        path = Path(directory)
        check_replaceable(path, META_FILE)
        meta = {"kind": self.kind, "n_factors": self.n_factors, "at": int(self.at), "source": self.source,
                "run_id": self.run_id, "score_kind": self.score_kind,
                "rating_scale": None if self.rating_scale is None else list(self.rating_scale),
                "host_scale": self.host_scale, "host_factors": self.host_factors,
                "user_map": self.user_map.to_json(), "item_map": self.item_map.to_json()}
        write_artifact(path, FORMAT_NAME, FORMAT_VERSION, self.arrays(), meta, meta_file=META_FILE)
        return path


def _fail(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}")


def infer_score_kind(source: dict[str, Any]) -> str:
    """The score kind of a bundle written before ``score_kind`` was recorded, from its ``source``."""
    cls = source.get("model_class")
    params = source.get("hyperparameters") or {}
    if cls == "BiasedMF":
        return "predicted_rating"
    if cls in ("FactorizationMachine", "HeteroFMGuest"):
        return {"regression": "predicted_rating", "logistic": "probability"}.get(
            str(params.get("objective", "regression")), "ranking_score")
    return "ranking_score"


def load_bundle(directory: str | Path) -> ServingBundle:
    """Load a bundle written by :meth:`ServingBundle.save`; errors name the file and the field."""
    path = Path(directory)
    meta_path = path / META_FILE
    art = read_artifact(path, FORMAT_NAME, READ_VERSIONS, meta_file=META_FILE, require_digest=False,
                        required=("kind", "n_factors", "at", "user_map", "item_map"))
    meta, arrays = art.meta, dict(art.arrays)
    if meta["kind"] not in KINDS:
        raise _fail(meta_path, f"field 'kind' is {meta['kind']!r}, expected one of {KINDS}")
    k = meta["n_factors"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise _fail(meta_path, f"field 'n_factors' must be an integer >= 1, got {k!r}")
    if art.format_version == 1 and arrays.pop("fallback_score", None) is not None:
        logger.warning("%s: format_version 1 bundle: its 'fallback_score' (popularity) is ignored; unknown "
                       "users are ranked by the model's item scores b_i (re-export to silence this)",
                       meta_path)
    for name in _ARRAYS:
        if name not in arrays:
            raise _fail(path / "arrays.npz", f"array {name!r} is missing")
    maps = {}
    for key in ("user_map", "item_map"):
        try:
            maps[key] = IdMap.from_json(meta[key])
        except (ValueError, TypeError) as exc:
            raise _fail(meta_path, f"field {key!r} is invalid: {exc}") from exc
    if arrays["p_u"].ndim != 2 or arrays["p_u"].shape[1] != k:
        raise _fail(path / "arrays.npz", f"array 'p_u' has shape {arrays['p_u'].shape}, "
                                         f"field 'n_factors' says k={k}")
    source = dict(meta.get("source") or {})
    score_kind = meta.get("score_kind") or infer_score_kind(source)
    scale = meta.get("rating_scale")
    if scale is not None and (not isinstance(scale, list) or len(scale) != 2
                              or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         for v in scale)):
        raise _fail(meta_path, f"field 'rating_scale' must be [min, max] or null, got {scale!r}")
    host_scale, host_factors = meta.get("host_scale", 1.0), meta.get("host_factors")
    if isinstance(host_scale, bool) or not isinstance(host_scale, (int, float)) or not 0 <= host_scale <= 1:
        raise _fail(meta_path, f"field 'host_scale' must be a number in [0, 1], got {host_scale!r}")
    if host_factors is not None and (isinstance(host_factors, bool) or not isinstance(host_factors, int)
                                     or not 1 <= host_factors <= k):
        raise _fail(meta_path, f"field 'host_factors' must be an integer in 1..{k} (field 'n_factors'), got "
                               f"{host_factors!r}")
    if "score_kind" not in meta and score_kind == "predicted_rating":
        logger.warning("%s: a bundle without 'rating_scale': its predicted ratings are reported unclipped "
                       "(re-export it to clip them to the training ratings' range)", meta_path)
    try:
        return ServingBundle(
            score_kind=str(score_kind), rating_scale=None if scale is None else (scale[0], scale[1]),
            kind=meta["kind"], user_map=maps["user_map"], item_map=maps["item_map"],
            a_u=arrays["a_u"].astype(np.float32), p_u=arrays["p_u"].astype(np.float32),
            b_i=arrays["b_i"].astype(np.float32), q_i=arrays["q_i"].astype(np.float32),
            seen_indptr=arrays["seen_indptr"].astype(np.int64),
            seen_indices=arrays["seen_indices"].astype(np.int64), at=int(meta["at"]),
            source=source, run_id=meta.get("run_id"), origin=str(meta_path), host_scale=float(host_scale),
            host_factors=host_factors)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def random_bundle(n_users: int, n_items: int, n_factors: int = 32, *, kind: str = "factors",
                  seen_per_user: int = 5, seed: int = 0) -> ServingBundle:
    """A bundle of the FM's shape with random factors (benchmarks, tests): ``a, b ~ N(0, 0.1²)``,
    ``p, q ~ N(0, 1/k)``, ``seen_per_user`` random seen items per user (distinct), ids ``u0..``/``i0..``."""
    rng = np.random.default_rng(seed)
    s = min(seen_per_user, n_items)
    # distinct per user: an arithmetic progression start + step * j (mod n) with step * (s - 1) < n
    start = rng.integers(0, n_items, n_users)[:, None]
    step = rng.integers(1, max(n_items // max(s, 1), 1) + 1, n_users)[:, None]
    seen = np.sort((start + step * np.arange(s)[None, :]) % n_items, axis=1).astype(np.int64)
    scale = 1.0 / np.sqrt(n_factors)
    return ServingBundle(
        kind=kind, user_map=IdMap([f"u{j}" for j in range(n_users)], kind="user"),
        item_map=IdMap([f"i{j}" for j in range(n_items)], kind="item"),
        a_u=(0.1 * rng.standard_normal(n_users)).astype(np.float32),
        p_u=(scale * rng.standard_normal((n_users, n_factors))).astype(np.float32),
        b_i=(0.1 * rng.standard_normal(n_items)).astype(np.float32),
        q_i=(scale * rng.standard_normal((n_items, n_factors))).astype(np.float32),
        seen_indptr=np.arange(n_users + 1, dtype=np.int64) * s,
        seen_indices=seen.ravel())


def host_partials_arg(values: list[str] | None, n_factors: int
                      ) -> HostPartials | dict[str, HostPartials] | None:
    """``--host-partials`` given once (``PATH``: the single host) or once per host (``NAME=PATH``, a
    multi-host model, issue #11) -> what :class:`serving.scorer.Scorer` takes."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return read_host_partials(values[0], n_factors)
    out: dict[str, HostPartials] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ArtifactError(f"--host-partials {v!r}: with several hosts give NAME=PATH for each")
        if name in out:
            raise ArtifactError(f"--host-partials: host {name!r} given twice")
        out[name] = read_host_partials(path, n_factors)
    return out
