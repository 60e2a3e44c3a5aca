"""The time-aware guest fields and popularity-aware negatives keep the vertical FM's decomposition: the
plain protocol reproduces the centralized FM from the same initial parameters up to float32 rounding
(the guest's float64 residual sums vs torch's float32 autograd; Adam turns a rounding-level gradient of
a nearly idle parameter into a step of up to ``lr``, so after two epochs parameters differ by ~1e-3 with
or without the new options: tolerance 1e-2), and the ranking metrics agree within 0.3%."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.data.split import leave_last_out
from fedrec.eval.ranking import evaluate_ranking
from fedrec.models import FactorizationMachine
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def test_protocol_with_time_fields_matches_centralized_ranking() -> None:
    ds = generate(SyntheticConfig(n_users=80, n_items=40, n_ratings=80 * 12, seed=2)).dataset
    gv, hv = vertical_split(ds, seed=0)
    events = gv.interactions.drop(columns=["rating"])
    train, test = leave_last_out(events)
    cfg = HeteroFMConfig(label_dp="off", backend="plain", timeout=60, objective="ranking", loss="bpr",
                         n_factors=4, epochs=2, batch_size=128, validation="none", negatives="popularity",
                         use_recent_items=True, use_recent_popularity=True, row_order="canonical")
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    reports = {}

    def play_guest() -> None:
        guest.fit(train, item_features=gv.item_features)
        reports["federated"] = evaluate_ranking(guest, (train, test), 5, n_boot=20)  # asks the host
        guest.close()

    run_parties({"host": lambda: host.serve(hv.user_features), "guest": play_guest}, timeout=120)
    init = {**guest.initial_state, **{k: v for k, v in host.initial_state.items() if k != "bias"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        central = FactorizationMachine(**cfg.fm_params()).fit(train, hv.user_features, gv.item_features,
                                                              initial_state=init)
    assert {"recent_items", "recent_popularity_30d"} <= {s.name for s in guest.local.field_specs}
    fed_params = {**guest.local.params.state_dict(),  # type: ignore[union-attr]
                  **{k: v for k, v in host.params.state_dict().items() if k != "bias"}}  # type: ignore[union-attr]
    for name, value in central.params.state_dict().items():  # type: ignore[union-attr]
        np.testing.assert_allclose(fed_params[name].numpy(), value.numpy(), atol=1e-2, rtol=0, err_msg=name)
    cen = evaluate_ranking(central, (train, test), 5, n_boot=20)
    for metric in ("hr", "ndcg"):
        fed = float(reports["federated"].per_user[metric].mean())
        assert fed == pytest.approx(float(cen.per_user[metric].mean()), rel=3e-3), metric
