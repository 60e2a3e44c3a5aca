"""The training loops on the ``[compute]`` executor (issue #14, item 1): the vertical FM's CKKS batches
(guest encryption/decryption, host products + masks + serialization) and the FedMF server's sum of
uploads run on a process pool with the results of the serial path; a peer's bad bytes are refused as
there; ``fedrec train`` reads ``[compute]`` (two real processes over CURVE) and a bad one fails clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedrec.compute import ProcessExecutor
from fedrec.compute.ckks import decrypt_blobs, encrypt_many, encrypt_masks_many, host_products_many, sum_blobs
from fedrec.crypto.backend import CryptoError
from fedrec.crypto.ckks import CKKSBackend

REPO = Path(__file__).resolve().parents[1]


def _corrupt(blob: bytes) -> bytes:
    raw = bytearray(blob)
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
    return bytes(raw)


# --------------------------------------------------------------------------------------------- CKKS tasks
def test_host_products_on_a_pool_equal_the_serial_path(pool: ProcessExecutor, ckks: CKKSBackend) -> None:
    rng = np.random.default_rng(1)
    size, n_chunks = 600, 5
    rows = rng.uniform(-1, 1, (n_chunks, size))
    chunks = encrypt_many(ckks, rows, pool, as_bytes=True, secret=True)  # what a guest sends
    serial = max(len(ckks.serialize(ckks.encrypt(r))) for r in rows)
    public = min(len(b) for b in encrypt_many(ckks, rows[:2], pool, as_bytes=True))
    assert max(len(b) for b in chunks) < 1.01 * serial < 0.6 * public  # seeded, as the serial guest's
    # ragged groups: 1 to 4 terms per result, chunk 4 used by no result (still checked)
    terms = [[(int(t), rng.uniform(-2, 2, size)) for t in rng.choice(4, int(rng.integers(1, 5)), False)]
             for _ in range(9)]
    masks = [rng.uniform(-5, 5, size) for _ in terms]
    enc = encrypt_masks_many(ckks, masks, 10.0, 1, pool)
    got = host_products_many(ckks, chunks, size, terms, enc, pool, min_products=3)  # 4 tasks
    loaded = [ckks.deserialize(b, size, 0) for b in chunks]
    want = [ckks.serialize(ckks.add(ckks.dot_plain([loaded[t] for t, _ in r], [p for _, p in r]),
                                    ckks.deserialize(m, size, 1))) for r, m in zip(terms, enc, strict=True)]
    assert got == want  # products and additions are deterministic: the serial bytes, bit for bit
    exact = np.stack([sum(rows[t] * p for t, p in r) + m for r, m in zip(terms, masks, strict=True)])
    fresh = host_products_many(ckks, chunks, size, terms, masks, pool, pad_range=10.0)  # masks added there
    dec = decrypt_blobs(ckks, fresh, size, 1, pool)
    assert np.abs(dec - exact).max() < ckks.error_bound(1, plain_bound=2.0, terms=4) + 1e-6
    np.testing.assert_array_equal(dec, decrypt_blobs(ckks, fresh, size, 1))  # decryption: same numbers
    # a peer's bad chunk is the serial path's CryptoError, also when no result uses it
    for t in (0, 4):
        bad = [_corrupt(b) if j == t else b for j, b in enumerate(chunks)]
        with pytest.raises(CryptoError, match=r"ckks\.deserialize"):
            ckks.deserialize(bad[t], size, 0)
        with pytest.raises(CryptoError, match=r"ckks\.deserialize"):
            host_products_many(ckks, bad, size, terms, enc, pool)
    with pytest.raises(CryptoError, match=r"ckks\.deserialize"):
        decrypt_blobs(ckks, [fresh[0], _corrupt(fresh[1])], size, 1, pool, batch=1)


def test_sum_of_uploads_on_a_pool_is_the_serial_sum_bit_for_bit(pool: ProcessExecutor,
                                                                 ckks: CKKSBackend) -> None:
    rng = np.random.default_rng(2)
    size = 5000  # two slot chunks per vector, as a FedMF model is several
    values = rng.uniform(-1, 1, (11, size))
    blobs = [ckks.serialize(ckks.encrypt_at(v, 1)) for v in values]
    blobs[6] = _corrupt(blobs[6])
    acc, bad = sum_blobs(ckks, blobs, size, 1, pool, batch=3)  # 4 tasks, partial sums added here
    with pytest.raises(CryptoError) as serial_error:
        ckks.deserialize(blobs[6], size, 1)
    assert bad == {6: str(serial_error.value)}  # the serial path's reason, for that upload only
    serial = None
    for j, b in enumerate(blobs):
        if j != 6:
            ct = ckks.deserialize(b, size, 1)
            serial = ct if serial is None else ckks.add(serial, ct)
    assert acc is not None and serial is not None
    assert ckks.serialize(acc) == ckks.serialize(serial)
    assert sum_blobs(ckks, [blobs[6]], size, 1, pool) == (None, {0: bad[6]})


def test_host_terms_built_by_the_workers_are_the_serial_terms() -> None:
    """The host ships its sparse multipliers; each worker builds the terms of its slice of results: they
    are :func:`packing.product_terms`'s, array for array, and the counts and chunks used match."""
    from fedrec.protocols.hetero_fm import packing
    from fedrec.protocols.hetero_fm.host_batch import _part_terms, _term_counts

    rng = np.random.default_rng(4)
    n_users, n_cols, k = 70, 45, 3
    users = np.repeat(np.arange(n_users), 3)
    cols = np.concatenate([rng.choice(n_cols - 5, 3, replace=False) for _ in range(n_users)])  # 5 unused
    v, w = rng.normal(0, 1, (n_cols, k)), rng.normal(0, 1, n_cols)
    x = rng.uniform(0.5, 2, len(users))
    mult = packing.Multipliers.build(users, cols, x, v, w, 0.1, "compact", n_users)
    plan = packing.ChunkPlan(n_users, k, 9, 4, "compact")
    want = packing.product_terms(plan, mult)
    counts, uses = _term_counts(plan, mult)
    assert counts == [len(r) for r in want] and uses == [[t for t, _ in r] for r in want]
    got = []
    for a, b in ((0, 3), (3, 4), (4, len(want))):
        keep = (mult.cols >= a * plan.lanes) & (mult.cols < b * plan.lanes)
        got += _part_terms(plan, mult.users[keep], mult.cols[keep] - a * plan.lanes, mult.values[keep],
                           min(mult.n_cols, b * plan.lanes) - a * plan.lanes)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [t for t, _ in g] == [t for t, _ in w]
        for (_, x), (_, y) in zip(g, w, strict=True):
            np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------- protocols
def test_vertical_fm_on_a_pool_trains_the_local_model_within_the_release_noise(pool: ProcessExecutor) -> None:
    from fedrec.data.partition import vertical_split
    from fedrec.data.synthetic import SyntheticConfig, generate
    from fedrec.protocols.hetero_fm import HeteroFMConfig, HeteroFMGuest, HeteroFMHost
    from fedrec.transport import MemoryNetwork, run_parties

    ds = generate(SyntheticConfig(n_users=80, n_items=40, n_ratings=800, seed=1)).dataset
    gv, hv = vertical_split(ds, seed=0)
    test = gv.interactions.sample(200, random_state=0)

    def fit(backend: str, executor: ProcessExecutor | None, layout: str = "compact"
            ) -> tuple[float, HeteroFMHost, HeteroFMGuest]:
        cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=2, batch_size=256, backend=backend,
                             timeout=60, layout=layout)
        net = MemoryNetwork()
        host = HeteroFMHost(net.channel("host", ["guest"]), "guest", cfg, executor=executor)
        guest = HeteroFMGuest(net.channel("guest", ["host"]), "host", cfg, executor=executor)

        def play() -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                guest.fit(gv.interactions, item_features=gv.item_features, validation="none")
            err = float(np.sqrt(np.mean((guest.predict(test) - test["rating"].to_numpy()) ** 2)))
            guest.close()
            return err

        out = run_parties({"host": lambda: host.serve(hv.user_features), "guest": play}, timeout=120)
        return float(out["guest"]), host, guest

    plain, _, _ = fit("plain", pool)  # plain ignores the executor (nothing to parallelize)
    local, _, _ = fit("ckks", None)
    remote, host, guest = fit("ckks", pool)
    # both CKKS runs are the plain model within the release noise (the test of test_hetero_fm_protocol)
    assert local == pytest.approx(plain, rel=3e-3) and remote == pytest.approx(plain, rel=3e-3)
    h_times, h_counts = host.stages.snapshot()
    assert "deserialize" not in h_times and h_counts["products"] > 0  # the host loaded no chunk itself
    assert "ahead:masks" in h_times and "ahead:encode" not in h_times  # masks made there, terms at arrival
    g_times, _ = guest.stages.snapshot()
    assert "serialize" not in g_times and "deserialize" not in g_times  # both on the workers
    static, _, _ = fit("ckks", pool, "static")  # every aligned user in every batch, on the workers too
    assert static == pytest.approx(plain, rel=3e-3)


@pytest.mark.filterwarnings("ignore:crypto backend 'plain'")
def test_fedmf_server_sums_uploads_on_a_pool(pool: ProcessExecutor) -> None:
    from fedrec.protocols.fedmf import FedMFConfig, fit_reference
    from fedrec.protocols.fedmf.simulation import simulate, synthetic_federation

    clients, catalogue, _ = synthetic_federation(4, n_users=40, n_items=30)
    cfg = FedMFConfig(backend="ckks", ckks_preset="n8192", n_factors=4, rounds=3, timeout=30.0, masks=False)
    res = simulate(clients, catalogue, cfg, executor=pool)
    ref = fit_reference(clients, catalogue, cfg)
    _, counts = res.server.stages.snapshot()
    assert counts.get("uploads", 0) == 4 * (cfg.rounds + 1)  # stats + every round, summed on the pool
    for c in res.clients.values():  # the centralized schedule within CKKS noise (test_fedmf_exact's bound)
        assert c.finished and c.items is not None
        assert np.abs(c.items.q - ref.q).max() < 1e-6


# --------------------------------------------------------------------------------------------- fedrec train
def test_start_executor_per_role(caplog: pytest.LogCaptureFixture) -> None:
    """The roles whose loops use ``[compute]`` get its executor; a FedMF client says it has none to run."""
    from training.config import parse_config
    from training.party import start_executor

    net = '[network]\ninsecure = true\n[peers.{peer}]\nendpoint = "tcp://127.0.0.1:7000"\n'
    host = ('[job]\nprotocol = "hetero_fm"\n[party]\nrole = "host"\n' + net.format(peer="guest")
            + '[data]\nuser_features = "u.csv"\n[output]\ndir = "out"\n')
    client = ('[job]\nprotocol = "fedmf"\n[party]\nrole = "client"\nname = "c1"\n' + net.format(peer="server")
              + '[data]\ninteractions = "r.csv"\ncatalogue = "c.csv"\n[output]\ndir = "out"\n')
    table = '[compute]\nengine = "process"\nworkers = 2\n'
    assert start_executor(parse_config(host, "h.toml")) is None  # local: nothing started
    ex = start_executor(parse_config(host + table, "h.toml"))
    assert isinstance(ex, ProcessExecutor) and ex.workers == 2
    ex.close()
    with caplog.at_level("WARNING"):
        assert start_executor(parse_config(client + table, "c.toml")) is None
    assert "the client role of fedmf has no heavy loop to run on it" in caplog.text


def _train(role: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FEDREC_FAULT", None)
    return subprocess.Popen([sys.executable, "-m", "training.cli", "-v", "train", "--role", role, "--config",
                             str(config), "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_fedrec_train_host_on_a_process_pool_over_curve(tmp_path: Path) -> None:
    from fedrec.data import SyntheticConfig, generate, vertical_split
    from training.demo import write_run

    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=480, seed=2)).dataset
    gv, hv = vertical_split(ds, host_user_fraction=0.9, seed=0)
    files = write_run(gv, hv, tmp_path, {"backend": "ckks", "n_factors": 4, "batch_size": 256, "epochs": 1,
                                         "timeout": 60.0, "label_dp": "off"})
    files.host_config.write_text(files.host_config.read_text() + '\n[compute]\nengine = "process"\n'
                                 'workers = 2\n')
    procs = {r: _train(r, files.host_config if r == "host" else files.guest_config, tmp_path / f"{r}.log")
             for r in ("host", "guest")}
    try:
        codes = {r: p.wait(120) for r, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for role in ("host", "guest"):
        assert codes[role] == 0, (tmp_path / f"{role}.log").read_text()
    assert "[compute] engine process with 2 worker(s)" in (tmp_path / "host.log").read_text()
    assert (files.host_out / "partials.parquet").is_file() and (files.guest_out / "summary.json").is_file()


def test_a_bad_compute_table_fails_before_the_network_opens(tmp_path: Path) -> None:
    from fedrec.data import SyntheticConfig, generate, vertical_split
    from training.demo import write_run

    ds = generate(SyntheticConfig(n_users=30, n_items=10, n_ratings=150, seed=2)).dataset
    gv, hv = vertical_split(ds, seed=0)
    files = write_run(gv, hv, tmp_path, {"backend": "ckks", "n_factors": 2, "epochs": 1})
    base = files.host_config.read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = {'engine = "spark"\n': "compute engine must be one of local, process, ray, got 'spark'"}
    try:
        import ray  # noqa: F401
    except ImportError:  # the dev set-up: no Ray, the message says how to get it
        cases['engine = "ray"\n'] = "[compute]: compute engine 'ray' needs Ray: pip install 'fedrec[ray]'"
    for table, message in cases.items():
        files.host_config.write_text(base + "\n[compute]\n" + table)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "training.cli", "train", "--role", "host", "--config",
               str(files.host_config), "--no-progress"]
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2, out.stderr
        assert "invalid configuration" in out.stderr and message in out.stderr
        assert time.perf_counter() - t0 < 30  # no wait for a peer: the network never opened
