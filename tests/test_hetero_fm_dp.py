"""Differential privacy in the vertical FM: guest-side label DP on the released gradient, host-side DP on
the partials. Noise scales are the documented σ; ε comes from the accountant and grows with steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.crypto.dp import PrivacyAccountant
from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.label_dp import LabelDP, clip_residuals, sensitivity
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def views(n_users: int = 80) -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=40, n_ratings=n_users * 10, seed=1)).dataset
    return vertical_split(ds, seed=0)


def run(cfg: HeteroFMConfig, gv: Any, hv: Any, spy: list[np.ndarray] | None = None
        ) -> tuple[HeteroFMGuest, HeteroFMHost]:
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    with pytest.MonkeyPatch.context() as patch:
        if spy is not None:
            original = LabelDP.noise

            def recording(self: LabelDP, values: np.ndarray) -> np.ndarray:
                out = original(self, values)
                spy.append(out - values)
                return out

            patch.setattr(LabelDP, "noise", recording)
        run_parties({"host": lambda: host.serve(hv.user_features),
                     "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features,
                                                validation="none").close()}, timeout=120)
    return guest, host


def test_clipping_bounds_each_samples_label_dependent_row() -> None:
    rng = np.random.default_rng(0)
    delta, e = rng.normal(size=500), rng.normal(size=(500, 4))
    clipped = clip_residuals(delta, e, n_samples=64, clip=0.5, kappa=5)
    norms = 64 * np.abs(clipped) * np.sqrt((e ** 2).sum(axis=1) + 5)
    assert np.all(norms <= 0.5 + 1e-12)
    small = clip_residuals(delta * 1e-6, e, n_samples=64, clip=0.5, kappa=5)
    np.testing.assert_array_equal(small, delta * 1e-6)  # rows already within the clip are untouched


def test_guest_label_dp_noise_has_the_accounted_sigma_and_epsilon_grows() -> None:
    gv, hv = views()
    cfg = HeteroFMConfig(n_factors=4, epochs=2, batch_size=128, backend="plain", timeout=60,
                         validation="none", dp_guest_noise_multiplier=0.8, dp_guest_clip=0.25,
                         plain_bound=8.0)
    spy: list[np.ndarray] = []
    guest, host = run(cfg, gv, hv, spy)
    assert guest._label_dp is not None
    d = guest.host_row_nnz  # the columns one user's label can move (one-hot: one per field)
    assert 0 < d < guest.n_host_features
    sigma = 0.8 * 2 * 0.25 * 8.0 * math.sqrt(2 * d)
    assert guest._label_dp.sigma == pytest.approx(sigma) == pytest.approx(0.8 * sensitivity(0.25, 8.0, d))
    noise = np.concatenate([n.ravel() for n in spy])
    assert noise.size > 1000
    assert np.std(noise) == pytest.approx(sigma, rel=0.08) and abs(np.mean(noise)) < 0.1 * sigma
    n_batches = math.ceil(len(gv.interactions) * 0.95 / 128) * 2  # "random" split keeps ~95%
    releases = guest._label_dp.releases
    assert abs(releases - n_batches) <= 2  # one release per batch (plain: one result per batch)
    reference = PrivacyAccountant(relation="replace")
    reference.gaussian(0.8, count=releases)
    eps = guest.privacy_spent()
    assert eps == pytest.approx(reference.epsilon(cfg.dp_delta))
    fewer = PrivacyAccountant(relation="replace")
    fewer.gaussian(0.8, count=releases // 2)
    assert eps is not None and eps > fewer.epsilon(cfg.dp_delta) > 0
    assert host.privacy_spent() is None  # the host added no noise of its own


def test_guest_without_dp_reports_none() -> None:
    gv, hv = views(40)
    cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=256, backend="plain", timeout=60,
                         validation="none")
    guest, _ = run(cfg, gv, hv)
    assert guest.privacy_spent() is None


def test_host_partials_dp_clips_noises_and_accounts() -> None:
    cfg = HeteroFMConfig(n_factors=4, backend="plain", dp_host_noise_multiplier=1.5, dp_host_clip=0.5)
    host = HeteroFMHost(MemoryNetwork().channel("host", ["guest"]), "guest", cfg)
    n = 4000
    z, e = host._noised(np.zeros(n), np.zeros((n, 4)))
    both = np.concatenate([z[:, None], e], axis=1)
    assert np.std(both) == pytest.approx(1.5 * 0.5, rel=0.03)
    big = np.full(n, 100.0), np.full((n, 4), 100.0)
    zb, eb = host._noised(*big)
    clipped_mean = np.concatenate([zb[:, None], eb], axis=1).mean(axis=0)
    np.testing.assert_allclose(np.linalg.norm(clipped_mean), 0.5, atol=0.05)  # clipped to ‖·‖ = clip
    eps2 = host.privacy_spent()
    host._noised(np.zeros(3), np.zeros((3, 4)))
    eps3 = host.privacy_spent()
    reference = PrivacyAccountant()
    reference.gaussian(1.5, count=3)
    assert eps3 == pytest.approx(reference.epsilon(cfg.dp_delta))
    assert eps2 is not None and eps3 is not None and eps3 > eps2 > 0


def test_target_epsilon_calibrates_the_noise_for_the_whole_training() -> None:
    from fedrec.crypto.dp import noise_multiplier_for

    cfg = HeteroFMConfig(n_factors=4, epochs=2, batch_size=128, backend="plain", timeout=30,
                         validation="none", dp_guest_epsilon=2.0, dp_guest_clip=0.25, plain_bound=8.0)
    gv, hv = views()
    guest, _ = run(cfg, gv, hv)
    assert guest._label_dp is not None
    n_batches = -(-len(gv.interactions) // cfg.batch_size)
    z = noise_multiplier_for(2.0, cfg.dp_delta, cfg.epochs * n_batches, relation="replace")
    assert guest._label_dp.noise_multiplier == pytest.approx(z)
    spent = guest.privacy_spent()
    assert spent is not None and 0 < spent <= 2.0 + 1e-9  # all releases made: at most the target


def test_target_epsilon_and_noise_multiplier_are_exclusive() -> None:
    with pytest.raises(ValueError, match="dp_guest_epsilon"):
        HeteroFMConfig(dp_guest_epsilon=1.0, dp_guest_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="dp_guest_epsilon"):
        HeteroFMConfig(dp_guest_epsilon=0.0)


def test_with_label_dp_the_validation_metric_is_an_accounted_noisy_release() -> None:
    gv, hv = views()
    inter = gv.interactions.assign(rating=(gv.interactions["rating"] >= 4).astype(float))
    cfg = HeteroFMConfig(objective="logistic", n_factors=4, epochs=3, patience=3, batch_size=128,
                         backend="plain", timeout=30, validation="random", dp_guest_noise_multiplier=1.0)
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(hv.user_features),
                 "guest": lambda: guest.fit(inter, item_features=gv.item_features).close()}, timeout=120)
    assert guest._label_dp is not None
    epochs = len(guest.history.train_loss)
    n_batches = -(-int(round(len(inter) * 0.9)) // cfg.batch_size)
    # one release per batch and one per epoch's validation metric, all in the same account
    assert guest._label_dp.releases == epochs * (n_batches + 1)
    assert len(guest._label_dp.accountant.events) == epochs * (n_batches + 1)


def test_label_dp_with_validation_refuses_an_objective_it_cannot_bound() -> None:
    with pytest.raises(ValueError, match="validation='none'"):
        HeteroFMConfig(objective="ranking", validation="random", dp_guest_noise_multiplier=1.0)
    cfg = HeteroFMConfig(objective="ranking", validation="none", dp_guest_noise_multiplier=1.0,
                         backend="plain")
    guest = HeteroFMGuest(MemoryNetwork().channel("guest", ["host"]), "host", cfg)
    gv, _ = views(30)
    with pytest.raises(ValueError, match="validation='none'"):  # before any message to the host
        guest.fit(gv.interactions, validation="random")
