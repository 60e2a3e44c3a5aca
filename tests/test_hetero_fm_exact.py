"""The federated FM over the plain backend replays the centralized FactorizationMachine (DESIGN §4.2).

Both models start from the same initial parameters (``FactorizationMachine.fit(initial_state=...)``
loads the federated parties' initial tensors: the two parties draw from their own streams), then see the
same batches, negatives, losses, Adam and per-sample L2; every parameter must agree to 1e-5.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.models.fm import FactorizationMachine
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def small_data(n_users: int = 120, seed: int = 1) -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=50, n_ratings=n_users * 12, seed=seed)).dataset
    return ds, vertical_split(ds, seed=0)


def run_federated(cfg: HeteroFMConfig, guest_view: Any, host_view: Any,
                  aligned: Any = None) -> tuple[HeteroFMGuest, HeteroFMHost]:
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(host_view.user_features),
                 "guest": lambda: guest.fit(guest_view.interactions, item_features=guest_view.item_features,
                                            aligned_users=aligned).close()}, timeout=120)
    return guest, host


def centralized_from(init: dict[str, torch.Tensor], cfg: HeteroFMConfig, interactions: pd.DataFrame,
                     user_features: pd.DataFrame, item_features: pd.DataFrame | None) -> FactorizationMachine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FactorizationMachine(**cfg.fm_params()).fit(interactions, user_features, item_features,
                                                           initial_state=init)


@pytest.mark.parametrize(("objective", "layout", "overlap"),
                         [("regression", "hiding", 1.0), ("ranking", "hiding", 1.0),
                          ("regression", "compact", 1.0), ("regression", "hiding", 0.05),
                          ("ranking", "static", 1.0), ("regression", "static", 0.05)])
def test_plain_backend_reproduces_centralized_fm(objective: str, layout: str, overlap: float) -> None:
    ds, (gv, hv) = small_data()
    inter = gv.interactions
    features = hv.user_features
    aligned = None
    if overlap < 1.0:  # the host holds features for a subset; only that subset is aligned (PSI)
        features = features.iloc[:int(len(features) * overlap)]
        aligned = set(features.index) & set(inter["user_id"])
        hv = type(hv)(hv.name, features)
    # batch 32: with 5% overlap some batches have no aligned user (no round trip, host zero-steps)
    cfg = HeteroFMConfig(label_dp="off", objective=objective, n_factors=4, epochs=3,
                         batch_size=128 if overlap == 1 else 32,
                         patience=2, backend="plain", timeout=60, n_negatives=2, layout=layout)
    guest, host = run_federated(cfg, gv, hv, aligned)
    init = {**guest.initial_state, **{k: v for k, v in host.initial_state.items() if k != "bias"}}
    central = centralized_from(init, cfg, inter, features, gv.item_features)
    assert central.history.best_epoch == guest.history.best_epoch
    assert central.params is not None and guest.local.params is not None and host.params is not None
    fed = {**{k: v for k, v in guest.local.params.state_dict().items()},
           **{k: v for k, v in host.params.state_dict().items() if k != "bias"}}
    cen = central.params.state_dict()
    assert set(fed) == set(cen)
    for name, value in cen.items():
        np.testing.assert_allclose(fed[name].numpy(), value.numpy(), atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("objective", ["regression", "ranking"])
def test_row_weights_train_the_weighted_centralized_fm(objective: str) -> None:
    """``weight_column``: the guest weights its loss by each row's weight and the hosts' gradients follow
    (they are made of the weighted residuals): the weighted centralized FM, parameter for parameter."""
    ds, (gv, hv) = small_data()
    inter = gv.interactions.copy()
    inter["weight"] = np.random.default_rng(3).uniform(0.2, 3.0, len(inter))
    gv = dataclasses.replace(gv, interactions=inter)
    cfg = HeteroFMConfig(label_dp="off", objective=objective, n_factors=4, epochs=2, batch_size=128,
                         backend="plain", timeout=60, n_negatives=2, validation="none",
                         weight_column="weight")
    guest, host = run_federated(cfg, gv, hv)
    init = {**guest.initial_state, **{k: v for k, v in host.initial_state.items() if k != "bias"}}
    central = centralized_from(init, cfg, inter, hv.user_features, gv.item_features)
    unweighted = centralized_from(init, HeteroFMConfig(**{**cfg.__dict__, "weight_column": None}), inter,
                                  hv.user_features, gv.item_features)
    assert central.params is not None and unweighted.params is not None
    assert guest.local.params is not None and host.params is not None
    fed = {**guest.local.params.state_dict(),
           **{k: v for k, v in host.params.state_dict().items() if k != "bias"}}
    for name, value in central.params.state_dict().items():
        np.testing.assert_allclose(fed[name].numpy(), value.numpy(), atol=1e-5, rtol=0, err_msg=name)
    # the weights matter: the unweighted model is another one
    diff = max(float((fed[k] - v).abs().max()) for k, v in unweighted.params.state_dict().items())
    assert diff > 1e-3


def test_a_bad_row_weight_is_refused_before_the_host_hears_anything() -> None:
    ds, (gv, hv) = small_data(40)
    inter = gv.interactions.copy()
    inter["weight"] = 1.0
    inter.loc[inter.index[7], "weight"] = -2.0
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, backend="plain", timeout=5,
                         validation="none", weight_column="weight")
    net = MemoryNetwork()
    channel = net.channel("guest", ["host"])
    guest = HeteroFMGuest(channel, "host", cfg)
    with pytest.raises(ValueError, match=r"column 'weight' must hold finite weights >= 0.*row 7 is -2.0"):
        guest.fit(inter, item_features=gv.item_features)
    assert channel.bytes_sent == 0


def test_plain_predictions_match_centralized() -> None:
    ds, (gv, hv) = small_data()
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=2, batch_size=128, backend="plain", timeout=60,
                         validation="none")
    net_guest, host = run_federated(cfg, gv, hv)
    init = {**net_guest.initial_state, **{k: v for k, v in host.initial_state.items() if k != "bias"}}
    central = centralized_from(init, cfg, gv.interactions, hv.user_features, gv.item_features)
    pairs = gv.interactions.head(50)
    terms = central.party_terms(pairs)
    z_h = host.export_partials(pairs["user_id"].unique()).set_index("user_id")
    np.testing.assert_allclose(z_h.loc[pairs["user_id"], "z_H"].to_numpy(), terms["host"].z, atol=1e-5)


def test_initial_state_must_name_every_parameter_with_its_shape() -> None:
    ds, (gv, hv) = small_data(40)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, backend="plain", validation="none")
    fm = FactorizationMachine(**cfg.fm_params()).fit(gv.interactions, hv.user_features, gv.item_features)
    assert fm.params is not None
    state = {k: v.clone() for k, v in fm.params.state_dict().items()}
    again = FactorizationMachine(**{**cfg.fm_params(), "epochs": 1, "lr": 1e-12})
    again.fit(gv.interactions, hv.user_features, gv.item_features, initial_state=state)
    assert again.params is not None  # a vanishing lr: one epoch leaves the loaded state (Adam step ~ lr)
    for name, value in state.items():
        np.testing.assert_allclose(again.params.state_dict()[name].numpy(), value.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        again.fit(gv.interactions, hv.user_features, gv.item_features,
                  initial_state={k: v for k, v in state.items() if k != "bias"})
    bad = {**state, "v.user_features": torch.zeros(1, 4)}
    with pytest.raises(ValueError, match="v.user_features"):
        again.fit(gv.interactions, hv.user_features, gv.item_features, initial_state=bad)


def test_hetero_config_is_fm_config_plus_protocol_fields() -> None:
    from fedrec.models.fm import FMConfig

    cfg = HeteroFMConfig(label_dp="off", n_factors=6, backend="plain")
    assert isinstance(cfg, FMConfig) and cfg.fm_params()["n_factors"] == 6
    with pytest.raises(ValueError, match="n_factors"):  # FMConfig's own validation
        HeteroFMConfig(label_dp="off", n_factors=0)
    with pytest.raises(ValueError, match="use_user_features"):
        HeteroFMConfig(label_dp="off", use_user_features=False)
