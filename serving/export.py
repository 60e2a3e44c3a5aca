"""Export a fitted fedrec model as a serving bundle (layout in :mod:`serving.artifacts`).

* :class:`~fedrec.models.FactorizationMachine`: ``scoring_factors(at)`` gives ``a_u, p_u, b_i, q_i``.
  With ``vertical=True`` the user side is split by field owner (fedrec.models.fm_core):
  ``a_G, p_G = combine(guest user fields)`` go into the bundle and ``z_H, e_H = combine(host user
  fields)`` are what the host exports per user (:func:`fm_host_partials`; the vertical federated FM's
  host does the same with ``export_partials``). Identity (:mod:`fedrec.models.vertical`):
  ``a_u = a_G + z_H + <p_G, e_H>``, ``p_u = p_G + e_H``.
* :class:`~fedrec.models.BiasedMF`: ``a = b_u``, ``p = p_u``, ``b = μ + b_i``, ``q = q_i``.
* :class:`~fedrec.models.Popularity`: ``b = item score``, ``a = 0``, ``p = q = 0`` (``k = 1``).

A guest half with a guard (``guard.json`` + ``bank_alone/`` beside it, :mod:`fedrec.models.guard`)
exports as the blend with the bank alone (:func:`guarded_bundle`), so ``fedrec recommend`` / ``serve``
rank by the guarded score.

A user the model does not know is ranked by ``b_i`` (``a = 0, p = 0``: its fields are empty), which
is what the model's own ``recommend`` answers. For a popularity ranking of unknown users, serve a
:class:`~fedrec.models.Popularity` bundle for the users flagged ``unknown_user``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrec.models import BiasedMF, FactorizationMachine, ModelFormatError, Popularity, Recommender
from fedrec.models.fm_core import combine
from fedrec.models.guard import GUARD_FILE, blend_factors, check_same_rows, load_guard
from fedrec.models.vertical import GUEST_META, guest_run_id
from serving.artifacts import ArtifactError, ServingBundle

logger = logging.getLogger(__name__)


def _fm_user_side(model: FactorizationMachine, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """``(z, e)`` of the user-side fields owned by ``owner`` for every inner user."""
    assert model.user_map is not None and model.params is not None
    n_u, k = len(model.user_map), model.config.n_factors
    specs = [s for s in model.field_specs if s.side == "user" and s.owner == owner]
    with torch.no_grad():
        terms = model.params.entity_terms(specs, model.tables, np.arange(n_u))
        z, e = combine(terms, None, n_u, k)
    return z.numpy().astype(np.float32), e.numpy().astype(np.float32)


def bundle_from_model(model: Recommender, *, at: int | None = None, vertical: bool = False,
                      run_id: str | None = None, origin: str | None = None) -> ServingBundle:
    """Reduce a fitted model to ``score(u, i) = a_u + b_i + <p_u, q_i>`` (see the module docstring).

    ``run_id``: the training run of a vertical guest half (host partials must carry the same);
    ``origin``: where the model came from, for errors."""
    if not model.is_fitted:
        raise ValueError(f"{type(model).__name__} is not fitted: nothing to export")
    assert model.user_map is not None and model.item_map is not None and model.seen is not None
    source: dict[str, Any] = {"model_class": type(model).__name__, "hyperparameters": model.get_params()}
    if vertical and not isinstance(model, FactorizationMachine):
        raise ValueError(f"vertical=True needs a FactorizationMachine, got {type(model).__name__}")
    at_out = 0
    a: np.ndarray
    p: np.ndarray
    b: np.ndarray
    q: np.ndarray
    score_kind, scale = _score_kind(model)
    if isinstance(model, FactorizationMachine):
        f = model.scoring_factors(at)
        at_out = f.at
        a, p = f.a_u.astype(np.float32), f.p_u.astype(np.float32)
        b, q = f.b_i.astype(np.float32), f.q_i.astype(np.float32)
        if vertical:
            a, p = _fm_user_side(model, "guest")
            source["host_fields"] = [s.name for s in model.field_specs if s.owner == "host"]
    elif isinstance(model, BiasedMF):
        mu, bu, bi, pu, qi = model._arrays()
        a, p, b, q = bu, pu, mu + bi, qi
    elif isinstance(model, Popularity):
        n_u, n_i = len(model.user_map), len(model.item_map)
        a, p, b, q = np.zeros(n_u), np.zeros((n_u, 1)), model.item_score, np.zeros((n_i, 1))
    else:
        raise TypeError(f"no serving export for {type(model).__name__}")
    return ServingBundle(
        kind="vertical" if vertical else "factors", user_map=model.user_map, item_map=model.item_map,
        a_u=np.asarray(a, np.float32), p_u=np.asarray(p, np.float32), b_i=np.asarray(b, np.float32),
        q_i=np.asarray(q, np.float32), seen_indptr=model.seen.indptr, seen_indices=model.seen.indices,
        at=at_out, source=source, run_id=run_id, origin=origin or f"<{type(model).__name__}>",
        score_kind=score_kind, rating_scale=scale)


def _score_kind(model: Recommender) -> tuple[str, tuple[float, float] | None]:
    """What the model's scores are (:data:`serving.artifacts.SCORE_KINDS`) and the range its predicted
    ratings are clipped to (its own ``predict`` clips to the training ratings' range when ``clip``)."""
    if isinstance(model, (FactorizationMachine, BiasedMF)):
        objective = getattr(model.config, "objective", "regression")
        if objective == "logistic":
            return "probability", None
        if objective != "regression":
            return "ranking_score", None
        scale = model.rating_scale if model.config.clip else None
        return "predicted_rating", None if scale is None else (float(scale[0]), float(scale[1]))
    return "ranking_score", None


def fm_host_partials(model: FactorizationMachine, user_ids: Any) -> pd.DataFrame:
    """The host's export for raw ``user_ids``: ``user_id, z_H, e_H_0..e_H_{k-1}``.

    What the vertical FM's host computes from its own user-feature fields (the plaintext reference
    does it from the same parameters). Users the model does not know are left out (the host has no
    aligned row for them), so the scorer reports their fallback.
    """
    assert model.user_map is not None
    raw = np.asarray(list(user_ids), dtype=object)
    inner = model.user_map.to_inner(raw, unknown="mask")
    z, e = _fm_user_side(model, "host")
    keep = inner >= 0
    out = pd.DataFrame({"user_id": model.user_map.to_raw(inner[keep]), "z_H": z[inner[keep]]})
    for j in range(e.shape[1]):
        out[f"e_H_{j}"] = e[inner[keep], j]
    return out


def check_aligned_beside(model_dir: Path) -> None:
    """Refuse a vertical guest half whose training run's aligned set differs from the ``aligned.csv``
    beside it (``[output] dir`` of ``fedrec train``): a killed re-run can leave a new alignment next to
    the previous run's model, and scoring that mixture would be wrong without any error. Models written
    before the digest was recorded (no ``aligned_set_sha256`` in ``hetero.json``) are not checked."""
    from fedrec.artifacts import read_json
    from fedrec.data.tables import read_ids
    from fedrec.protocols.hetero_fm.state import aligned_digest

    meta_path = model_dir / GUEST_META
    want = read_json(meta_path, "vertical guest model metadata").get("aligned_set_sha256")
    aligned = model_dir.parent / "aligned.csv"
    if not isinstance(want, str) or not aligned.is_file():
        return
    ids, _ = read_ids(aligned, "id", allow_empty=True)
    if aligned_digest([str(x) for x in ids], ordered=False) != want:
        raise ArtifactError(f"{aligned} holds another aligned set ({len(ids)} ids) than the one the model "
                            f"in {model_dir} was trained on ({meta_path}: aligned_set_sha256); the files "
                            "come from two runs (a re-run killed after PSI?): run `fedrec train` again to "
                            "the end, or use the model with the aligned.csv of its own run")


def load_serving_bundle(directory: str | Path) -> ServingBundle:
    """A serving bundle directory (``serving.json``), or a saved fedrec model (``meta.json``) exported
    on the fly at the model's reference time: a ``vertical`` bundle when the directory is the guest
    half of the vertical federated FM (``hetero.json`` beside ``meta.json``; its ``run_id`` is the
    bundle's), else ``factors``."""
    from fedrec.models import load_model
    from serving.artifacts import META_FILE, load_bundle

    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"{path}: model directory not found")
    if (path / META_FILE).is_file() or not (path / "meta.json").is_file():
        return load_bundle(path)
    try:
        model = load_model(path)
    except ModelFormatError as exc:
        raise ArtifactError(str(exc)) from exc
    if (path / GUEST_META).is_file():
        if not isinstance(model, FactorizationMachine):
            raise ArtifactError(f"{path / GUEST_META}: the guest half must be a FactorizationMachine, "
                                f"meta.json says {type(model).__name__}")
        run_id, origin = guest_run_id(path)
        check_aligned_beside(path)
        bundle = bundle_from_model(model, vertical=True, run_id=run_id, origin=origin)
        saved = load_guard(path, run_id)
        if saved is None or saved[1] is None:
            return bundle
        logger.info("%s: the guarded model (%s): host_scale = alpha = %.4f", path, GUARD_FILE, saved[0].alpha)
        return guarded_bundle(bundle, saved[1], saved[0].alpha, origin=str(path / GUARD_FILE))
    return bundle_from_model(model, origin=str(path / "meta.json"))


def guarded_bundle(federated: ServingBundle, bank: FactorizationMachine, alpha: float, *,
                   origin: str = "<guard>") -> ServingBundle:
    """The guard's blend ``(1 − alpha) · bank + alpha · federated`` as one vertical bundle
    (:func:`fedrec.models.guard.blend_factors`; ``host_scale = alpha``, ``host_factors`` = the federated
    half's width), ``bank`` exported at the federated bundle's time. The two must cover the same users
    and items in the same order (the guard fits them on the same rows); else :class:`ArtifactError`
    naming ``origin``."""
    if federated.kind != "vertical":
        raise ArtifactError(f"{origin}: the guard blends a vertical bundle, got kind {federated.kind!r}")
    check_same_rows(federated.user_map, federated.item_map, bank, origin)
    f = bank.scoring_factors(federated.at)
    width = federated.host_width
    a, p, b, q = blend_factors(alpha, (federated.a_u, federated.p_u, federated.b_i, federated.q_i),
                               (f.a_u.astype(np.float32), f.p_u.astype(np.float32),
                                f.b_i.astype(np.float32), f.q_i.astype(np.float32)))
    source = {**federated.source, "guard": {"alpha": float(alpha), "bank_alone": bank.get_params()}}
    return replace(federated, a_u=a, p_u=p, b_i=b, q_i=q, source=source, host_scale=float(alpha),
                   host_factors=width if p.shape[1] != width else None)
