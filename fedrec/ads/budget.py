"""The privacy budget of the conversions returned to the platform, tracked across releases and persisted.

Every release of conversion information (an event-level return, an aggregate report) is *charged* before
its noise is drawn; a release that would take the total beyond the budget is refused with
:class:`BudgetExceededError` and nothing is released. The ledger is a JSON file written atomically
(:func:`fedrec.artifacts.write_json_atomic`) under an advisory lock (``<file>.lock``), so a restart, or a
second process, sees every release charged so far.

Unit of privacy (``unit``, fixed when the budget is created): ``"user"`` protects all the conversions of
one user (add/remove one user's conversions), ``"click"`` the conversion label of one click (replace one
label). A release states its ε for both; the budget charges its own unit. E.g. randomized response at ε
per click is ``m ε`` per user when a user has ``m`` returned clicks; an aggregate report with each user's
contribution bounded is ε for a user (and so for any one of the user's clicks).

Composition (releases over the same clicks; conservative when they touch disjoint ones)::

    total ε = sum of the pure ε of the Laplace / randomized-response releases          (basic composition)
            + ε(δ) of all Gaussian releases composed by the RDP accountant of dp-accounting
              (RDP of one release of noise multiplier z: α / (2 z²), i.e. ρ = 1/(2 z²)-zCDP)

which is ``(total ε, δ)``-DP (sequential composition of an ε₁-DP and an (ε₂, δ)-DP mechanism). ``δ`` is the
budget's; a budget with ``δ = 0`` accepts pure releases only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrec.artifacts import write_json_atomic
from fedrec.crypto.dp import PrivacyAccountant

log = logging.getLogger(__name__)

__all__ = ["BudgetError", "BudgetExceededError", "PrivacyBudget", "Release", "UNITS"]

FORMAT, VERSION = "fedrec-ads-dp-budget", 1
UNITS = ("user", "click")
KINDS = ("laplace", "gaussian", "rr", "rr_prior")


class BudgetError(ValueError):
    """A budget file is missing, malformed or of another format; names the file and the field."""


class BudgetExceededError(RuntimeError):
    """A release would exceed the budget; nothing was charged or released."""


@dataclass(frozen=True)
class Release:
    """One release as charged: ``epsilon[unit]`` for a pure release (Laplace, randomized response),
    ``noise_multiplier[unit]`` (σ / sensitivity) for a Gaussian one."""

    name: str
    kind: str
    epsilon: Mapping[str, float] = field(default_factory=dict)
    noise_multiplier: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Release.kind must be one of {KINDS}, got {self.kind!r}")
        values = self.noise_multiplier if self.kind == "gaussian" else self.epsilon
        what = "noise_multiplier" if self.kind == "gaussian" else "epsilon"
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf
                 for v in values.values())
        if set(values) != set(UNITS) or not ok:
            raise ValueError(f"Release {self.name!r}: {what} must give a positive finite number for each "
                             f"unit {UNITS}, got {dict(values)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "epsilon": dict(self.epsilon),
                "noise_multiplier": dict(self.noise_multiplier), "details": dict(self.details)}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _number(doc: Mapping[str, Any], key: str, path: Path, lo: float, strict: bool = True) -> float:
    v = doc.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if strict
                                                                                           else v >= lo)
    if not ok:
        raise BudgetError(f"{path}: field {key!r} is {v!r}; expected a finite number "
                          f"{'>' if strict else '>='} {lo}")
    return float(v)  # type: ignore[arg-type]


class PrivacyBudget:
    """A persisted (ε, δ) budget in ``unit`` (see the module docstring). :meth:`create` a new one,
    :meth:`open` an existing one; :meth:`charge` before every release."""

    def __init__(self, path: Path, epsilon: float, delta: float, unit: str, releases: list[Release]) -> None:
        self.path, self.epsilon, self.delta, self.unit = path, epsilon, delta, unit
        self.releases = releases

    # ----------------------------------------------------------------------------------------- files
    @classmethod
    def create(cls, path: str | Path, *, epsilon: float, delta: float = 0.0, unit: str = "user"
               ) -> PrivacyBudget:
        """A new, empty budget at ``path`` (refused if the file exists: open it instead)."""
        p = Path(path)
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"PrivacyBudget: epsilon must be a positive finite number, got {epsilon!r}")
        if not 0 <= delta < 1:
            raise ValueError(f"PrivacyBudget: delta must be in [0, 1), got {delta!r}")
        if unit not in UNITS:
            raise ValueError(f"PrivacyBudget: unit must be one of {UNITS}, got {unit!r}")
        with _locked(p):
            if p.exists():
                raise BudgetError(f"{p}: a budget already exists here (PrivacyBudget.open it; a new budget "
                                  "would forget the releases charged to it)")
            budget = cls(p, float(epsilon), float(delta), unit, [])
            budget._write()
        return budget

    @classmethod
    def open(cls, path: str | Path) -> PrivacyBudget:
        p = Path(path)
        with _locked(p):
            return cls._read(p)

    @classmethod
    def _read(cls, p: Path) -> PrivacyBudget:
        if not p.is_file():
            raise BudgetError(f"{p}: no budget file (PrivacyBudget.create one)")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BudgetError(f"{p}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != VERSION:
            got = (doc.get("format"), doc.get("format_version")) if isinstance(doc, dict) else \
                type(doc).__name__
            raise BudgetError(f"{p}: fields 'format'/'format_version' are {got}; expected {FORMAT!r} "
                              f"v{VERSION}")
        eps, delta = _number(doc, "epsilon", p, 0.0), _number(doc, "delta", p, 0.0, strict=False)
        if doc.get("unit") not in UNITS:
            raise BudgetError(f"{p}: field 'unit' is {doc.get('unit')!r}; expected one of {UNITS}")
        if not isinstance(doc.get("releases"), list):
            raise BudgetError(f"{p}: field 'releases' must be a list")
        releases = []
        for i, r in enumerate(doc["releases"]):
            try:
                releases.append(Release(r["name"], r["kind"], r.get("epsilon", {}),
                                        r.get("noise_multiplier", {}), r.get("details", {})))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BudgetError(f"{p}: field 'releases[{i}]' is malformed ({exc})") from exc
        return cls(p, eps, delta, doc["unit"], releases)

    def _write(self) -> None:
        write_json_atomic(self.path, {"format": FORMAT, "format_version": VERSION, "unit": self.unit,
                                      "epsilon": self.epsilon, "delta": self.delta,
                                      "releases": [r.to_dict() for r in self.releases],
                                      "spent": self.spent()})

    # ----------------------------------------------------------------------------------------- accounting
    def release_epsilon(self, release: Release) -> float:
        """ε of one release in this budget's unit (a Gaussian one: its own RDP ε at this budget's δ)."""
        if release.kind != "gaussian":
            return float(release.epsilon[self.unit])
        if self.delta <= 0:
            raise BudgetExceededError(f"{self.path}: a Gaussian release needs a budget with delta > 0 (this "
                                      "one has delta = 0: pure-ε releases only)")
        acc = PrivacyAccountant("add_remove")
        acc.gaussian(float(release.noise_multiplier[self.unit]))
        return acc.epsilon(self.delta)

    def spent(self, extra: Release | None = None) -> dict[str, float]:
        """``{"pure", "gaussian", "total", "delta"}`` ε spent (with ``extra`` as if it were charged)."""
        rel = [*self.releases, *([extra] if extra is not None else [])]
        pure = sum(float(r.epsilon[self.unit]) for r in rel if r.kind != "gaussian")
        gauss = [r for r in rel if r.kind == "gaussian"]
        g_eps = 0.0
        if gauss:
            if self.delta <= 0:
                raise BudgetExceededError(f"{self.path}: a Gaussian release needs a budget with delta > 0")
            acc = PrivacyAccountant("add_remove")
            for r in gauss:
                acc.gaussian(float(r.noise_multiplier[self.unit]))
            g_eps = acc.epsilon(self.delta)
        return {"pure": pure, "gaussian": g_eps, "total": pure + g_eps, "delta": self.delta if gauss else 0.0}

    def remaining(self) -> float:
        return max(0.0, self.epsilon - self.spent()["total"])

    def charge(self, release: Release) -> dict[str, float]:
        """Charge ``release`` (re-reading the file under the lock first) or raise
        :class:`BudgetExceededError`. Returns ``{"epsilon": its ε, "total": ε spent after, "remaining"}``."""
        with _locked(self.path):
            current = self._read(self.path)
            if (current.epsilon, current.delta, current.unit) != (self.epsilon, self.delta, self.unit):
                raise BudgetError(f"{self.path}: the budget on file (ε={current.epsilon}, δ={current.delta}, "
                                  f"{current.unit}) is not the one opened")
            self.releases = current.releases
            own = self.release_epsilon(release)
            after = self.spent(release)["total"]
            if after > self.epsilon * (1 + 1e-9):
                raise BudgetExceededError(
                    f"{self.path}: release {release.name!r} ({release.kind}, ε = {own:.4g} per {self.unit}) "
                    f"would bring the total to ε = {after:.4g} > the budget {self.epsilon:g} (spent "
                    f"{self.spent()['total']:.4g}, remaining {self.remaining():.4g}); refused, nothing "
                    "released")
            stamp = {**release.details, "charged_at": datetime.now(UTC).isoformat()}
            self.releases = [*self.releases, Release(release.name, release.kind, release.epsilon,
                                                     release.noise_multiplier, stamp)]
            self._write()
        log.info("privacy budget %s: charged %r ε=%.4g per %s; total %.4g of %g", self.path, release.name,
                 own, self.unit, after, self.epsilon)
        return {"epsilon": own, "total": after, "remaining": max(0.0, self.epsilon - after)}

    def summary(self) -> dict[str, Any]:
        """Per release its ε in this budget's unit, and the totals."""
        return {"path": str(self.path), "unit": self.unit, "budget_epsilon": self.epsilon,
                "delta": self.delta, "spent": self.spent(), "remaining": self.remaining(),
                "releases": [{"name": r.name, "kind": r.kind, "epsilon": self.release_epsilon(r)}
                             for r in self.releases]}
