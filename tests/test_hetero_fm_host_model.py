"""The host's half of a trained vertical FM is a verified artifact that loads without a channel, so the
host exports partials for next month's campaign users without retraining (DESIGN §6); after a crash at
export, the final checkpoint gives back the trained host without the guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.artifacts import ArtifactError
from fedrec.data import SyntheticConfig, generate, vertical_split
from fedrec.protocols.checkpoint import Checkpointer
from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
from fedrec.transport import MemoryNetwork, run_parties

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
CFG = HeteroFMConfig(label_dp="off", n_factors=4, batch_size=64, lr=0.02, epochs=2, backend="plain",
                     timeout=30,
                     validation="none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[HeteroFMHost, Any, Path]:
    ds = generate(SyntheticConfig(n_users=50, n_items=30, n_ratings=500, seed=5)).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.9, seed=0)
    common = {str(u) for u in gv.interactions["user_id"]} & {str(u) for u in hv.user_features.index}
    net = MemoryNetwork()
    host = HeteroFMHost(net.channel("host", ["guest"]), "guest", CFG)
    guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", CFG)
    ckpt = tmp_path_factory.mktemp("ck")
    run_parties({"host": lambda: host.serve(hv.user_features, checkpoint=Checkpointer(ckpt / "host")),
                 "guest": lambda: guest.fit(gv.interactions, item_features=gv.item_features,
                                            aligned_users=common,
                                            checkpoint=Checkpointer(ckpt / "guest")).close()}, timeout=60)
    return host, hv.user_features, ckpt


def test_saved_host_half_loads_and_exports_the_same_partials(trained: Any, tmp_path: Path) -> None:
    host, features, _ = trained
    host.save(tmp_path / "host")
    loaded = HeteroFMHost.load(tmp_path / "host")
    assert loaded.run_id == host.run_id and loaded.channel is None
    ids = features.index[:20].tolist()
    pd.testing.assert_frame_equal(loaded.export_partials(ids, user_features=features),
                                  host.export_partials(ids))


def test_loaded_host_scores_new_users_from_a_new_table(trained: Any, tmp_path: Path) -> None:
    host, features, _ = trained
    host.save(tmp_path / "host")
    loaded = HeteroFMHost.load(tmp_path / "host")
    new = features.iloc[:5].copy()
    new.index = [f"new-{i}" for i in range(5)]
    out = loaded.export_partials(list(new.index) + ["absent"], user_features=new)
    assert out["user_id"].tolist() == list(new.index)  # users without a feature row are absent
    assert np.allclose(out.drop(columns="user_id").to_numpy(),
                       host.export_partials(features.index[:5].tolist()).drop(columns="user_id").to_numpy())


def test_tampered_host_half_is_refused(trained: Any, tmp_path: Path) -> None:
    host, _, _ = trained
    host.save(tmp_path / "host")
    npz = tmp_path / "host" / "arrays.npz"
    raw = bytearray(npz.read_bytes())
    raw[-40] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="content_sha256"):
        HeteroFMHost.load(tmp_path / "host")


def test_final_checkpoint_restores_the_trained_host_without_the_guest(trained: Any) -> None:
    host, features, ckpt = trained
    by_text = features.set_axis(features.index.astype(str))
    assert host._aligned is not None
    aligned = by_text.loc[list(host._aligned)]  # the aligned users in the order declared at setup
    again = HeteroFMHost.restore_final(Checkpointer(ckpt / "host"), aligned, CFG)
    assert again is not None and again.run_id == host.run_id
    ids = aligned.index[:10].tolist()
    pd.testing.assert_frame_equal(again.export_partials(ids), host.export_partials(ids))
    assert HeteroFMHost.restore_final(Checkpointer(ckpt / "nothing"), aligned, CFG) is None
