"""The serving artifact: what the scorer loads (a *serving bundle*) and the host's per-user partials.

Every ranking model of fedrec reduces, at a fixed time ``at``, to

    score(u, i) = a_u + b_i + <p_u, q_i>

(:meth:`fedrec.models.FactorizationMachine.scoring_factors`; biased MF: ``a = b_u``, ``b = μ + b_i``;
popularity: ``p = q = 0``, ``b = item score``). A **vertical** FM splits the user side by owner: the
guest holds ``a_G(u), p_G(u)`` (its user fields: id, history, history length), the host holds
``z_H(u), e_H(u)`` (its user-feature fields), and (fedrec.models.fm_core, groups A/B)

    score(u, i) = [a_G + z_H + <p_G, e_H>](u) + b_i + <p_G(u) + e_H(u), q_i>

so joining a host partial gives an effective ``a_u, p_u`` and the ranking is one matmul again. A user
without a host partial is scored with ``z_H = 0, e_H = 0`` — the guest-only score — and flagged.

Bundle directory layout (``format = "fedrec.serving"``, ``format_version = 1``)::

    serving.json   {"format", "format_version", "kind": "factors" | "vertical", "n_factors",
                    "at" (Unix seconds the item side was computed at), "source" (model class, params),
                    "user_map", "item_map" (IdMap JSON: raw ids in inner order),
                    "arrays": {name: {"shape", "dtype"}}}
    arrays.npz     a_u[n_users] f32, p_u[n_users, k] f32        (vertical: the guest halves a_G, p_G)
                   b_i[n_items] f32, q_i[n_items, k] f32
                   seen_indptr[n_users + 1] i64, seen_indices[nnz] i64   (CSR of items seen in training)
                   fallback_score[n_items] f64   (item popularity: the ranking for unknown users)

Host partials file (vertical only; written by the host for a campaign's users, by aligned id), CSV or
Parquet with columns ``user_id, z_H, e_H_0 .. e_H_{k-1}`` (``k`` = the bundle's ``n_factors``), one row
per user, finite values. Arrays are read with ``allow_pickle=False``; nothing is unpickled.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data.idmap import IdMap

FORMAT_NAME = "fedrec.serving"
FORMAT_VERSION = 1
META_FILE = "serving.json"
ARRAYS_FILE = "arrays.npz"
KINDS = ("factors", "vertical")
_FLOAT_ARRAYS = ("a_u", "p_u", "b_i", "q_i", "fallback_score")


class ArtifactError(ValueError):
    """A serving bundle or host-partials file is missing, corrupt or of another schema/version."""


@dataclass
class ServingBundle:
    """In-memory serving bundle (see the module docstring for the meaning of every array)."""

    kind: str
    user_map: IdMap
    item_map: IdMap
    a_u: np.ndarray
    p_u: np.ndarray
    b_i: np.ndarray
    q_i: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    fallback_score: np.ndarray
    at: int = 0
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArtifactError(f"serving bundle: kind must be one of {KINDS}, got {self.kind!r}")
        n_u, n_i = len(self.user_map), len(self.item_map)
        k = self.p_u.shape[1] if self.p_u.ndim == 2 else -1
        expected = {"a_u": (n_u,), "p_u": (n_u, k), "b_i": (n_i,), "q_i": (n_i, k),
                    "seen_indptr": (n_u + 1,), "fallback_score": (n_i,)}
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

    @property
    def n_factors(self) -> int:
        return int(self.p_u.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"a_u": self.a_u, "p_u": self.p_u, "b_i": self.b_i, "q_i": self.q_i,
                "seen_indptr": self.seen_indptr, "seen_indices": self.seen_indices,
                "fallback_score": self.fallback_score}

    def save(self, directory: str | Path) -> Path:
        """Write ``serving.json`` + ``arrays.npz`` into ``directory`` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        arrays = self.arrays()
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": self.kind,
                "n_factors": self.n_factors, "at": int(self.at), "source": self.source,
                "user_map": self.user_map.to_json(), "item_map": self.item_map.to_json(),
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
        np.savez(path / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]
        (path / META_FILE).write_text(json.dumps(meta, indent=1))
        return path


def _fail(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}")


def read_meta(meta_path: Path) -> dict[str, Any]:
    """Read and check ``serving.json``: format name, version, kind and every required field."""
    if not meta_path.is_file():
        raise _fail(meta_path, "file not found (not a serving bundle directory?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(meta_path, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _fail(meta_path, "top level must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _fail(meta_path, f"field 'format' is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(meta_path, f"field 'format_version' is {meta.get('format_version')!r}; this scorer "
                               f"reads version {FORMAT_VERSION} (re-export the bundle with this fedrec)")
    for key in ("kind", "n_factors", "at", "user_map", "item_map", "arrays"):
        if key not in meta:
            raise _fail(meta_path, f"field {key!r} is missing")
    if meta["kind"] not in KINDS:
        raise _fail(meta_path, f"field 'kind' is {meta['kind']!r}, expected one of {KINDS}")
    if not isinstance(meta["n_factors"], int) or meta["n_factors"] < 1:
        raise _fail(meta_path, f"field 'n_factors' must be an integer >= 1, got {meta['n_factors']!r}")
    if not isinstance(meta["arrays"], dict):
        raise _fail(meta_path, "field 'arrays' must be an object")
    return meta


def _read_arrays(npz_path: Path, listed: dict[str, Any], meta_path: Path) -> dict[str, np.ndarray]:
    if not npz_path.is_file():
        raise _fail(npz_path, "file not found")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(npz_path, f"cannot read arrays ({exc})") from exc
    required = ("a_u", "p_u", "b_i", "q_i", "seen_indptr", "seen_indices", "fallback_score")
    for name in required:
        if name not in arrays:
            raise _fail(npz_path, f"array {name!r} is missing")
        desc = listed.get(name)
        if not isinstance(desc, dict) or desc.get("shape") != list(arrays[name].shape) \
                or desc.get("dtype") != str(arrays[name].dtype):
            raise _fail(npz_path, f"array {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                                  f"{meta_path.name} field 'arrays.{name}' says {desc!r}")
        if not np.issubdtype(arrays[name].dtype, np.number):
            raise _fail(npz_path, f"array {name!r} has non-numeric dtype {arrays[name].dtype}")
    return arrays


def load_bundle(directory: str | Path) -> ServingBundle:
    """Load a bundle written by :meth:`ServingBundle.save`; errors name the file and the field."""
    path = Path(directory)
    meta_path = path / META_FILE
    meta = read_meta(meta_path)
    arrays = _read_arrays(path / ARRAYS_FILE, meta["arrays"], meta_path)
    maps = {}
    for key in ("user_map", "item_map"):
        try:
            maps[key] = IdMap.from_json(meta[key])
        except (ValueError, TypeError) as exc:
            raise _fail(meta_path, f"field {key!r} is invalid: {exc}") from exc
    k = meta["n_factors"]
    if arrays["p_u"].ndim != 2 or arrays["p_u"].shape[1] != k:
        raise _fail(path / ARRAYS_FILE, f"array 'p_u' has shape {arrays['p_u'].shape}, "
                                        f"field 'n_factors' says k={k}")
    try:
        return ServingBundle(
            kind=meta["kind"], user_map=maps["user_map"], item_map=maps["item_map"],
            a_u=arrays["a_u"].astype(np.float32), p_u=arrays["p_u"].astype(np.float32),
            b_i=arrays["b_i"].astype(np.float32), q_i=arrays["q_i"].astype(np.float32),
            seen_indptr=arrays["seen_indptr"].astype(np.int64),
            seen_indices=arrays["seen_indices"].astype(np.int64),
            fallback_score=arrays["fallback_score"].astype(np.float64), at=int(meta["at"]),
            source=dict(meta.get("source") or {}))
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


# ---------------------------------------------------------------------------------- host partials
@dataclass
class HostPartials:
    """The host's per-user partials ``z_H[n]``, ``e_H[n, k]`` for raw ``user_ids[n]`` (unique)."""

    user_ids: np.ndarray
    z_h: np.ndarray
    e_h: np.ndarray
    source: str = "<DataFrame>"

    @property
    def n_factors(self) -> int:
        return int(self.e_h.shape[1])

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_factors: int, source: str = "<DataFrame>") -> HostPartials:
        """Validate a ``user_id, z_H, e_H_0..e_H_{k-1}`` table (errors name the source, row and column)."""
        cols = ["user_id", "z_H", *[f"e_H_{j}" for j in range(n_factors)]]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ArtifactError(f"{source}: host partials lack column(s) {missing[:5]}"
                                f"{' ...' if len(missing) > 5 else ''}; expected user_id, z_H, "
                                f"e_H_0..e_H_{n_factors - 1} (the bundle has n_factors={n_factors})")
        extra = sorted(c for c in df.columns if c.startswith("e_H_") and c not in cols)
        if extra:
            raise ArtifactError(f"{source}: host partials have column(s) {extra[:5]} beyond "
                                f"e_H_{n_factors - 1}: they were exported for another model "
                                f"(the bundle has n_factors={n_factors})")
        ids = df["user_id"]
        if ids.isna().any():
            row = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise ArtifactError(f"{source}: row {row}, column 'user_id': missing id")
        if ids.duplicated().any():
            row = int(np.flatnonzero(ids.duplicated().to_numpy())[0])
            raise ArtifactError(f"{source}: row {row}, column 'user_id': duplicate id {ids.iloc[row]}")
        values = np.empty((len(df), n_factors + 1), dtype=np.float64)
        for j, col in enumerate(cols[1:]):
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(v)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ArtifactError(f"{source}: row {row}, column {col!r}: {df[col].iloc[row]!r} is not "
                                    "a finite number")
            values[:, j] = v
        return cls(ids.to_numpy(), values[:, 0].astype(np.float32), values[:, 1:].astype(np.float32),
                   source)


def read_host_partials(path: str | Path, n_factors: int) -> HostPartials:
    """Read a host-partials CSV or Parquet file (see the module docstring) for a bundle with ``k``."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: host partials file not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(p)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
        else:
            raise ArtifactError(f"{p}: host partials must be .csv, .tsv or .parquet, got {suffix!r}")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{p}: cannot read host partials ({exc})") from exc
    return HostPartials.from_frame(df, n_factors, source=str(p))


def write_host_partials(partials: pd.DataFrame, path: str | Path) -> Path:
    """Write a host-partials table as CSV/TSV or Parquet (by suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".parquet":
        partials.to_parquet(p, index=False)
    elif p.suffix.lower() in (".csv", ".tsv"):
        partials.to_csv(p, index=False, sep="\t" if p.suffix.lower() == ".tsv" else ",")
    else:
        raise ArtifactError(f"{p}: host partials must be .csv, .tsv or .parquet")
    return p


def random_bundle(n_users: int, n_items: int, n_factors: int = 32, *, kind: str = "factors",
                  seen_per_user: int = 5, seed: int = 0) -> ServingBundle:
    """A bundle of the FM's shape with random factors (benchmarks, tests): ``a, b ~ N(0, 0.1²)``,
    ``p, q ~ N(0, 1/k)``, ``seen_per_user`` random seen items per user (distinct), ids ``u0..``/``i0..``,
    ``fallback_score`` = how many users saw each item."""
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
        seen_indices=seen.ravel(), fallback_score=np.bincount(seen.ravel(), minlength=n_items).astype(
            np.float64))
