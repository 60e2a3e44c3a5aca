"""Evaluation and the result table of ``fedrec demo``: RMSE on all test users and on cold users, with
bootstrap CIs, for the federated model and its two references, plus paired differences.

* ``rmse`` / ``rmse_cold``: ``sqrt(mean (ŷ - r)²)`` over the test rows (of cold users: <= 5 training
  ratings), 95% percentile-bootstrap CI over rows (``n_boot`` resamples, seeded).
* ``gains``: paired bootstrap of ``RMSE(a) - RMSE(b)`` on the same rows (positive: ``b`` is better).
* the guarded row (``GUARDED``): the guest-side guard's blend ``(1 - alpha) * bank alone + alpha *
  federated`` (:mod:`fedrec.models.guard`), with its gains over the bank alone and the federated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrec.eval.metrics import bootstrap_ci, paired_bootstrap_diff, rmse_statistic


def federated_label(n_processes: int) -> str:
    """The federated model's row: the guest and its hosts, one process each."""
    return f"federated FM ({n_processes} processes)"


FEDERATED = federated_label(2)  # one guest, one host
GUEST_ONLY = "FM guest-only (bank alone)"
GUARDED = "guarded FM (bank alone + federated)"
CENTRALIZED = "FM centralized (pooled, reference)"


def evaluate(predictions: dict[str, np.ndarray], y: np.ndarray, cold: np.ndarray, n_boot: int, seed: int,
             federated: str = FEDERATED) -> dict[str, Any]:
    """RMSE with CIs for every model and the paired gains of the federated model (the row ``federated``,
    :func:`federated_label`)."""
    sq = {name: (np.asarray(p, dtype=np.float64) - y) ** 2 for name, p in predictions.items()}
    out: dict[str, Any] = {"n_test": len(y), "n_cold_test": int(cold.sum()), "models": {}, "gains": {}}
    def ci(err: np.ndarray) -> dict[str, float] | None:  # None: no such test rows (e.g. no cold user)
        return bootstrap_ci(err, rmse_statistic, n_boot=n_boot, seed=seed).to_dict() if len(err) else None

    for name, err in sq.items():
        out["models"][name] = {"rmse": ci(err), "rmse_cold": ci(err[cold])}
    if federated in sq and GUEST_ONLY in sq:
        for label, mask in (("all", np.ones_like(cold)), ("cold", cold)):
            if not mask.any():
                continue
            out["gains"][f"federated_vs_guest_only_{label}"] = paired_bootstrap_diff(
                sq[GUEST_ONLY][mask], sq[federated][mask], rmse_statistic, n_boot=n_boot, seed=seed).to_dict()
    if GUARDED in sq and GUEST_ONLY in sq:
        for label, mask in (("all", np.ones_like(cold)), ("cold", cold)):
            if mask.any():
                diff = paired_bootstrap_diff(sq[GUEST_ONLY][mask], sq[GUARDED][mask], rmse_statistic,
                                             n_boot=n_boot, seed=seed)
                out["gains"][f"guarded_vs_guest_only_{label}"] = diff.to_dict()
    if GUARDED in sq and federated in sq:
        out["gains"]["guarded_vs_federated_all"] = paired_bootstrap_diff(
            sq[federated], sq[GUARDED], rmse_statistic, n_boot=n_boot, seed=seed).to_dict()
    if federated in sq and CENTRALIZED in sq:
        out["gains"]["centralized_vs_federated_all"] = paired_bootstrap_diff(
            sq[federated], sq[CENTRALIZED], rmse_statistic, n_boot=n_boot, seed=seed).to_dict()
    return out


def _ci(d: dict[str, float] | None) -> str:
    if d is None:
        return "n/a (no test rows)"
    return f"{d['point']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"


def format_table(res: dict[str, Any], seconds: dict[str, float]) -> str:
    """The printed result table (models x {RMSE, cold RMSE}, fit seconds) and the verdicts."""
    lines = [f"test ratings: {res['n_test']} (of cold users, <= 5 train ratings: {res['n_cold_test']})",
             f"{'model':<36} {'RMSE [95% CI]':<26} {'cold-user RMSE [95% CI]':<26} {'fit s':>6}"]
    for name, m in res["models"].items():
        s = seconds.get(name, float("nan"))
        lines.append(f"{name:<36} {_ci(m['rmse']):<26} {_ci(m['rmse_cold']):<26} {s:>6.1f}")
    g = res["gains"]
    lines.append("")
    for key, text in (("federated_vs_guest_only_cold", "cold-user RMSE gain of federation over the bank "
                                                        "alone"),
                      ("federated_vs_guest_only_all", "RMSE gain of federation over the bank alone (all)"),
                      ("guarded_vs_guest_only_cold", "cold-user RMSE gain of the guarded model over the bank "
                                                     "alone"),
                      ("guarded_vs_guest_only_all", "RMSE gain of the guarded model over the bank alone "
                                                    "(all)"),
                      ("guarded_vs_federated_all", "RMSE gain of the guarded model over federation (all)"),
                      ("centralized_vs_federated_all", "RMSE the pooled reference still gains over "
                                                       "federation")):
        if key in g:
            d = g[key]
            verdict = "beyond the CI" if d["low"] > 0 or d["high"] < 0 else "within the CI"
            lines.append(f"{text}: {_ci(d)} ({verdict})")
    model = res.get("model") or {}
    settings = "6 epochs, 8 factors"  # the demo's defaults; the run's own when the results carry them
    if {"epochs", "n_factors"} <= set(model):
        settings = f"{model['epochs']} epochs, {model['n_factors']} factors"
    lines += ["", *(line.replace("6 epochs, 8 factors", settings) for line in READING_GUIDE)]
    return "\n".join(lines)


#: printed under the table: what its words mean (issue #13: the table was unexplained)
READING_GUIDE = [
    "how to read this:",
    "- RMSE: root mean squared error of the predicted ratings on held-out test ratings; lower is better. "
    "The brackets are 95% bootstrap intervals.",
    "- cold user: a test user with at most 5 training ratings, where the partner's features matter most.",
    "- a gain of X over Y = RMSE(Y) - RMSE(X) on the same rows: positive means X is better, negative "
    "means X is worse; 'within the CI' means no difference was shown.",
    "- fit s: wall time of each fit. Not comparable: the federated run includes PSI, encryption and one "
    "process per party, the references train in one process (alongside the parties).",
    "- pooled reference: the same FM trained with both parties' data in one place (what federation "
    "approximates without pooling).",
    "- guarded: what the bank is handed: (1 - alpha) * bank alone + alpha * federated, alpha chosen by the "
    "bank on its validation rows (README: the guard); alpha = 1 is the federated model, 0 the bank alone.",
    "- these figures use this demo's split and settings (6 epochs, 8 factors); the README's benchmark "
    "figures (benchmarks/accuracy.py) use another split and tuned settings, so they differ.",
]


def model_key(label: str) -> str:
    """The ``results.json`` key of a table row: ``federated``, ``guest_only``, ``centralized``."""
    if label.startswith("federated FM"):
        return "federated"
    return {GUEST_ONLY: "guest_only", CENTRALIZED: "centralized", GUARDED: "guarded"}.get(
        label, label.replace(" ", "_"))


def results_for_json(res: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``results.json`` as a program reads it (issue #13 item 18): model keys without spaces (the
    table's label kept as ``label``), and every path inside ``out_dir`` written relative to it, so
    the file does not name this machine's directories and stays true when the folder is moved."""
    base = out_dir.resolve()

    def rel(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rel(v) for v in value]
        if isinstance(value, str) and value.startswith(("/", str(out_dir))):
            path = Path(value).resolve()
            if path == base or base in path.parents:
                return path.relative_to(base).as_posix()
        return value

    out = rel(res)
    out["models"] = {model_key(label): {"label": label, **row} for label, row in res["models"].items()}
    out["paths_relative_to"] = "the folder of this file's demo (--out)"
    return out
