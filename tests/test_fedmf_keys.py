"""fedmf key set-up and what the server sees: the server's context holds no secret key (it cannot decrypt
the model it holds), the secret context it relays is sealed (opaque to it, bound to the run and the
recipient), a substituted roster key is refused, and every client's upload is a ciphertext of the same
number of values whatever it rated."""

from __future__ import annotations

import hashlib

import pytest

from fedrec.crypto.backend import CryptoError
from fedrec.crypto.sealed import X25519Keys, open_sealed
from fedrec.protocols.fedmf import FedMFConfig, keys
from fedrec.protocols.fedmf.messages import KeyDelivery, Upload
from fedrec.protocols.fedmf.simulation import DirectPeer, simulate, synthetic_federation
from fedrec.protocols.party import Peer, RoundFailed
from fedrec.transport.wire import Message

CKKS = {"backend": "ckks", "n_factors": 4, "rounds": 2, "timeout": 30.0, "masks": False}  # uploads only


@pytest.fixture(scope="module")
def run() -> tuple[object, dict[str, list[bytes]]]:
    clients, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    boxes: dict[str, list[bytes]] = {}

    def spy(peers: dict[str, Peer]) -> None:
        for p in peers.values():
            assert isinstance(p, DirectPeer)

            def hook(peer: DirectPeer, step: str, msg: Message) -> None:
                if isinstance(msg, KeyDelivery):
                    boxes.setdefault(peer.name, []).extend([msg.sealed_context, msg.sealed_key])

            p.hooks.append(hook)
            p.record = []

    return simulate(clients, catalogue, FedMFConfig(**CKKS), prepare=spy), boxes


def test_server_context_has_no_secret_key_and_cannot_decrypt_its_model(run: tuple) -> None:
    res, _ = run
    server = res.server
    assert server.backend is not None and server.backend.name == "ckks"
    assert not server.backend.has_secret_key
    with pytest.raises(CryptoError, match="no secret key"):
        server.backend.decrypt(server.model)
    client = next(iter(res.clients.values()))
    assert server.backend.public_bytes() == client.backend.public_bytes()
    assert hashlib.sha256(server.backend.public_bytes()).hexdigest() == server.public_context_sha256


def test_relayed_secret_context_is_sealed_to_its_recipient_and_run(run: tuple) -> None:
    res, boxes = run
    holder, *others = sorted(res.clients)
    sealed_context = boxes[holder][0]
    assert boxes[holder][1] == b""  # the key holder keeps its own context
    secret = keys.secret_context(res.clients[holder].backend)
    assert len(sealed_context) == len(secret) + 80  # sealed once (48 + 32 bytes of box), relayed to all
    assert secret not in sealed_context and secret[-4096:] not in sealed_context  # nothing in clear
    digest, run_id = res.server.public_context_sha256, res.server.run_id
    for name in others:
        assert boxes[name][0] == sealed_context
        box = boxes[name][1]
        assert len(box) == 112  # an envelope key sealed to this client
        client = res.clients[name]
        me = {"secret_key": client.keys.secret, "public_key": client.keys.public}
        opened = keys.open_secret_context(sealed_context, box, **me, run_id=run_id, me=name,
                                          public_sha256=digest)
        assert opened == secret
        stranger = X25519Keys.generate()  # e.g. the server's own key
        for blob in (box, sealed_context):
            with pytest.raises(CryptoError):
                open_sealed(stranger.secret, stranger.public, blob, context=b"anything")
        with pytest.raises(CryptoError, match="another context"):  # another run, recipient, context
            keys.open_secret_context(sealed_context, box, **me, run_id="another-run", me=name,
                                     public_sha256=digest)
        with pytest.raises(CryptoError, match="another context"):
            keys.open_secret_context(sealed_context, box, **me, run_id=run_id, me=holder,
                                     public_sha256=digest)
        # a swapped sealed context: its last byte flipped (replacing it by b"x" was no change 1 time in 256)
        tampered = sealed_context[:-1] + bytes([sealed_context[-1] ^ 1])
        with pytest.raises(CryptoError, match="another context"):
            keys.open_secret_context(tampered, box, **me, run_id=run_id, me=name, public_sha256=digest)


def test_uploads_are_ciphertexts_of_the_whole_catalogue_whatever_was_rated() -> None:
    clients, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    clients["c0"] = clients["c0"].head(1)  # one rating, against hundreds for the others
    seen: dict[str, list[Upload]] = {}

    def spy(peers: dict[str, Peer]) -> None:
        for p in peers.values():
            assert isinstance(p, DirectPeer)
            p.record = []
            seen[p.name] = p.record  # type: ignore[assignment]

    res = simulate(clients, catalogue, FedMFConfig(**CKKS), prepare=spy)
    size = len(catalogue) * (CKKS["n_factors"] + 1)
    backend = res.server.backend
    lengths = []
    for answers in seen.values():
        ups = [m for _, m in answers if isinstance(m, Upload) and m.purpose == "train"]
        assert len(ups) == CKKS["rounds"]
        for up in ups:  # a ciphertext of exactly the model's size at the wire level, and nothing else
            ct = keys.read_ciphertext(backend, up.ciphertext, size)
            assert ct.size == size and ct.level == keys.wire_level(backend)
            lengths.append(len(up.ciphertext))
        assert {type(m).__name__ for _, m in answers} <= {"Ack", "KeyBundle", "KeyAck", "Upload"}
    # byte lengths differ only by SEAL's zstd compression of the pseudorandom c0 polynomial of a seeded
    # upload (a few 0.1%, the same distribution whatever is encrypted: 30 encryptions of zeros and of
    # random values measured 120796 +- 698 and 120787 +- 757 bytes), the one-rating client as the others
    assert max(lengths) - min(lengths) < 3e-2 * min(lengths)


def test_substituted_roster_key_is_refused_by_its_owner() -> None:
    clients, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    cfg = FedMFConfig(backend="plain", n_factors=4, rounds=1)
    from fedrec.protocols.fedmf.server import FedMFServer
    from fedrec.protocols.fedmf.simulation import build_clients

    built = build_clients(clients, catalogue, cfg)
    peers = {n: DirectPeer(c) for n, c in built.items()}
    roster = {n: c.keys.public for n, c in built.items()}
    roster["c2"] = X25519Keys.generate().public  # a server that wants c2's box sealed to its own key
    server = FedMFServer(peers, roster, cfg, catalogue)
    with pytest.warns(UserWarning, match="NO encryption"):
        server.run()
    assert "c2" in server.excluded and "another key" in server.excluded["c2"]
    assert not built["c2"].finished and built["c0"].finished


def test_pinned_roster_makes_the_key_holder_refuse_a_substituted_key() -> None:
    clients, catalogue, _ = synthetic_federation(3, n_users=30, n_items=20)
    from fedrec.protocols.fedmf.server import FedMFServer
    from fedrec.protocols.fedmf.simulation import build_clients

    base = FedMFConfig(backend="plain", n_factors=4, rounds=1)
    built = build_clients(clients, catalogue, base)
    honest = [built[n].keys.public for n in sorted(built)]
    pin = keys.roster_digest(sorted(built), honest)
    for c in built.values():
        c.config = FedMFConfig(backend="plain", n_factors=4, rounds=1, roster_sha256=pin)
    roster = {n: c.keys.public for n, c in built.items()}
    roster["c2"] = X25519Keys.generate().public
    server = FedMFServer({n: DirectPeer(c) for n, c in built.items()}, roster, built["c0"].config, catalogue)
    with pytest.raises(RoundFailed, match="fedmf/setup/keys"):
        server.run()
    assert all(c.backend is None for c in built.values())  # nobody made or received a key
    assert "roster_sha256" in server.excluded["c0"]


def test_key_holder_is_the_first_client_by_name_and_everyone_shares_its_key(run: tuple) -> None:
    res, _ = run
    names = sorted(res.clients)
    pubs = {res.clients[n].backend.public_bytes() for n in names}
    assert len(pubs) == 1 and res.server.roster == names
    assert all(res.clients[n].backend.has_secret_key for n in names)
