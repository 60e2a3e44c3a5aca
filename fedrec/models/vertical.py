"""The vertical join: the guest's FM half plus the host's per-user partials (DESIGN §4.2).

A vertical FM splits the fields by owner (:mod:`fedrec.models.fm_core`, groups G and H): the guest
holds every field but the host's user features; the host holds those and gives, per user, ``z_H(u)``
(their linear and pairwise terms) and ``e_H(u)`` (the sum of their factor vectors). Two identities join
the halves, defined here once for the guest's inference (it asks the host), for scoring from exported
files and for serving::

    z(u, i)  = z_G(u, i) + z_H(u) + <e_G(u, i), e_H(u)>         (join_pairs: one prediction)
    a_u     += z_H(u) + <p_u, e_H(u)>,   p_u += e_H(u)            (join_user_factors: ranking)

so that ``score(u, i) = a_u + b_i + <p_u, q_i>`` stays one matmul.

Fallbacks (reason codes of :mod:`fedrec.models.base`): a known user without host partials is scored
with ``z_H = 0, e_H = 0``, the guest terms, which is what the centralized FM gives a user without a host
feature row (``no_host_partial``). A user the guest model does not know is ``unknown_user``: all its
user fields are empty, the host's as well (the centralized FM has no feature row for a user it did not
fit), so its partials are not joined and it is ranked by ``b_i``, as by the library and serving alike.

Host partials (:class:`HostPartials`): ``user_ids[n]`` (raw), ``z_h[n]``, ``e_h[n, k]``, ``found[n]``,
matched across parties by :func:`~fedrec.data.idmap.id_key`. As a file (CSV, TSV or Parquet): columns
``user_id, z_H, e_H_0 .. e_H_{k-1}`` (other columns, such as the job's ``aligned_index``, are ignored),
one row per user, finite values, and a fingerprint sidecar ``<file>.meta.json``::

    {"format": "fedrec.host_partials", "format_version": 1, "run_id": the training run,
     "data_file": name, "content_sha256": sha256 of the data file, "n_users", "n_factors"}

:func:`write_host_partials` writes both atomically, the data file first, so a crash in between is seen
as a digest mismatch, never as a silent mix. :func:`check_run_id` is the one rule for joining a guest
model with partials: the same ``run_id``; a partials file without one is refused (whatever the model
carries: nothing ties it to the model's run); only partials built in memory beside a model without a
run id are joined, with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrec.artifacts import ArtifactError, atomic_file, file_sha256, read_json, write_json_atomic
from fedrec.data.idmap import IdError, id_keys
from fedrec.models.base import (
    NO_HOST_PARTIAL,
    UNKNOWN_ITEM,
    UNKNOWN_USER,
    check_frame,
    check_recommend_args,
    factor_scores,
    rank_items,
    recommend_aliases,
)
from fedrec.models.fm import FactorizationMachine

__all__ = ["HostPartials", "VerticalFM", "check_run_id", "combine_partials", "guest_run_id", "join_pairs",
           "join_user_factors", "read_host_partials", "sidecar_path", "write_host_partials"]

logger = logging.getLogger(__name__)

PARTIALS_FORMAT = "fedrec.host_partials"
PARTIALS_VERSION = 1
SUFFIXES = (".csv", ".tsv", ".parquet")
GUEST_META = "hetero.json"
_E_COLUMN = re.compile(r"e_H_(\d+)$")


@dataclass
class HostPartials:
    """Host partials of users ``user_ids[n]`` (raw): ``z_h[n]``, ``e_h[n, k]``; ``found[n]`` False: the host
    has no row (``z_H = 0, e_H = 0``). ``run_id``: the training run that produced them, when known."""

    user_ids: np.ndarray
    z_h: np.ndarray
    e_h: np.ndarray
    found: np.ndarray | None = None
    source: str = "<DataFrame>"
    run_id: str | None = None
    #: several hosts joined (:func:`combine_partials`): host name -> which rows that host has
    host_found: dict[str, np.ndarray] | None = None
    _index: pd.Index | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        self.z_h, self.e_h = np.asarray(self.z_h), np.asarray(self.e_h)
        n = len(self.user_ids)
        self.found = np.ones(n, dtype=bool) if self.found is None else np.asarray(self.found, dtype=bool)
        if self.z_h.shape != (n,) or self.e_h.ndim != 2 or self.e_h.shape[0] != n or self.found.shape != (n,):
            raise ValueError(f"{self.source}: host partials of shapes z_H {self.z_h.shape}, "
                             f"e_H {self.e_h.shape}, found {self.found.shape} for {n} users")
        f = self.found
        if not (np.isfinite(self.z_h[f]).all() and np.isfinite(self.e_h[f]).all()):
            raise ValueError(f"{self.source}: host partials have non-finite values")

    @property
    def n_factors(self) -> int:
        return int(self.e_h.shape[1])

    @property
    def keys(self) -> pd.Index:
        """:func:`~fedrec.data.idmap.id_key` of every user (unique; :class:`ArtifactError` otherwise)."""
        if self._index is None:
            try:
                keys = pd.Index(id_keys(self.user_ids, source=f"{self.source}, column 'user_id'"))
            except IdError as exc:
                raise ArtifactError(str(exc)) from exc
            if keys.has_duplicates:
                row = int(np.flatnonzero(keys.duplicated())[0])
                first = int(np.flatnonzero(keys == keys[row])[0])
                raise ArtifactError(f"{self.source}: row {row}, column 'user_id': duplicate id {keys[row]} "
                                    f"(the same id as row {first})")
            self._index = keys
        return self._index

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_factors: int, source: str = "<DataFrame>",
                   run_id: str | None = None, line_numbers: np.ndarray | None = None) -> HostPartials:
        """Validate a ``user_id, z_H, e_H_0..e_H_{k-1}`` table (errors name the source, row and column;
        with ``line_numbers``, the file line of each row)."""
        def at(row: int) -> str:
            return f"line {int(line_numbers[row])}" if line_numbers is not None else f"row {row}"

        cols = ["user_id", "z_H", *[f"e_H_{j}" for j in range(n_factors)]]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ArtifactError(f"{source}: host partials lack column(s) {missing[:5]}"
                                f"{' ...' if len(missing) > 5 else ''}; expected user_id, z_H, "
                                f"e_H_0..e_H_{n_factors - 1} (the guest model has n_factors={n_factors})")
        extra = sorted(c for c in df.columns if isinstance(c, str) and c.startswith("e_H_") and c not in cols)
        if extra:
            raise ArtifactError(f"{source}: host partials have column(s) {extra[:5]} beyond "
                                f"e_H_{n_factors - 1}: they were exported for another model "
                                f"(the guest model has n_factors={n_factors})")
        ids = df["user_id"]
        if ids.isna().any():
            row = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise ArtifactError(f"{source}, {at(row)}, column 'user_id': missing id")
        values = np.empty((len(df), n_factors + 1), dtype=np.float64)
        for j, col in enumerate(cols[1:]):
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(v)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                shown = str(df[col].iloc[row])[:40]
                raise ArtifactError(f"{source}, {at(row)}, column {col!r}: {shown!r} is not a finite number")
            values[:, j] = v
        out = cls(ids.to_numpy(dtype=object), values[:, 0], values[:, 1:], None, source, run_id)
        out.keys  # noqa: B018 - validates the ids now, naming the row
        return out

    def select(self, pos: np.ndarray, user_ids: np.ndarray) -> HostPartials:
        """Rows ``pos`` (``-1``: not found, zeros) as the partials of ``user_ids`` (aligned to ``pos``)."""
        pos = np.asarray(pos, dtype=np.int64)
        assert self.found is not None
        n, k = len(pos), self.n_factors
        z, e, found = np.zeros(n, dtype=self.z_h.dtype), np.zeros((n, k), dtype=self.e_h.dtype), pos >= 0
        z[found], e[found] = self.z_h[pos[found]], self.e_h[pos[found]]
        found[found] = self.found[pos[found]]
        per_host = None
        if self.host_found is not None:
            per_host = {h: np.where(pos >= 0, f[np.maximum(pos, 0)], False) if len(f) else np.zeros(n, bool)
                        for h, f in self.host_found.items()}
        return HostPartials(user_ids, z, e, found, self.source, self.run_id, per_host)

    def take(self, user_ids: Iterable[Any]) -> HostPartials:
        """The partials of raw ``user_ids`` (matched by key), aligned to them; absent users: not found."""
        ids = list(user_ids)
        raw = np.empty(len(ids), dtype=object)
        raw[:] = ids
        keys = pd.Index(id_keys(raw, source="user_ids"), dtype=object)
        pos = self.keys.get_indexer(keys) if len(raw) else np.zeros(0, np.int64)
        return self.select(pos, raw)


def combine_partials(parts: Mapping[str, HostPartials]) -> HostPartials:
    """Several hosts' partials of the same rows (aligned) as ONE host's, so that every join above holds
    unchanged (``E = Σ_j e_Hj``; a host without a row for a user contributes zeros)::

        z_H = Σ_j z_Hj + Σ_{j<l} <e_Hj, e_Hl>        e_H = E        found = found at any host

    ``host_found`` keeps which host had which row (per-host fallback flags). One host: returned as it
    is (the single-host join, bit for bit)."""
    if not parts:
        raise ValueError("combine_partials: no host partials")
    if len(parts) == 1:
        return next(iter(parts.values()))
    names = list(parts)
    first = parts[names[0]]
    n, k = len(first.user_ids), first.n_factors
    z, e = np.zeros(n), np.zeros((n, k))
    es: list[np.ndarray] = []
    found: dict[str, np.ndarray] = {}
    for h in names:
        p = parts[h]
        if len(p.user_ids) != n or p.n_factors != k:
            raise ValueError(f"combine_partials: host {h!r} gives {len(p.user_ids)} rows of k={p.n_factors}, "
                             f"host {names[0]!r} {n} rows of k={k}")
        assert p.found is not None
        f = p.found
        eh = np.where(f[:, None], p.e_h, 0.0).astype(np.float64)
        z += np.where(f, p.z_h, 0.0)
        for prev in es:  # the host-host terms, computed by the guest from the partials it holds
            z += np.sum(prev * eh, axis=1)
        es.append(eh)
        e += eh
        found[h] = f.copy()
    anyf = np.any(np.stack(list(found.values())), axis=0)
    runs = {parts[h].run_id for h in names}
    return HostPartials(first.user_ids, z, e, anyf, " + ".join(parts[h].source for h in names),
                        runs.pop() if len(runs) == 1 else None, found)


def join_pairs(z_g: np.ndarray, e_g: np.ndarray, partials: HostPartials) -> np.ndarray:
    """``z = z_G + z_H + <e_G, e_H>`` row by row (``partials`` aligned to the rows; not found: ``z_G``)."""
    f = partials.found
    assert f is not None
    z = np.array(z_g, dtype=np.float64, copy=True)
    z[f] += partials.z_h[f] + np.sum(e_g[f] * partials.e_h[f], axis=1)
    return z


def join_user_factors(a: np.ndarray, p: np.ndarray, partials: HostPartials) -> tuple[np.ndarray, np.ndarray]:
    """``a += z_H + <p, e_H>``, ``p += e_H`` on the found rows (new arrays of ``a``'s and ``p``'s dtypes;
    row ``r`` of ``a``, ``p`` and ``partials`` is the same user)."""
    f = partials.found
    assert f is not None
    a, p = np.array(a, copy=True), np.array(p, copy=True)
    e = partials.e_h[f].astype(p.dtype)
    a[f] += partials.z_h[f].astype(a.dtype) + np.sum(p[f] * e, axis=1)
    p[f] += e
    return a, p


# ---------------------------------------------------------------------------------- files and run ids
def sidecar_path(path: str | Path) -> Path:
    """The fingerprint sidecar of a partials file: ``<file>.meta.json``."""
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def _check_suffix(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ArtifactError(f"{p}: host partials must be .csv, .tsv or .parquet, got {suffix!r}")
    return suffix


def write_host_partials(path: str | Path, frame: pd.DataFrame, run_id: str) -> Path:
    """Write a partials table (CSV/TSV/Parquet by suffix) and its fingerprint sidecar, atomically.

    ``frame``: ``user_id, z_H, e_H_0..e_H_{k-1}`` (further columns are kept), validated first;
    ``run_id``: the training run whose host produced it (the guest model's ``hetero.json`` carries the
    same). Returns ``path``."""
    p = Path(path)
    suffix = _check_suffix(p)
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"write_host_partials: run_id must be a non-empty string, got {run_id!r}")
    k = sum(1 for c in frame.columns if isinstance(c, str) and _E_COLUMN.match(c))
    if k == 0:
        raise ArtifactError(f"{p}: host partials have no e_H_0.. columns")
    table = HostPartials.from_frame(frame, k, source=str(p), run_id=run_id)
    with atomic_file(p) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
    write_json_atomic(sidecar_path(p), {
        "format": PARTIALS_FORMAT, "format_version": PARTIALS_VERSION, "run_id": run_id, "data_file": p.name,
        "content_sha256": file_sha256(p), "n_users": len(table.user_ids), "n_factors": k})
    return p


def _read_sidecar(p: Path, n_factors: int) -> str | None:
    side = sidecar_path(p)
    if not side.exists():
        return None
    meta = read_json(side, "host partials fingerprint")
    if meta.get("format") != PARTIALS_FORMAT or meta.get("format_version") != PARTIALS_VERSION:
        raise ArtifactError(f"{side}: fields 'format'/'format_version' are {meta.get('format')!r}/"
                            f"{meta.get('format_version')!r}, expected {PARTIALS_FORMAT!r}/"
                            f"{PARTIALS_VERSION}")
    run_id = meta.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ArtifactError(f"{side}: field 'run_id' must be a non-empty string, got {run_id!r}")
    if meta.get("content_sha256") != file_sha256(p):
        raise ArtifactError(f"{p}: content does not match field 'content_sha256' of {side.name} (the file "
                            f"was replaced or modified after run {run_id!r} wrote it): re-export the "
                            "partials")
    if meta.get("n_factors") != n_factors:
        raise ArtifactError(f"{side}: field 'n_factors' is {meta.get('n_factors')!r}, the guest model has "
                            f"n_factors={n_factors}")
    return run_id


def read_host_partials(path: str | Path, n_factors: int) -> HostPartials:
    """Read and validate a partials file and its fingerprint (``run_id`` is ``None`` for a file written
    before fingerprints: no sidecar), through :func:`fedrec.data.tables.read_table`. CSV ids are read as
    text, so ``007`` stays ``"007"``; an empty table is an error."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: host partials file not found")
    suffix = _check_suffix(p)
    run_id = _read_sidecar(p, n_factors)
    from fedrec.data.schema import DataValidationError
    from fedrec.data.tables import read_table

    try:  # the validated reader: ragged lines, BOM, binary, huge fields, bad Parquet are named errors
        tt = read_table(p, format=suffix.lstrip("."))
    except DataValidationError as exc:
        raise ArtifactError(f"cannot read host partials: {exc}") from exc
    if tt.issues:
        i = tt.issues[0]
        raise ArtifactError(f"{p}, line {i.row}: {i.expected} [{i.reason}]")
    return HostPartials.from_frame(tt.frame, n_factors, source=str(p), run_id=run_id,
                                   line_numbers=tt.line_numbers if suffix != ".parquet" else None)


def guest_run_id(directory: str | Path) -> tuple[str | None, str]:
    """The ``run_id`` of a vertical guest model directory (from its ``hetero.json``; ``None`` when it has
    none) and the file it was read from (for errors)."""
    path = Path(directory) / GUEST_META
    meta = read_json(path, "vertical guest model metadata")
    run_id = meta.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ArtifactError(f"{path}: field 'run_id' must be a non-empty string, got {run_id!r}")
    return run_id, str(path)


def check_run_id(model_run_id: str | None, model_source: str, partials: HostPartials) -> None:
    """Refuse partials of another training run than the guest model's (the module docstring's rule)."""
    ours, theirs = model_run_id, partials.run_id
    if ours == theirs and ours is not None:
        return
    if ours is None and theirs is None:
        if not partials.source.startswith("<"):  # a file: its run cannot be told, so it is refused
            raise ArtifactError(
                f"host partials {partials.source} carry no run_id (no {sidecar_path(partials.source).name}) "
                f"and neither does the guest model {model_source}: partials that cannot be tied to the "
                "model's training run are refused (they may come from another run and give wrong scores); "
                "train again with `fedrec train` (both halves and the partials then carry the run id)")
        logger.warning("%s and %s carry no run_id (built in memory): they cannot be checked to come from "
                       "the same training run", partials.source, model_source)
        return
    if theirs is None:
        raise ArtifactError(
            f"host partials {partials.source} carry no run_id (written before run fingerprints, no "
            f"{sidecar_path(partials.source).name}), but the guest model {model_source} is run_id {ours!r}: "
            f"re-export them from the host of run {ours!r} (`fedrec train --role host` writes partials "
            f"with their fingerprint; in code fedrec.models.vertical.write_host_partials(path, frame, "
            f"run_id))")
    if ours is None:
        raise ArtifactError(
            f"host partials {partials.source} are run_id {theirs!r}, but the guest model {model_source} "
            f"carries no run_id (trained before run fingerprints): use partials and model of one run")
    raise ArtifactError(
        f"host partials {partials.source} are run_id {theirs!r} but the guest model {model_source} is run_id "
        f"{ours!r}: they come from different training runs; use the partials exported by the host of "
        f"run {ours!r}")


# ---------------------------------------------------------------------------------- the joined model
PartialsSource = Callable[[list[Any]], HostPartials]


class VerticalFM:
    """A guest :class:`FactorizationMachine` joined with host partials: ``decision_function``, ``predict``
    and ``recommend`` as the full vertical model.

    ``partials``: a :class:`HostPartials` table (exported files: :meth:`load`) or a function of raw
    user ids returning their partials aligned to them (the guest asking the host). It is asked only for
    users the guest model knows. ``last_fallbacks`` counts input rows per reason code.

    ``guard``: ``(alpha, bank_alone)`` of the guest-side guard (:mod:`fedrec.models.guard`): every score
    is then ``(1 − alpha) · bank_alone + alpha · joined`` (raw outputs; ``predict`` finishes the blend).
    :meth:`load` applies the guard saved beside the guest half."""

    def __init__(self, guest: FactorizationMachine,
                 partials: HostPartials | PartialsSource | Mapping[str, HostPartials],
                 guard: tuple[float, FactorizationMachine] | None = None) -> None:
        self.guest = guest
        self.guard = guard
        if guard is not None:
            from fedrec.models.guard import check_alpha

            check_alpha(guard[0], "VerticalFM(guard=...)")
        if isinstance(partials, Mapping):  # several hosts: joined per user by combine_partials
            tables = dict(partials)
            self.table = None if len(tables) != 1 else next(iter(tables.values()))
            self.tables: dict[str, HostPartials] = tables
            self.partials_for: PartialsSource = (
                self.table.take if self.table is not None
                else lambda ids: combine_partials({h: t.take(ids) for h, t in tables.items()}))
        else:
            self.table = partials if isinstance(partials, HostPartials) else None
            self.tables = {} if self.table is None else {"host": self.table}
            self.partials_for = partials.take if isinstance(partials, HostPartials) else partials
        self.last_fallbacks: dict[str, int] = {}
        #: several hosts: per host, the rows of known users without that host's partials (its zeros)
        self.last_host_fallbacks: dict[str, int] = {}

    @classmethod
    def load(cls, guest_dir: str | Path, partials_path: str | Path | Mapping[str, str | Path], *,
             guard: bool = True) -> VerticalFM:
        """The guest half saved at ``guest_dir`` (``meta.json`` + ``hetero.json``) joined with a partials
        file of the same training run (:func:`check_run_id`), or with one file per host
        (``{host: path}``, a multi-host model: every file of the same run). ``guard``: apply the guard
        saved beside it (``guard.json``, :mod:`fedrec.models.guard`); ``False``: the federated model as
        trained."""
        from fedrec.models.guard import load_guard

        guest = FactorizationMachine.load(guest_dir)
        run_id, origin = guest_run_id(guest_dir)
        saved = load_guard(guest_dir, run_id) if guard else None
        blend = None if saved is None or saved[1] is None else (saved[0].alpha, saved[1])
        paths = partials_path if isinstance(partials_path, Mapping) else None
        if paths is None:
            partials = read_host_partials(partials_path, guest.config.n_factors)  # type: ignore[arg-type]
            check_run_id(run_id, origin, partials)
            return cls(guest, partials, blend)
        tables = {}
        for host, path in paths.items():
            tables[host] = read_host_partials(path, guest.config.n_factors)
            check_run_id(run_id, origin, tables[host])
        return cls(guest, tables, blend)

    def _rows(self, raw: np.ndarray, known: np.ndarray) -> HostPartials:
        """Partials aligned to the rows ``raw``, asked once per distinct known user (unknown: not found)."""
        k = self.guest.config.n_factors
        uniq = pd.unique(pd.Series(raw[known], dtype=object))
        if not len(uniq):
            return HostPartials(raw, np.zeros(len(raw)), np.zeros((len(raw), k)), np.zeros(len(raw), bool))
        table = self.partials_for(list(uniq))
        if len(table.user_ids) != len(uniq) or table.n_factors != k:
            raise ValueError(f"{table.source}: {len(table.user_ids)} partials of k={table.n_factors} for "
                             f"{len(uniq)} users, expected k={k}")
        pos = np.full(len(raw), -1, dtype=np.int64)
        pos[known] = pd.Index(uniq).get_indexer(pd.Index(raw[known], dtype=object))
        return table.select(pos, raw)

    def _count(self, rows: HostPartials | None = None, known: np.ndarray | None = None,
               **counts: int) -> None:
        self.last_fallbacks = counts
        if rows is not None and rows.host_found is not None and known is not None:
            self.last_host_fallbacks = {h: int((known & ~f).sum()) for h, f in rows.host_found.items()}
        if counts.get(NO_HOST_PARTIAL):
            logger.info("%d input row(s) of known users have no host partials: scored with the guest "
                        "terms only", counts[NO_HOST_PARTIAL])

    def decision_function(self, pairs: pd.DataFrame) -> np.ndarray:
        """``z = z_G + z_H + <e_G, e_H>`` per row of ``pairs`` (``user_id, item_id`` [, ``timestamp``])."""
        pairs = check_frame(pairs, "pairs", ("user_id", "item_id")).reset_index(drop=True)
        user_map, item_map, _ = self.guest._require_fitted()
        terms = self.guest.party_terms(pairs)["guest"]
        raw = pairs["user_id"].to_numpy(dtype=object)
        known = user_map.to_inner(raw, unknown="mask") >= 0
        rows = self._rows(raw, known)
        assert rows.found is not None
        self._count(rows, known, **{UNKNOWN_USER: int((~known).sum()),
                       UNKNOWN_ITEM: int((item_map.to_inner(pairs["item_id"], unknown="mask") < 0).sum()),
                       NO_HOST_PARTIAL: int((known & ~rows.found).sum())})
        z = join_pairs(terms.z, terms.e, rows)
        if self.guard is None:
            return z
        alpha, bank = self.guard
        return (1.0 - alpha) * bank.decision_function(pairs) + alpha * z

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """As :meth:`FactorizationMachine.predict` (clipped ratings, probabilities or scores)."""
        return np.asarray(self.guest.finish(self.decision_function(pairs)), dtype=np.float64)

    def recommend(self, user_ids: Iterable[Any] | Any, k: int = 10, filter_seen: bool = True,
                  filter_items: Iterable[Any] | None = None, *, chunk_size: int = 256,
                  show_progress: bool = False, N: int | None = None,
                  filter_already_seen: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user (raw ids, best first), as :meth:`Recommender.recommend` (``N`` /
        ``filter_already_seen``: deprecated aliases) with
        ``score = (a_u + z_H + <p_u, e_H>) + b_i + <p_u + e_H, q_i>`` (with a guard: the blend of it
        with the bank alone, :func:`fedrec.models.guard.blend_factors`)."""
        k, filter_seen = recommend_aliases(k, filter_seen, N, filter_already_seen)
        user_map, item_map, seen = self.guest._require_fitted()
        raw_list, banned = check_recommend_args(user_ids, k, filter_items, item_map, chunk_size)
        raw = np.empty(len(raw_list), dtype=object)
        raw[:] = raw_list
        inner = user_map.to_inner(raw, unknown="mask")
        known = inner >= 0
        f = self.guest.scoring_factors()
        safe = np.where(known, inner, 0)
        rows = self._rows(raw, known)
        assert rows.found is not None
        a, p = join_user_factors(np.where(known, f.a_u[safe], 0.0), f.p_u[safe] * known[:, None], rows)
        self._count(rows, known,
                    **{UNKNOWN_USER: int((~known).sum()), NO_HOST_PARTIAL: int((known & ~rows.found).sum())})
        b_i, q_i = f.b_i, f.q_i
        if self.guard is not None:
            from fedrec.models.guard import blend_factors

            alpha, bank = self.guard
            g = bank.scoring_factors(f.at)
            bank_side = (np.where(known, g.a_u[safe], 0.0), g.p_u[safe] * known[:, None], g.b_i, g.q_i)
            a, p, b_i, q_i = blend_factors(alpha, (a, p, b_i, q_i), bank_side)
        idx, scores = rank_items(lambda lo, hi: factor_scores(np.arange(lo, hi), a, p, b_i, q_i), inner,
                                 k, seen=seen if filter_seen else None, banned=banned,
                                 chunk_size=chunk_size, show_progress=show_progress)
        return item_map.to_raw(idx.ravel()).reshape(idx.shape), scores
