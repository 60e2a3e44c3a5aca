"""fedmf exactness: the federated run equals the centralized biased MF trained with the same schedule
(fedrec.protocols.fedmf.reference, torch autograd): plain backend to 1e-5 (measured ~1e-15), CKKS within
a tolerance derived from its scale, secure-aggregation masks within their float64 rounding bound; the
same users give the same model whether they sit on devices or in silos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedrec.crypto.secagg import mask_error_bound
from fedrec.protocols.fedmf import FedMFConfig, ReferenceMF, fit_reference
from fedrec.protocols.fedmf.masking import mask_scale
from fedrec.protocols.fedmf.simulation import SimulationResult, simulate, synthetic_federation

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

SMALL = {"n_factors": 4, "rounds": 6, "timeout": 30.0, "masks": False}  # the masked test sets masks=True


def max_error(res: SimulationResult, ref: ReferenceMF) -> float:
    """Largest difference over every client's final items, users, biases and global mean."""
    err = 0.0
    for c in res.clients.values():
        assert c.finished and c.items is not None and c.mu is not None
        pos = pd.Index(ref.user_ids).get_indexer(pd.Index(c.data.users))
        assert (pos >= 0).all()
        err = max(err, abs(c.mu - ref.mu), float(np.abs(c.items.q - ref.q).max()),
                  float(np.abs(c.items.b - ref.b).max()), float(np.abs(c.users.p - ref.p[pos]).max()),
                  float(np.abs(c.users.bu - ref.bu[pos]).max()))
    return err


def test_plain_silos_equal_the_centralized_schedule() -> None:
    clients, catalogue, _ = synthetic_federation(4, n_users=40, n_items=30)
    cfg = FedMFConfig(backend="plain", **SMALL)
    res = simulate(clients, catalogue, cfg)
    ref = fit_reference(clients, catalogue, cfg)
    assert res.server.rounds_done == cfg.rounds
    assert max_error(res, ref) == pytest.approx(0.0, abs=1e-5)
    assert sum(c.clipped for c in res.clients.values()) == 0  # the reference does not clip
    assert np.abs(ref.q - fit_reference(clients, catalogue, FedMFConfig(backend="plain", **{
        **SMALL, "rounds": 0})).q).max() > 1e-3  # training moved the items: the equality is not vacuous


def test_plain_devices_with_client_sampling_equal_the_centralized_schedule() -> None:
    clients, catalogue, _ = synthetic_federation(30, n_users=30, n_items=25)
    cfg = FedMFConfig(backend="plain", clients_per_round=7, **SMALL)
    res = simulate(clients, catalogue, cfg)
    assert all(len(r.selected) == 7 for r in res.server.reports if "train" in r.step)
    assert max_error(res, fit_reference(clients, catalogue, cfg)) == pytest.approx(0.0, abs=1e-5)


def test_devices_and_silos_of_the_same_users_train_the_same_model() -> None:
    devices, catalogue, _ = synthetic_federation(40, n_users=40, n_items=30)
    silos, _, _ = synthetic_federation(5, n_users=40, n_items=30)
    cfg = FedMFConfig(backend="plain", **SMALL)
    a = next(iter(simulate(devices, catalogue, cfg).clients.values())).items
    b = next(iter(simulate(silos, catalogue, cfg).clients.values())).items
    assert a is not None and b is not None
    assert np.abs(a.q - b.q).max() == pytest.approx(0.0, abs=1e-12)


def test_ckks_equals_the_centralized_schedule_within_its_noise() -> None:
    clients, catalogue, _ = synthetic_federation(4, n_users=40, n_items=30)
    cfg = FedMFConfig(backend="ckks", ckks_preset="n8192", **SMALL)
    res = simulate(clients, catalogue, cfg)
    ref = fit_reference(clients, catalogue, cfg)
    backend = next(iter(res.clients.values())).backend
    assert backend is not None and backend.name == "ckks"
    # every decryption of θ carries the errors of the ciphertexts summed into it: Enc(θ_0) and each upload
    # (fresh encryption + mod switch: twice error_bound(level 0) for values |x| <= max|θ|), at most
    # 1 + rounds * clients terms; the local user steps and the next rounds amplify it by a bounded factor,
    # budgeted 1e3 (measured: 1e-13 against a bound of 1e-9)
    terms = 1 + cfg.rounds * len(clients)
    per_term = 2 * backend.error_bound(0, value_bound=float(np.abs(ref.q).max()))
    err = max_error(res, ref)
    assert err == pytest.approx(0.0, abs=1e3 * terms * per_term)
    assert err > 0  # CKKS is approximate: an exact match would mean nothing was encrypted


@pytest.mark.parametrize("group", [100, 3])
def test_masked_uploads_sum_to_the_unmasked_schedule_within_the_mask_rounding(group: int) -> None:
    clients, catalogue, _ = synthetic_federation(7, n_users=42, n_items=30)
    cfg = FedMFConfig(backend="plain", **{**SMALL, "masks": True, "mask_group": group})
    res = simulate(clients, catalogue, cfg)
    ref = fit_reference(clients, catalogue, cfg)
    # per secure sum, the float64 rounding of x + mask over the uploads masked against their group's
    # peers and the correction (secagg.mask_error_bound at the automatic scale); propagated through the
    # later rounds and the users' steps: budget 10x per round
    n = len(clients)
    per_sum = mask_error_bound(mask_scale(cfg, n), n_uploads=n, n_peers=min(n, group) - 1)
    tol = 10 * cfg.rounds * per_sum
    err = max_error(res, ref)
    assert err == pytest.approx(0.0, abs=tol) and tol < 1e-4
    train = [r for r in res.server.reports if r.step.startswith("fedmf/train")]
    assert len(train) == cfg.rounds and {r.groups for r in train} == {1 if group > n else 3}
