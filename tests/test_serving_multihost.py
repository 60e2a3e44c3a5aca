"""Serving a multi-host vertical FM (issue #11): the scorer joins one partials file per host (each of the
model's run), adds the host-host terms, and flags per host the users it scored without that host's row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_multihost_exact import aligned_sets, run_multihost, split_hosts

from fedrec.artifacts import ArtifactError
from fedrec.models.vertical import VerticalFM, write_host_partials
from fedrec.protocols.hetero_fm import HeteroFMConfig
from serving.scorer import Scorer

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")


def test_scorer_joins_every_hosts_partials_with_per_host_flags(tmp_path: Path) -> None:
    gv, tables = split_hosts(80, overlap=True)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=64, backend="plain", timeout=60,
                         validation="none")
    guest, hosts = run_multihost(cfg, gv, tables, aligned_sets(gv, tables))
    model = guest.save(tmp_path / "model")
    paths = {}
    for h, host in hosts.items():
        frame = host.export_partials(sorted(aligned_sets(gv, tables)[h]))
        paths[h] = write_host_partials(tmp_path / f"{h}.parquet", frame, run_id=guest.run_id or "")
    scorer = Scorer.load(model, paths)
    users = sorted(gv.interactions["user_id"].unique().tolist())[:40]
    recs = scorer.recommend(users, k=5)
    ref_ids, ref_scores = VerticalFM.load(model, paths).recommend(users, k=5)
    np.testing.assert_allclose(recs.scores, ref_scores, atol=1e-4)
    assert set(scorer.host_fallbacks) == set(hosts) and all(v > 0 for v in scorer.host_fallbacks.values())
    some = sorted(aligned_sets(gv, tables)["hostA"])[:3]
    other = write_host_partials(tmp_path / "other.parquet", hosts["hostA"].export_partials(some),
                                run_id="another-run")
    with pytest.raises(ArtifactError, match="different training runs"):
        Scorer.load(model, {"hostA": other, "hostB": paths["hostB"]})
