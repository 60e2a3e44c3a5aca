"""Checkpoint and resume of the vertical FM over the in-memory twin: a run killed at a protocol event and
run again with the same checkpoint directories ends with the parameters of the uninterrupted run
(the plain backend: exactly), the DP accountants included; the parties agree on the newest common
checkpoint; checkpoints of another config or aligned set are refused or not offered."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.artifacts import ArtifactError
from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.messages import HeteroFMError
from fedrec.transport import MemoryNetwork, Message, PeerDiedError, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

BASE = dict(n_factors=4, batch_size=64, lr=0.02, epochs=3, patience=2, backend="plain", timeout=30,
            validation="random")


def _views() -> tuple[Any, Any]:
    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=4)).dataset
    return vertical_split(ds, host_user_fraction=0.8, seed=0)


def _kill_at(net: MemoryNetwork, who: str, step_prefix: str, n: int = 1) -> Callable[[str, str, int, Message],
                                                                                      None]:
    count = itertools.count(1)

    def listener(peer: str, step: str, n_bytes: int, msg: Message) -> None:
        if step.startswith(step_prefix) and next(count) == n:
            net.kill(who)

    return listener


def _run(tmp: Path, cfg: HeteroFMConfig, every: int, kill: tuple[str, str] | None = None
         ) -> tuple[HeteroFMGuest | BaseException, HeteroFMHost | BaseException]:
    gv, hv = _views()
    net = MemoryNetwork()
    gch, hch = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    if kill is not None:
        who, step = kill
        (gch if who == "guest" else hch).add_send_listener(_kill_at(net, who, step))
    host = HeteroFMHost(hch, "guest", cfg)
    guest = HeteroFMGuest(gch, "host", cfg)
    g_ck = Checkpointer(tmp / "guest", every_batches=every)
    h_ck = Checkpointer(tmp / "host", every_batches=every)

    def guest_side() -> HeteroFMGuest:
        guest.fit(gv.interactions, item_features=gv.item_features, checkpoint=g_ck)
        guest.close()
        return guest

    out = run_parties({"host": lambda: host.serve(hv.user_features, checkpoint=h_ck), "guest": guest_side},
                      timeout=60, return_exceptions=kill is not None)
    return out["guest"], out["host"]  # type: ignore[return-value]


def _params(guest: HeteroFMGuest, host: HeteroFMHost) -> dict[str, np.ndarray]:
    assert guest.local.params is not None and host.params is not None
    out = {f"g.{k}": v.detach().numpy().copy() for k, v in guest.local.params.state_dict().items()}
    out.update({f"h.{k}": v.detach().numpy().copy() for k, v in host.params.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    guest, host = _run(tmp_path_factory.mktemp("ref"), HeteroFMConfig(label_dp="off", **BASE), every=2)
    assert isinstance(guest, HeteroFMGuest) and isinstance(host, HeteroFMHost)
    assert guest.resumed_from is None and len(guest.history.train_loss) == 3
    return _params(guest, host)


@pytest.mark.parametrize("who, step", [
    ("guest", "fm/e0/b3/partials"),          # mid-epoch, between two checkpoints
    ("host", "fm/e0/b4/"),                   # the host dies while answering, right after a checkpoint
    ("guest", "fm/e1/end"),                  # at an epoch boundary
    ("host", "fm/e1/b0/checkpoint"),         # the host wrote its checkpoint, the guest did not
    ("guest", "fm/e3/b0/checkpoint/final"),  # training over on the host's side only
])
def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path: Path, reference: dict[str, np.ndarray],
                                                            who: str, step: str) -> None:
    cfg = HeteroFMConfig(label_dp="off", **BASE)
    guest, host = _run(tmp_path, cfg, every=2, kill=(who, step))
    assert isinstance(guest, BaseException) or isinstance(host, BaseException)
    guest2, host2 = _run(tmp_path, cfg, every=2)
    assert isinstance(guest2, HeteroFMGuest) and isinstance(host2, HeteroFMHost)
    assert guest2.resumed_from is not None and host2.resumed_from == guest2.resumed_from
    got = _params(guest2, host2)
    assert got.keys() == reference.keys()
    for name, ref in reference.items():
        np.testing.assert_array_equal(got[name], ref, err_msg=name)


def test_static_layout_resumes_to_the_uninterrupted_parameters(tmp_path: Path) -> None:
    """Layout ``static``: the host's run-long plaintexts are rebuilt by the resumed host (a fresh Setup,
    fresh keys) and the resumed run is the uninterrupted one bit for bit."""
    cfg = HeteroFMConfig(label_dp="off", **{**BASE, "layout": "static"})
    ref_g, ref_h = _run(tmp_path / "ref", cfg, every=2)
    assert isinstance(ref_g, HeteroFMGuest) and isinstance(ref_h, HeteroFMHost)
    _, killed = _run(tmp_path / "run", cfg, every=2, kill=("host", "fm/e0/b4/"))
    assert isinstance(killed, BaseException)
    guest, host = _run(tmp_path / "run", cfg, every=2)
    assert isinstance(guest, HeteroFMGuest) and isinstance(host, HeteroFMHost)
    assert guest.resumed_from is not None
    ref, got = _params(ref_g, ref_h), _params(guest, host)
    for name, value in ref.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _dp_runs(tmp_path: Path, kill_step: str
             ) -> tuple[HeteroFMGuest, HeteroFMHost, HeteroFMGuest, HeteroFMHost]:
    cfg = HeteroFMConfig(**{**BASE, "dp_guest_noise_multiplier": 2.0, "dp_host_noise_multiplier": 2.0})
    ref_g, ref_h = _run(tmp_path / "ref", cfg, every=2)
    _run(tmp_path / "run", cfg, every=2, kill=("guest", kill_step))
    guest, host = _run(tmp_path / "run", cfg, every=2)
    for party in (ref_g, ref_h, guest, host):
        assert not isinstance(party, BaseException)
    assert isinstance(guest, HeteroFMGuest) and guest.resumed_from is not None
    return ref_g, ref_h, guest, host  # type: ignore[return-value]


def test_resume_right_after_a_checkpoint_keeps_the_label_privacy_account(tmp_path: Path) -> None:
    # killed when asking for the next batch's partials: the guest released nothing after its checkpoint
    ref_g, ref_h, guest, host = _dp_runs(tmp_path, "fm/e1/b2/partials")
    assert guest._label_dp is not None and ref_g._label_dp is not None
    assert guest._label_dp.accountant.events == ref_g._label_dp.accountant.events
    assert guest.privacy_spent() == pytest.approx(ref_g.privacy_spent(), rel=1e-12)
    # the host had already answered those partials (noised): they count, on top of the model's path
    assert host.accountant is not None and ref_h.accountant is not None
    assert host.accountant.events == ref_h.accountant.events
    assert host.privacy_spent() >= ref_h.privacy_spent()  # type: ignore[operator]


def test_releases_a_crash_rolled_back_stay_in_the_privacy_account(tmp_path: Path) -> None:
    # killed after releasing batches 2 and 3 of epoch 1, which the resumed run makes again
    ref_g, _, guest, _ = _dp_runs(tmp_path, "fm/e1/b3/release")
    assert guest._label_dp is not None and ref_g._label_dp is not None
    assert guest._label_dp.accountant.events == ref_g._label_dp.accountant.events  # the model's path
    assert len(guest._rolled_back) == 2
    assert guest.privacy_spent() > ref_g.privacy_spent()  # type: ignore[operator]


def test_complete_run_resumes_at_its_final_checkpoint_without_training(tmp_path: Path) -> None:
    cfg = HeteroFMConfig(label_dp="off", **BASE)
    first, _ = _run(tmp_path, cfg, every=0)
    again, host = _run(tmp_path, cfg, every=0)
    assert isinstance(first, HeteroFMGuest) and isinstance(again, HeteroFMGuest)
    assert again.resumed_from is not None and again.resumed_from[2] is True
    assert again.history.train_loss == first.history.train_loss
    assert isinstance(host, HeteroFMHost) and host.resumed_from == again.resumed_from


def test_checkpoints_are_kept_and_pruned_per_party(tmp_path: Path) -> None:
    _run(tmp_path, HeteroFMConfig(label_dp="off", **BASE), every=2)
    for role in ("guest", "host"):
        ck = Checkpointer(tmp_path / role)
        infos = ck.list()
        assert len(infos) == 2 and infos[0].final and infos[0].role == role
        meta = json.loads((infos[0].path / "meta.json").read_text())
        assert meta["run_id"] == Checkpointer(tmp_path / "guest").run_id
    g0 = Checkpointer(tmp_path / "guest").list()[0]
    h0 = Checkpointer(tmp_path / "host").list()[0]
    g_meta = json.loads((g0.path / "meta.json").read_text())
    assert g_meta["peer_digest"] == h0.digest  # the guest recorded the host's state digest


def test_a_checkpoint_of_another_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    _run(tmp_path, HeteroFMConfig(label_dp="off", **BASE), every=0)
    with pytest.raises((HeteroFMError, ArtifactError), match="lr"):
        _run(tmp_path, HeteroFMConfig(label_dp="off", **{**BASE, "lr": 0.03}), every=0)


def test_host_without_the_guests_checkpoints_starts_afresh(tmp_path: Path, reference: dict[str, np.ndarray]
                                                           ) -> None:
    cfg = HeteroFMConfig(label_dp="off", **BASE)
    _run(tmp_path, cfg, every=2, kill=("guest", "fm/e1/end"))
    Checkpointer(tmp_path / "host").clear()
    guest, host = _run(tmp_path, cfg, every=2)
    assert isinstance(guest, HeteroFMGuest) and isinstance(host, HeteroFMHost)
    assert guest.resumed_from is None and host.resumed_from is None
    for name, ref in reference.items():
        np.testing.assert_array_equal(_params(guest, host)[name], ref, err_msg=name)


def test_killed_party_is_reported_with_peer_and_step(tmp_path: Path) -> None:
    guest, host = _run(tmp_path, HeteroFMConfig(label_dp="off", **BASE), every=2, kill=("host", "fm/e0/b2/"))
    assert isinstance(guest, PeerDiedError) and guest.peer == "host" and guest.step.startswith("fm/e0/b2")


def test_ckks_resume_is_within_the_release_noise(tmp_path: Path) -> None:
    """CKKS releases are flooded with fresh noise, so two uninterrupted runs already differ a little;
    a resumed run differs from an uninterrupted one by no more than that (x a margin), per party: the
    mean absolute difference of the host's parameters, and of the guest's, each over the same party's
    difference between two uninterrupted runs. Measured by ``benchmarks/ckks_resume_noise.py``
    (results/ckks_resume_noise.json): the release error is the exact aggregate plus the flooding noise
    (sd 1.02 sigma, max 3.9 over 7848 values: no tail), and a resumed run is one more independent draw;
    but the guest's difference is multi-modal with or without a resume (one uninterrupted run in 4-6
    ends 1.7-3.8x farther from the others than they are from each other), so over all triples of 16
    uninterrupted runs the guest's ratio reached 7.6 (p99 5.7), the host's 3.8 (p99 3.0). A resume that
    lost the host's parameters or optimizer state gave the host a ratio of 10-29, one that lost the
    guest's optimizer state the guest 20-76. (The former single bound, 6x over all parameters, met
    natural ratios up to 5.4 -- the 3.97 once seen in a full-suite run was one of them -- and let a
    resume that lost the host's optimizer state pass at 4.3.)"""
    cfg = HeteroFMConfig(label_dp="off", **{**BASE, "backend": "ckks", "epochs": 2})
    runs = []
    for name in ("ref", "ref2"):
        guest, host = _run(tmp_path / name, cfg, every=2)
        assert isinstance(guest, HeteroFMGuest) and isinstance(host, HeteroFMHost)
        runs.append(_params(guest, host))
    _run(tmp_path / "run", cfg, every=2, kill=("guest", "fm/e1/b3/partials"))
    guest, host = _run(tmp_path / "run", cfg, every=2)
    assert isinstance(guest, HeteroFMGuest) and guest.resumed_from is not None
    resumed = _params(guest, host)

    def mean_abs(a: dict[str, np.ndarray], b: dict[str, np.ndarray], party: str) -> float:
        return float(np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a if k.startswith(party)]).mean())

    for party, bound in (("h.", 8.0), ("g.", 15.0)):
        noise, diff = mean_abs(runs[0], runs[1], party), mean_abs(resumed, runs[0], party)
        assert noise > 0  # fresh flooding noise: CKKS runs are not bit-reproducible, by design
        assert diff <= bound * noise, (party, diff, noise)
