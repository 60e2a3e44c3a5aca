"""FedMF checkpoints and resume over the in-process twin (direct peers, the protocol's own code): the server
crashes at several points, everything restarts from its checkpoint directory, and the final model equals
the uninterrupted run's exactly (plain backend, masks off: the masks' fresh rounding is the only
difference a masked resume may show, tested within its bound). A checkpoint of another config, roster or
rating set, or a tampered one, is refused naming the field; a client's checkpoint (the secret CKKS
context) is private at rest."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.artifacts import ArtifactError
from fedrec.crypto.sealed import X25519Keys
from fedrec.protocols.fedmf import FedMFConfig, FedMFServer
from fedrec.protocols.fedmf.simulation import DirectPeer, build_clients, checkpointers, synthetic_federation

pytestmark = pytest.mark.filterwarnings("ignore:crypto backend 'plain'")

SMALL = {"backend": "plain", "n_factors": 4, "rounds": 6, "timeout": 10.0, "masks": False}  # exact replay


class Crash(Exception):
    """Stands for the server process dying (its clients are rebuilt from their checkpoints too)."""


@pytest.fixture(scope="module")
def federation() -> tuple[dict[str, Any], list[Any]]:
    clients, catalogue, _ = synthetic_federation(5, n_users=40, n_items=25)
    return clients, catalogue


def run(fed: tuple[dict[str, Any], list[Any]], cfg: FedMFConfig, root: Path | None, keys: dict[str, Any],
        crash: Callable[[FedMFServer], None] | None = None, every: int = 1,
        reuse: dict[str, Any] | None = None) -> tuple[FedMFServer, dict[str, Any]]:
    """One start of every party (fresh objects unless ``reuse``); ``crash(server)`` arms a crash."""
    ratings, catalogue = fed
    clients = reuse or build_clients(ratings, catalogue, cfg, keys=keys, checkpoints=root)
    ckpt = None if root is None else checkpointers(root, [], every)["server"]
    server = FedMFServer({n: DirectPeer(c, timeout=cfg.timeout) for n, c in clients.items()},
                         {n: k.public for n, k in keys.items()}, cfg, catalogue, checkpoint=ckpt)
    if crash is not None:
        crash(server)
    server.run()
    return server, clients


def model_of(clients: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for n, c in clients.items():
        assert c.finished and c.items is not None
        out.update({f"{n}.q": c.items.q, f"{n}.b": c.items.b, f"{n}.p": c.users.p, f"{n}.bu": c.users.bu,
                    f"{n}.mu": np.array([c.mu])})
    return out


@pytest.fixture(scope="module")
def keys(federation: tuple[dict[str, Any], list[Any]]) -> dict[str, Any]:
    return {n: X25519Keys.generate() for n in federation[0]}


@pytest.fixture(scope="module")
def reference(federation: tuple[dict[str, Any], list[Any]], keys: dict[str, Any]) -> dict[str, np.ndarray]:
    _, clients = run(federation, FedMFConfig(**SMALL), None, keys)
    return model_of(clients)


def crash_in_round(t: int, after: bool) -> Callable[[FedMFServer], None]:
    """The server dies in round ``t``: before it starts, or after the clients worked on it and the server
    summed their uploads (nothing of round ``t`` checkpointed)."""
    def arm(server: FedMFServer) -> None:
        original = server.train_round

        def train_round(r: int) -> None:
            if r == t and not after:
                raise Crash(f"before round {r}")
            original(r)
            if r == t:
                raise Crash(f"after round {r}")
        server.train_round = train_round  # type: ignore[method-assign]
    return arm


def crash_at_save(cursor: int) -> Callable[[FedMFServer], None]:
    """The server dies writing its checkpoint ``cursor``, after every client wrote its own."""
    def arm(server: FedMFServer) -> None:
        assert server.checkpoint is not None
        original = server.checkpoint.save

        def save(epoch: int, *args: Any, **kw: Any) -> Any:
            if epoch == cursor:
                raise Crash(f"saving round {cursor}")
            return original(epoch, *args, **kw)
        server.checkpoint.save = save  # type: ignore[method-assign]
    return arm


def crash_at_finish(server: FedMFServer) -> None:
    def finish() -> None:
        raise Crash("at Finish")
    server.finish = finish  # type: ignore[method-assign]


# (name, crash, checkpoint every N rounds, the round the resumed server starts from (None: afresh))
CASES = [
    ("setup", crash_at_save(0), 1, None),              # clients checkpointed round 0, the server did not
    ("round3-before", crash_in_round(3, False), 1, 3),
    ("round3-worked", crash_in_round(3, True), 1, 3),  # clients worked on round 3: back to before it
    ("between-writes", crash_at_save(4), 1, 3),        # clients hold round 4, the server round 3
    ("every2-round3", crash_in_round(3, True), 2, 2),
    ("finish", crash_at_finish, 1, 6),
]


@pytest.mark.parametrize("name,crash,every,resumed", CASES, ids=[c[0] for c in CASES])
def test_crash_then_restart_of_all_gives_the_uninterrupted_model(
        tmp_path: Path, federation: tuple, keys: dict[str, Any], reference: dict[str, np.ndarray], name: str,
        crash: Callable[[FedMFServer], None], every: int, resumed: int | None) -> None:
    cfg = FedMFConfig(**SMALL)
    with pytest.raises(Crash):
        run(federation, cfg, tmp_path, keys, crash, every)
    server, clients = run(federation, cfg, tmp_path, keys, every=every)
    assert server.resumed_from == resumed
    assert all(c.resumed_from == resumed for c in clients.values())
    assert server.rounds_done == cfg.rounds and not server.excluded
    got = model_of(clients)
    assert sorted(got) == sorted(reference)
    for k, v in reference.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_a_client_that_stayed_up_goes_back_to_its_checkpoint(tmp_path: Path, federation: tuple,
                                                             keys: dict[str, Any],
                                                             reference: dict[str, np.ndarray]) -> None:
    """Only the server restarts: the clients' memory is a round ahead; the Resume replaces it."""
    cfg = FedMFConfig(**SMALL)
    clients = build_clients(federation[0], federation[1], cfg, keys=keys, checkpoints=tmp_path)
    with pytest.raises(Crash):
        run(federation, cfg, tmp_path, keys, crash_in_round(2, True), reuse=clients)
    assert all(c.rounds_done[-1] == 2 for c in clients.values())
    server, _ = run(federation, cfg, tmp_path, keys, reuse=clients)
    assert server.resumed_from == 2
    got = model_of(clients)
    for k, v in reference.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_a_masked_resume_equals_the_uninterrupted_run_within_the_mask_rounding(
        tmp_path: Path, federation: tuple, keys: dict[str, Any], reference: dict[str, np.ndarray]) -> None:
    cfg = FedMFConfig(**{**SMALL, "masks": True})
    with pytest.raises(Crash):
        run(federation, cfg, tmp_path, keys, crash_in_round(3, True))
    server, clients = run(federation, cfg, tmp_path, keys)
    assert server.resumed_from == 3
    got = model_of(clients)
    # the masked statistics and rounds against the unmasked reference (test_fedmf_exact's budget: 1e-4)
    assert max(float(np.abs(got[k] - v).max()) for k, v in reference.items()) < 1e-4


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _crashed_run(root: Path, federation: tuple, keys: dict[str, Any]) -> None:
    with pytest.raises(Crash):
        run(federation, FedMFConfig(**SMALL), root, keys, crash_in_round(2, False))


def test_server_checkpoint_of_another_config_is_refused_naming_the_field(tmp_path: Path, federation: tuple,
                                                                        keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    with pytest.raises(ArtifactError, match="field 'lr'"):
        run(federation, FedMFConfig(**{**SMALL, "lr": 0.5}), tmp_path, keys)


def test_server_checkpoint_of_another_catalogue_is_refused(tmp_path: Path, federation: tuple,
                                                           keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    ratings, catalogue = federation
    with pytest.raises(ArtifactError, match="field '(n_items|catalogue_sha256)'"):
        run((ratings, [*catalogue, "extra-item"]), FedMFConfig(**SMALL), tmp_path, keys)


def test_server_checkpoint_of_another_roster_is_refused(tmp_path: Path, federation: tuple,
                                                        keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    other = {**keys, "c1": X25519Keys.generate()}
    with pytest.raises(ArtifactError, match="roster_keys.*'c1'"):
        run(federation, FedMFConfig(**SMALL), tmp_path, other)


def test_tampered_server_checkpoint_is_refused(tmp_path: Path, federation: tuple,
                                               keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    newest = checkpointers(tmp_path, [])["server"].list()[0]
    flip_a_byte(newest.path / "arrays.npz")
    with pytest.raises(ArtifactError, match="content sha256|cannot read"):
        run(federation, FedMFConfig(**SMALL), tmp_path, keys)


def test_client_with_a_tampered_checkpoint_is_left_out_naming_it(tmp_path: Path, federation: tuple,
                                                                 keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    c2 = checkpointers(tmp_path, ["c2"])["c2"]
    for info in c2.list():
        flip_a_byte(info.path / "arrays.npz")
    server, clients = run(federation, FedMFConfig(**SMALL), tmp_path, keys)
    assert server.resumed_from == 2 and "c2" in server.excluded and "refused" in server.excluded["c2"]
    assert not clients["c2"].finished and clients["c0"].finished


def test_client_checkpoint_of_other_ratings_is_refused_naming_the_field(tmp_path: Path, federation: tuple,
                                                                        keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    ratings, catalogue = federation
    changed = dict(ratings)
    changed["c3"] = ratings["c3"].assign(rating=ratings["c3"]["rating"] + 0.5)
    server, _ = run((changed, catalogue), FedMFConfig(**SMALL), tmp_path, keys)
    assert "data_sha256" in server.excluded["c3"]


def test_client_checkpoints_are_private_and_the_servers_hold_no_secret_key(tmp_path: Path, federation: tuple,
                                                                           keys: dict[str, Any]) -> None:
    _crashed_run(tmp_path, federation, keys)
    ck = checkpointers(tmp_path, ["c0"])
    info = ck["c0"].list()[0]
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o700
    for f in info.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    art = ck["c0"].load(info)
    assert art.arrays["secret_context"].size > 0
    server_art = ck["server"].load(ck["server"].list()[0])
    assert "secret_context" not in server_art.arrays and set(server_art.arrays) == {"model", "public_context",
                                                                                    "roster_keys"}
