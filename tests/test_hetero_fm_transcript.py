"""The host transcript records exactly what the host learns: with SGD the host's parameters move by
``-lr`` times the recorded aggregated gradients, batch by batch; requests and early-stopping bits are
recorded too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.protocols.hetero_fm.config import HOST_FIELD
from fedrec.protocols.hetero_fm.transcript import HostTranscript
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


@pytest.mark.parametrize("validation", ["none", "random"])
def test_transcript_holds_the_gradients_the_host_stepped_on(validation: str) -> None:
    ds = generate(SyntheticConfig(n_users=50, n_items=30, n_ratings=500, seed=6)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, batch_size=64, lr=0.05, epochs=2, optimizer="sgd",
                         backend="plain",
                         timeout=30, validation=validation)
    net = MemoryNetwork()
    transcript = HostTranscript()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg, transcript=transcript)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg)
    run_parties({"host": lambda: host.serve(hv.user_features),
                 "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features).close()},
                timeout=60)
    assert host.params is not None
    w0 = host.initial_state[f"w.{HOST_FIELD}"].numpy().astype(np.float64)
    v0 = host.initial_state[f"v.{HOST_FIELD}"].numpy().astype(np.float64)
    w, v = w0.copy(), v0.copy()
    for r in transcript.releases:
        assert r.g_v.shape == (len(r.cols), cfg.n_factors) and r.g_w.shape == (len(r.cols),)
        w[r.cols] -= cfg.lr * r.g_w
        v[r.cols] -= cfg.lr * r.g_v
    assert len(transcript.releases) > 0 and len(transcript.epoch_ends) == len(guest.history.train_loss)
    assert [e[0] for e in transcript.epoch_ends] == list(range(len(guest.history.train_loss)))
    assert len(transcript.aligned) > 0
    design = host.aligned_design()
    assert design.shape == (len(transcript.aligned), host.spec.size)
    for r in transcript.releases:  # the touched columns are those of the batch users' feature rows
        assert set(r.cols.tolist()) == set(design[r.users].nonzero()[1].tolist())
    if validation == "none":  # the last parameters are the result: exactly the recorded steps
        np.testing.assert_allclose(host.params.w[HOST_FIELD].detach().numpy(), w, atol=1e-5)
        np.testing.assert_allclose(host.params.v[HOST_FIELD].detach().numpy(), v, atol=1e-5)
        assert transcript.requests == []
    else:  # one validation request per epoch, with the early-stopping bits
        assert [p for p, _, _ in transcript.requests] == ["validate"] * len(transcript.epoch_ends)
