"""One guest and two hosts (issue #11) over the plain backend replay the centralized FM over ALL fields.

The centralized model's user-feature field is the two hosts' columns side by side (host A's first): a
user absent from a host's table has no features there, exactly the zero partials the guest gives it.
Both models start from the same parameters (the hosts' initial tensors stacked), then see the same
batches, negatives, losses, Adam and per-sample L2; every parameter must agree to 1e-5.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.data.partition import vertical_split
from fedrec.data.synthetic import SyntheticConfig, generate
from fedrec.models.fm import FactorizationMachine
from fedrec.models.vertical import VerticalFM, combine_partials
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

COLUMNS = {"hostA": ["region", "segment", "device", "age"], "hostB": ["channel", "income_k", "tenure_years"]}


def split_hosts(n_users: int = 120, overlap: bool = False) -> tuple[Any, dict[str, pd.DataFrame]]:
    ds = generate(SyntheticConfig(n_users=n_users, n_items=50, n_ratings=n_users * 12, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    full = hv.user_features
    tables = {h: full[cols] for h, cols in COLUMNS.items()}
    if overlap:  # A holds the first 70% of the users, B the last 55%: some have both, some one, some none
        n = len(full)
        tables = {"hostA": tables["hostA"].iloc[:int(0.7 * n)], "hostB": tables["hostB"].iloc[int(0.45 * n):]}
        keep = full.index[int(0.1 * n):]  # and the first 10% are in neither host's alignment
        tables["hostA"] = tables["hostA"][tables["hostA"].index.isin(keep)]
    return gv, tables


def run_multihost(cfg: HeteroFMConfig, gv: Any, tables: dict[str, pd.DataFrame], aligned: Any = None,
                  before_close: Any = None) -> tuple[HeteroFMGuest, dict[str, HeteroFMHost]]:
    net = MemoryNetwork()
    names = list(tables)
    hosts = {h: HeteroFMHost(net.channel(h, ["guest"]), "guest", cfg) for h in names}
    guest = HeteroFMGuest(net.channel("guest", names), names, cfg)
    parties: dict[str, Any] = {h: (lambda h=h: hosts[h].serve(tables[h])) for h in names}

    def drive() -> None:
        guest.fit(gv.interactions, item_features=gv.item_features, aligned_users=aligned)
        if before_close is not None:
            before_close(guest)
        guest.close()

    parties["guest"] = drive
    run_parties(parties, timeout=180)
    return guest, hosts


def centralized(guest: HeteroFMGuest, hosts: dict[str, HeteroFMHost], cfg: HeteroFMConfig, gv: Any,
                tables: dict[str, pd.DataFrame]) -> FactorizationMachine:
    joined = pd.concat([tables[h] for h in hosts], axis=1, join="outer")
    init = dict(guest.initial_state)
    for name in ("v.user_features", "w.user_features"):
        init[name] = torch.cat([hosts[h].initial_state[name] for h in hosts])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FactorizationMachine(**cfg.fm_params()).fit(gv.interactions, joined, gv.item_features,
                                                           initial_state=init)


def aligned_sets(gv: Any, tables: dict[str, pd.DataFrame]) -> dict[str, set[Any]]:
    users = set(gv.interactions["user_id"])
    return {h: set(t.index) & users for h, t in tables.items()}


@pytest.mark.parametrize(("overlap", "objective", "layout"),
                         [(False, "regression", "compact"), (True, "regression", "compact"),
                          (True, "ranking", "compact"), (True, "regression", "static")])
def test_two_hosts_reproduce_the_centralized_fm_over_all_fields(overlap: bool, objective: str,
                                                                 layout: str) -> None:
    gv, tables = split_hosts(overlap=overlap)
    cfg = HeteroFMConfig(label_dp="off", objective=objective, n_factors=4, epochs=3,
                         batch_size=32 if overlap else 128, patience=2, backend="plain", timeout=60,
                         n_negatives=2, layout=layout)
    pairs = gv.interactions.head(60)
    asked: dict[str, Any] = {}
    guest, hosts = run_multihost(cfg, gv, tables, aligned_sets(gv, tables), lambda g: asked.update(
        z=g.predict(pairs), flags=dict(g.last_host_fallbacks)))
    central = centralized(guest, hosts, cfg, gv, tables)
    assert central.history.best_epoch == guest.history.best_epoch
    assert central.params is not None and guest.local.params is not None
    cen = central.params.state_dict()
    for name, value in guest.local.params.state_dict().items():
        np.testing.assert_allclose(value.numpy(), cen[name].numpy(), atol=1e-5, rtol=0, err_msg=name)
    for name in ("v.user_features", "w.user_features"):
        fed = torch.cat([hosts[h].params.state_dict()[name] for h in hosts])  # type: ignore[union-attr]
        np.testing.assert_allclose(fed.numpy(), cen[name].numpy(), atol=1e-5, rtol=0, err_msg=name)
    if overlap:  # users with one host only got explicit zeros for the other, counted per host
        assert guest.zero_partials["hostA"] > 0 and guest.zero_partials["hostB"] > 0
    # predictions through the guest (asks both hosts) and from the exported partials agree with central
    want = central.predict(pairs)
    np.testing.assert_allclose(asked["z"], want, atol=1e-4)
    exported = {h: _as_partials(hosts[h], pairs["user_id"].unique(), cfg.n_factors) for h in hosts}
    joined = VerticalFM(guest.local, exported)
    np.testing.assert_allclose(joined.predict(pairs), want, atol=1e-4)
    if overlap:
        assert joined.last_host_fallbacks == asked["flags"] and set(asked["flags"]) == set(hosts)
        assert sum(joined.last_host_fallbacks.values()) > 0


def _as_partials(host: HeteroFMHost, users: Any, k: int) -> Any:
    from fedrec.models.vertical import HostPartials

    return HostPartials.from_frame(host.export_partials(users), k, source=f"host {host.guest}")


def test_one_host_through_the_list_api_is_the_single_host_protocol_bit_for_bit() -> None:
    gv, tables = split_hosts(60)
    both = pd.concat(list(tables.values()), axis=1)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=2, batch_size=64, backend="plain", timeout=60,
                         validation="none")
    listed, hosts = run_multihost(cfg, gv, {"host": both})
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(both),
                 "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features).close()},
                timeout=120)
    for a, b in ((listed.local.params, guest.local.params), (hosts["host"].params, host.params)):
        assert a is not None and b is not None
        for name, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[name]), name


def test_combine_partials_adds_the_host_host_terms() -> None:
    from fedrec.models.vertical import HostPartials

    rng = np.random.default_rng(0)
    e1, e2 = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    p1 = HostPartials(np.array([1, 2, 3], dtype=object), np.ones(3), e1, np.array([True, True, False]))
    p2 = HostPartials(np.array([1, 2, 3], dtype=object), 2 * np.ones(3), e2, np.array([True, False, True]))
    c = combine_partials({"a": p1, "b": p2})
    assert c.found is not None and c.found.tolist() == [True, True, True]
    np.testing.assert_allclose(c.z_h, [3 + e1[0] @ e2[0], 1, 2])
    np.testing.assert_allclose(c.e_h, [e1[0] + e2[0], e1[1], e2[2]])
    assert c.host_found is not None and c.host_found["b"].tolist() == [True, False, True]
    assert combine_partials({"a": p1}) is p1
