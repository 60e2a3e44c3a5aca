"""fedrec.compute on Ray (skipped without Ray: ``pip install 'fedrec[ray]'``): one local Ray of 2 CPUs for
the module; results equal the serial path's; a worker killed mid-shard costs a retried task only."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from fedrec.compute import ComputeConfig, ExecutorError, LocalExecutor, RayExecutor, make_executor  # noqa: E402
from fedrec.compute.ckks import decrypt_many, dot_many, encrypt_many  # noqa: E402
from fedrec.crypto.ckks import CKKSBackend  # noqa: E402
from serving.artifacts import random_bundle  # noqa: E402
from serving.sharded import ShardJob, read_dataset, score_sharded  # noqa: E402
from training.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def ex() -> Iterator[RayExecutor]:
    import logging

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        executor = make_executor(ComputeConfig(engine="ray"))
        assert isinstance(executor, RayExecutor) and executor.workers == 2
        yield executor
        executor.close()  # joined an initialised Ray: leaves it running
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_ray_map_equals_local_and_names_the_failed_task(ex: RayExecutor) -> None:
    items = [float(j) for j in range(30)]
    assert ex.map(math.pow, items, shared=3.0) == LocalExecutor().map(math.pow, items, shared=3.0)
    with pytest.raises(ExecutorError, match=r"ray engine: task 2 \(sqrt\) failed: .*math domain error"):
        ex.map(math.sqrt, [1.0, 4.0, -1.0])


def test_ray_ckks_batches_equal_the_serial_path(ex: RayExecutor) -> None:
    ckks = CKKSBackend.keygen()
    rng = np.random.default_rng(1)
    rows, plains = rng.uniform(-1, 1, (64, 200)), rng.uniform(-1, 1, (64, 1, 200))
    cts = encrypt_many(ckks, rows, ex)  # 2 tasks of 32
    assert np.abs(decrypt_many(ckks, cts) - rows).max() < ckks.error_bound(0)
    groups = [[c] for c in cts]
    local = decrypt_many(ckks, dot_many(ckks, groups, plains))
    np.testing.assert_array_equal(decrypt_many(ckks, dot_many(ckks, groups, plains, ex), ex), local)


def _files(tmp: Path) -> tuple[Path, Path, Path]:
    random_bundle(2000, 300, 8, seed=5).save(tmp / "bundle")
    users = tmp / "users.txt"
    users.write_text("".join(f"u{j}\n" for j in range(2200)))
    single = tmp / "single.parquet"
    assert main(["recommend", "--model", str(tmp / "bundle"), "--users", str(users), "--out", str(single),
                 "--chunk-size", "100", "--no-progress"]) == 0
    return tmp / "bundle", users, single


def test_ray_sharded_scoring_survives_killed_workers(ex: RayExecutor, tmp_path: Path) -> None:
    bundle, users, single = _files(tmp_path)
    ids = users.read_text().split()
    job = ShardJob(model=str(bundle), host_partials=None, k=10, filter_seen=True, allow=None, deny=None,
                   chunk_size=100, out_dir=str(tmp_path / "recs"))
    res = score_sharded(job, ids, ex, shard_users=400)  # 6 shards of 4 chunks (the last: 2)
    assert res.n_shards == 6 and res.counts["unknown_user"] == 200
    assert read_dataset(tmp_path / "recs").equals(pq.read_table(single))
    # workers that SIGKILL themselves at their 3rd chunk: each finishes one 2-chunk shard and dies in its
    # next one; Ray re-runs the lost task (a worker dies at most once, after a shard: <= 3 deaths in all)
    killer = RayExecutor(task_env={"FEDREC_FAULT": "kill:score/chunk/*:3"}, max_retries=4)
    res = score_sharded(ShardJob(**{**job.__dict__, "out_dir": str(tmp_path / "recs2")}), ids[:600], killer,
                        shard_users=200)
    assert res.n_shards == 3 and res.resumed == 0
    records = [json.loads((tmp_path / "recs2" / f"part-{i:05d}.json").read_text()) for i in range(3)]
    workers = {r["worker"] for r in records}
    assert len(workers) == 3  # one shard per worker: the others were killed
    assert read_dataset(tmp_path / "recs2").equals(pq.read_table(single).slice(0, 6000))


@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_fedmf_clients_on_ray_actors_train_the_direct_model(ex: RayExecutor) -> None:
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.simulation import simulate, synthetic_federation

    clients, catalogue, _ = synthetic_federation(12, n_users=36, n_items=20)
    cfg = FedMFConfig(backend="plain", n_factors=3, rounds=3, timeout=60.0, masks=True, clients_per_round=8)
    direct = simulate(clients, catalogue, cfg)
    remote = simulate(clients, catalogue, cfg, mode="ray")  # 2 actors of 6 clients on the module's Ray
    assert remote.server.rounds_done == direct.server.rounds_done == 3 and not remote.clients
    assert ray.is_initialized()  # joined the module's Ray, did not stop it
    for name, c in direct.clients.items():
        s = remote.states[name]
        assert s["finished"] and s["users"] == list(c.data.users)
        assert c.items is not None
        np.testing.assert_allclose(s["q"], c.items.q, atol=1e-5)  # masks cancel up to rounding (two direct
        # runs differ by ~3e-7 too: the masked sums are rounded at a fixed scale)
        np.testing.assert_allclose(s["p"], c.users.p, atol=1e-5)


def test_ray_runs_the_training_loops_batches_from_the_peers_bytes(ex: RayExecutor) -> None:
    """The vertical FM host's ragged products and the FedMF server's sum of uploads on Ray: the serial
    bytes, bit for bit; a peer's bad chunk is the serial path's CryptoError, through Ray too."""
    from fedrec.compute.ckks import host_products_many, sum_blobs
    from fedrec.crypto.backend import CryptoError

    be = CKKSBackend.keygen()
    rng = np.random.default_rng(3)
    size = 500
    rows = rng.uniform(-1, 1, (4, size))
    chunks = encrypt_many(be, rows, ex, as_bytes=True, secret=True)
    terms = [[(t, rng.uniform(-1, 1, size)) for t in range(j % 4 + 1)] for j in range(6)]
    masks = [be.serialize(be.encrypt_mask(np.zeros(size), 1.0, 1)) for _ in terms]
    got = host_products_many(be, chunks, size, terms, masks, ex, min_products=2)
    loaded = [be.deserialize(b, size, 0) for b in chunks]
    want = [be.serialize(be.add(be.dot_plain([loaded[t] for t, _ in r], [p for _, p in r]),
                                be.deserialize(m, size, 1))) for r, m in zip(terms, masks, strict=True)]
    assert got == want
    bad = list(chunks)
    bad[2] = bad[2][:100] + b"\xff" * 64 + bad[2][164:]
    with pytest.raises(CryptoError, match=r"ckks"):
        host_products_many(be, bad, size, terms, masks, ex)
    uploads = [be.serialize(be.encrypt_at(r, 1)) for r in rows]
    acc, refused = sum_blobs(be, uploads, size, 1, ex, batch=1)
    serial = be.deserialize(uploads[0], size, 1)
    for b in uploads[1:]:
        serial = be.add(serial, be.deserialize(b, size, 1))
    assert refused == {} and acc is not None and be.serialize(acc) == be.serialize(serial)


def test_fedrec_train_starts_the_ray_engine_of_its_compute_table(ex: RayExecutor) -> None:
    """``[compute] engine = "ray"``: ``fedrec train``'s executor joins the running Ray (here the module's)
    and leaves it running when closed."""
    from training.config import parse_config
    from training.party import start_executor

    doc = ('[job]\nprotocol = "hetero_fm"\n[party]\nrole = "host"\n[network]\ninsecure = true\n'
           '[peers.guest]\nendpoint = "tcp://127.0.0.1:7000"\n[data]\nuser_features = "u.csv"\n'
           '[output]\ndir = "out"\n[compute]\nengine = "ray"\n')
    executor = start_executor(parse_config(doc, "h.toml"))
    assert isinstance(executor, RayExecutor) and executor.workers == 2
    executor.close()
    assert ray.is_initialized()
