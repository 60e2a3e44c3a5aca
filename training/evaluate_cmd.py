"""Evaluate a trained model on a ratings file: RMSE and MAE with 95% bootstrap CIs, on all rows and per
kind of user.

``--model`` is a model directory: the guest half of a vertical FM (``[output] dir/model`` of the
guest, with ``--host-partials``: the host's ``partials.parquet`` of the same training run) or any
fedrec model (``FactorizationMachine``, ``BiasedMF``, ... saved with ``save``). ``--test`` holds
``user_id, item_id, rating`` (CSV/TSV/Parquet; other columns ignored; docs/DATA.md); every row is
scored. Lower is better for both metrics. The rows of users the model never saw, and (vertical FM)
of users without host partials, are counted and reported separately: they are scored by the
fallback the model states (item terms only / guest terms only), not by the full model. A vertical
guest half trained with the guard (``model/guard.json``) is evaluated as the bank is handed it,
``(1 - alpha) * bank alone + alpha * federated`` (``--no-guard``: the federated model as trained).

Metrics: ``RMSE = sqrt(mean (ŷ - r)²)``, ``MAE = mean |ŷ - r|``; the CI is the 2.5-97.5 percentile
of ``--n-boot`` row resamples (seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

EPILOG = """examples:
  fedrec evaluate --model ~/fedrec-guest/out/model --host-partials ~/fedrec-guest/partials.parquet \\
      --test ~/data/ratings_2021.csv
  fedrec evaluate --model artifacts/reference/guest_only --test test.parquet --json eval.json
  fedrec evaluate --model ~/fedrec-guest/out/model --host-partials ~/fedrec-guest/partials.parquet \
      --test ~/data/ratings_2021.csv --no-guard     # the federated model as trained, without the guard

Exit status: 0 evaluated, 1 error (the file, row and column are named).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="model directory (guest half of the vertical FM, or any saved fedrec model)")
    p.add_argument("--host-partials", type=Path, metavar="FILE",
                   help="vertical FM: the host's partials.parquet of the same training run (required then)")
    p.add_argument("--test", type=Path, required=True, metavar="FILE",
                   help="ratings to score: user_id, item_id, rating (CSV/TSV with header, or Parquet)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for the CIs (500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (0)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here as JSON")
    p.add_argument("--no-guard", action="store_true",
                   help="vertical FM: score the federated model as trained, not the guarded blend with the "
                        "bank alone that model/guard.json describes")


def _ci(values: np.ndarray, statistic: Any, n_boot: int, seed: int) -> dict[str, float] | None:
    from fedrec.eval.metrics import bootstrap_ci

    if not len(values):
        return None
    out: dict[str, float] = bootstrap_ci(values, statistic, n_boot=n_boot, seed=seed).to_dict()
    return out


def evaluate(model_dir: Path, partials: Path | None, test: Path, n_boot: int = 500, seed: int = 0,
             guard: bool = True) -> dict[str, Any]:
    """The metrics of the module docstring (``ValueError`` and friends name what is wrong)."""
    from fedrec.data import read_interactions
    from fedrec.eval.metrics import rmse_statistic
    from fedrec.models.base import load_model

    if n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1, got {n_boot}")
    vertical = (model_dir / "hetero.json").is_file()
    if vertical and partials is None:
        raise ValueError(f"{model_dir} is the guest half of a vertical FM: give the host's partials of the "
                         "same run with --host-partials")
    if not vertical and partials is not None:
        raise ValueError(f"{model_dir} is not a vertical FM guest model (no hetero.json): --host-partials "
                         "does not apply")
    rows, _ = read_interactions(test, rating_scale=None)
    if vertical:
        from fedrec.models.vertical import VerticalFM

        model: Any = VerticalFM.load(model_dir, partials, guard=guard)  # type: ignore[arg-type]
    else:
        model = load_model(model_dir)
    pred = np.asarray(model.predict(rows), dtype=np.float64)
    y = rows["rating"].to_numpy(dtype=np.float64)
    err = pred - y
    out: dict[str, Any] = {
        "model": str(model_dir), "host_partials": str(partials) if partials else None, "test": str(test),
        "n_rows": len(y), "n_users": int(rows["user_id"].nunique()),
        "rmse": _ci(err ** 2, rmse_statistic, n_boot, seed),
        "mae": _ci(np.abs(err), np.mean, n_boot, seed),
        "prediction_range": [float(pred.min()), float(pred.max())] if len(pred) else None,
        "rating_range": [float(y.min()), float(y.max())] if len(y) else None,
        "fallbacks": {k: int(v) for k, v in (getattr(model, "last_fallbacks", None) or {}).items()},
        "guard_alpha": model.guard[0] if getattr(model, "guard", None) is not None else None,
    }
    return out


def _fmt(d: dict[str, float] | None) -> str:
    return "n/a" if d is None else f"{d['point']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"


def run(args: argparse.Namespace) -> int:
    from fedrec.artifacts import ArtifactError
    from fedrec.data import DataValidationError

    try:
        res = evaluate(args.model, args.host_partials, args.test, args.n_boot, args.seed,
                       guard=not args.no_guard)
        if args.json is not None:
            from fedrec.artifacts import write_json_atomic

            write_json_atomic(args.json, res)
    except (ArtifactError, DataValidationError, FileNotFoundError, ValueError, OSError) as err:
        print(f"fedrec evaluate: {err}", file=sys.stderr)
        return 1
    print(f"{res['n_rows']} rows of {res['n_users']} users from {args.test}")
    if res["guard_alpha"] is not None:
        print(f"the guarded model: (1 - alpha) * bank alone + alpha * federated, alpha "
              f"{res['guard_alpha']:.3f} (--no-guard: the federated model as trained)")
    print(f"RMSE {_fmt(res['rmse'])}   MAE {_fmt(res['mae'])}   (95% CI; lower is better)")
    if res["prediction_range"] is not None:
        lo, hi = res["prediction_range"]
        rlo, rhi = res["rating_range"]
        print(f"predictions in [{lo:.2f}, {hi:.2f}], ratings in [{rlo:g}, {rhi:g}]")
    fb = {k: v for k, v in res["fallbacks"].items() if v}
    if fb:
        print("rows scored by a fallback (not the full model): " + json.dumps(fb))
    return 0
