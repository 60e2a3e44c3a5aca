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
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost, packing
from fedrec.protocols.hetero_fm.label_dp import LabelDP, RowBounds, clip_residuals, sample_factor, sensitivity
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


@pytest.mark.parametrize("layout", ["compact", "hiding", "static"])
def test_clipping_bounds_each_samples_effect_on_the_release(layout: str) -> None:
    rng = np.random.default_rng(0)
    delta, e = rng.normal(size=500), rng.normal(size=(500, 4))
    rows = RowBounds(nnz=3, max_abs=1.0, sq=3.0, quad=3.0)
    clipped = clip_residuals(delta, e, n_samples=64, clip=0.5, layout=layout, rows=rows, plain_bound=8.0)
    norms = 64 * np.abs(clipped) * sample_factor(e, layout, rows, 8.0)
    assert np.all(norms <= 0.5 + 1e-12)
    small = clip_residuals(delta * 1e-6, e, n_samples=64, clip=0.5, layout=layout, rows=rows,
                           plain_bound=8.0)
    np.testing.assert_array_equal(small, delta * 1e-6)  # rows already within the clip are untouched


@pytest.mark.parametrize("layout", ["compact", "hiding", "static"])
def test_one_label_moves_the_released_gradient_by_at_most_the_sensitivity(layout: str) -> None:
    """The bound of label_dp.py checked on the packing's own algebra: flip one sample's residual (its
    label) inside a batch, recompute every touched column's folded release, compare with 2C√d."""
    rng = np.random.default_rng(1)
    k, n_users, n_cols, d, clip, p_bound = 4, 30, 12, 3, 0.7, 4.0
    x = np.zeros((n_users, n_cols))
    for u in range(n_users):  # d non-zero features per user, values up to x_max
        x[u, rng.choice(n_cols, d, replace=False)] = rng.uniform(-1.5, 1.5, d)
    rows = RowBounds(d, float(np.abs(x).max()), float((x ** 2).sum(1).max()), float((x ** 4).sum(1).max()))
    v = rng.uniform(-1, 1, (n_cols, k)) * np.minimum(1.0, p_bound / np.maximum(x ** 2, 1e-9).max(0))[:, None]
    w = rng.normal(size=n_cols)
    e = rng.normal(size=(n_users, k))  # one sample per user: e(s) = e_total of its user
    n_s = n_users

    def release(delta: np.ndarray) -> np.ndarray:
        q_hat = n_s * delta[:, None] * e
        rows, _ = packing.residual_rows(q_hat, n_s * delta, np.ones(n_users), 0.1, 1e6, layout)
        mult = packing.column_multipliers(x, v, w, 0.05, layout)  # [cols, users, W]
        assert np.abs(mult).max() <= p_bound + 1e-9
        summed = np.einsum("juw,uw->jw", mult, rows)
        return packing.fold(summed, k, layout)

    p = rng.uniform(0.05, 0.95, n_users)
    worst = 0.0
    for s in range(n_users):
        y0, y1 = np.zeros(n_users), np.zeros(n_users)
        y1[s] = 1.0
        d0 = clip_residuals((p - y0) / n_s, e, n_s, clip, layout=layout, rows=rows, plain_bound=p_bound)
        d1 = clip_residuals((p - y1) / n_s, e, n_s, clip, layout=layout, rows=rows, plain_bound=p_bound)
        moved = np.linalg.norm(release(d0) - release(d1))
        assert moved <= sensitivity(clip) + 1e-9
        worst = max(worst, moved / sensitivity(clip))
    assert worst > 0.3  # the bound is not vacuous: some flip comes within a small factor of it


def test_host_reports_the_row_bounds_of_its_aligned_rows_only() -> None:
    from fedrec.models.fields import Csr
    from fedrec.protocols.hetero_fm.host import _row_bounds

    # rows: [1, 1], [2, -3, 1], [] and a 4th (not aligned) row with a value of 10
    rows = Csr(np.array([0, 2, 5, 5, 6]), np.array([0, 1, 0, 2, 3, 1]),
               np.array([1.0, 1.0, 2.0, -3.0, 1.0, 10.0]))
    assert _row_bounds(rows, 3) == (3.0, 14.0, 98.0)  # 4+9+1 and 16+81+1
    assert _row_bounds(rows, 0) == (0.0, 0.0, 0.0)


def test_guest_label_dp_noise_has_the_accounted_sigma_and_epsilon_grows() -> None:
    gv, hv = views()
    cfg = HeteroFMConfig(n_factors=4, epochs=2, batch_size=128, backend="plain", timeout=60,
                         validation="none", dp_guest_noise_multiplier=0.8, dp_guest_clip=0.25,
                         )
    spy: list[np.ndarray] = []
    guest, host = run(cfg, gv, hv, spy)
    assert guest._label_dp is not None
    d = guest.host_row_nnz  # the columns one user's label can move (one-hot: one per field)
    assert 0 < d < guest.n_host_features
    sigma = 0.8 * 2 * 0.25
    assert guest._label_dp.sigma == pytest.approx(sigma) == pytest.approx(0.8 * sensitivity(0.25))
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
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=256, backend="plain", timeout=60,
                         validation="none")
    guest, _ = run(cfg, gv, hv)
    assert guest.privacy_spent() is None


def test_host_partials_dp_clips_noises_and_accounts() -> None:
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, backend="plain", dp_host_noise_multiplier=1.5,
                         dp_host_clip=0.5)
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
                         validation="none", dp_guest_epsilon=2.0, dp_guest_clip=0.25)
    gv, hv = views()
    guest, _ = run(cfg, gv, hv)
    assert guest._label_dp is not None
    n_batches = -(-len(gv.interactions) // cfg.batch_size)
    z = noise_multiplier_for(2.0, cfg.dp_delta, cfg.epochs * n_batches, relation="replace")
    assert guest._label_dp.noise_multiplier == pytest.approx(z)
    spent = guest.privacy_spent()
    assert spent is not None and 0 < spent <= 2.0 + 1e-9  # all releases made: at most the target


def test_label_dp_is_on_by_default_and_off_only_explicitly() -> None:
    from fedrec.protocols.hetero_fm.config import DEFAULT_LABEL_EPSILON

    default = HeteroFMConfig()
    assert default.label_dp_on and default.label_epsilon == DEFAULT_LABEL_EPSILON
    assert default.layout == "compact"  # label DP's noise needs no bound on the host's factors there
    assert HeteroFMConfig(dp_guest_epsilon=4.0).label_epsilon == 4.0
    assert HeteroFMConfig(dp_guest_noise_multiplier=1.0).label_epsilon is None  # fixed noise, growing ε
    off = HeteroFMConfig(label_dp="off")
    assert not off.label_dp_on and off.label_epsilon is None
    with pytest.raises(ValueError, match="label_dp"):
        HeteroFMConfig(label_dp="off", dp_guest_epsilon=1.0)  # contradictory
    with pytest.raises(ValueError, match="label_dp"):
        HeteroFMConfig(label_dp="maybe")
    with pytest.raises(ValueError, match="bounds nothing"):
        HeteroFMConfig(dp_guest_epsilon=1000.0)  # a meaningless guarantee is refused, not reported


def test_turning_label_dp_off_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gv, hv = views(40)
    with caplog.at_level("WARNING", logger="fedrec.protocols.hetero_fm.guest"):
        run(HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=256, backend="plain",
                           timeout=60, validation="none"), gv, hv)
    assert any("label DP is OFF" in r.getMessage() for r in caplog.records)


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



def test_host_optimizer_sets_the_host_fields_update_and_defaults_to_optimizer() -> None:
    """``host_optimizer`` (agreed): SGD averages label DP's zero-mean noise out where Adam's 1/√ŝ turns it
    into lr-sized steps (benchmarks/label_dp_optimizer.py); unset, the host steps as the guest does."""
    assert HeteroFMConfig().host_update == "adam"
    assert HeteroFMConfig(optimizer="sgd").host_update == "sgd"
    assert HeteroFMConfig(host_optimizer="sgd").host_update == "sgd"
    assert "host_optimizer" in HeteroFMConfig().agreed()
    with pytest.raises(ValueError, match="host_optimizer"):
        HeteroFMConfig(host_optimizer="rmsprop")
    gv, hv = views(40)
    for opt, kind in ((None, torch.optim.Adam), ("sgd", torch.optim.SGD)):
        cfg = HeteroFMConfig(n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=60,
                             validation="none", host_optimizer=opt)
        guest, host = run(cfg, gv, hv)
        assert isinstance(host._opt, kind) and host.optimizer_name == cfg.host_update
        assert guest.history.train_loss  # the guest's own update stays `optimizer`
