"""Many clients in one process, with the protocol's own code: :func:`simulate`.

Two ways to connect the same :class:`~.server.FedMFServer` to the same :class:`~.client.FedMFClient`
handler tables:

* ``mode="memory"``: the in-memory twin of the ZeroMQ channel (:class:`fedrec.transport.MemoryNetwork`),
  one ``serve`` thread per client, the server's :class:`~.server.FedMFPeer` per client: everything a
  socket run does but the sockets (sequencing, reply caches, liveness by ``MemoryNetwork.kill``);
* ``mode="direct"`` (default): :class:`DirectPeer` calls a client's handler table in the server's
  ``gather`` thread, every message still encoded and decoded by the wire format both ways (sizes,
  validation, ``Rejected`` as on a channel), no client threads and no channel; at most ``cpu_count``
  handlers run at once (``limit``): ``gather`` starts one thread per selected client, and 943 clients
  working at once under the GIL would hold 943 working sets (CKKS temporaries live in SEAL's memory
  pool, which never shrinks: 943-client CKKS rounds grew one process past 10 GB). Measured on ML-100K
  (943 clients, plain, one round, 2 cores): 2.7-3.0 s with direct peers, 3.6-4.0 s over the twin.

* ``mode="ray"``: the clients live in ``workers`` Ray actors (processes, possibly on other machines;
  ``pip install 'fedrec[ray]'``), a group of clients per actor, each actor answering one request at
  a time with its clients' own handler tables; the server talks to them through :class:`RayPeer`,
  every message wire-encoded both ways (bytes cross the process boundary, never pickled protocol
  objects). A dead actor is a dead client (:class:`PeerDiedError`), as a dead device would be. The
  clients' final states come back as :attr:`SimulationResult.states` (``clients`` stays empty).

Clients get generated X25519 key pairs (:class:`fedrec.crypto.sealed.X25519Keys`) in place of CURVE
keys, and share one loaded CKKS context per process (``backend_cache``: every client holds the same
key anyway; a TenSEAL context per client would be megabytes each). :func:`kill_during` makes a client
die at a protocol step, for dropout experiments.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from fedrec.crypto.backend import CryptoBackend, CryptoError
from fedrec.protocols.fedmf.client import FedMFClient, client_data
from fedrec.protocols.fedmf.config import FedMFConfig
from fedrec.protocols.fedmf.messages import FedMFError
from fedrec.protocols.fedmf.server import FedMFPeer, FedMFServer
from fedrec.protocols.messages import Rejected
from fedrec.protocols.party import Peer, Rejection
from fedrec.transport.channel import Received
from fedrec.transport.errors import PeerDiedError, WireError
from fedrec.transport.wire import Message, decode, encode

if TYPE_CHECKING:
    from fedrec.compute.executor import Executor
    from fedrec.protocols.checkpoint import Checkpointer

__all__ = ["DirectPeer", "FramesPeer", "RayPeer", "SimulationResult", "build_clients", "checkpointers",
           "kill_during", "simulate", "synthetic_federation"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class FramesPeer(Peer):
    """The server's side of one simulated client, answered through wire-encoded frames both ways: the one
    request loop of :class:`DirectPeer` (the client's handlers in the caller's thread) and
    :class:`RayPeer` (the client in a Ray actor), which differ only in where :func:`answer_frames` runs
    (:meth:`_answer`). ``kill()``: from then on (and during the current request if it is still running)
    the client is dead (:class:`PeerDiedError`, as ``MemoryNetwork.kill`` makes it); a handler that
    raises anything but a refusal crashes its client the same way (its process would end). ``record =
    []`` keeps every answer the server got from this client (what the server sees of it)."""

    def __init__(self, name: str, timeout: float) -> None:
        self.channel = None  # type: ignore[assignment]
        self.name, self.timeout, self.error, self.retries = name, timeout, FedMFError, 0
        self.dead = False
        self.bytes_to_client = 0
        self.bytes_from_client = 0
        self.hooks: list[Callable[[Any, str, Message], None]] = []
        #: ``[]`` to record every decoded answer as ``(step, message)``: the server's view of this client
        self.record: list[tuple[str, Message]] | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def kill(self) -> None:
        self.dead = True

    def _answer(self, frames: list[bytes], step: str) -> tuple[str, list[bytes]]:
        """``(status, frames)`` of :func:`answer_frames` for this client."""
        raise NotImplementedError

    def ask(self, msg: Message, expected: type[M], step: str) -> M:
        with self._lock:  # one request at a time per client, as its serve loop would
            for hook in self.hooks:
                hook(self, step, msg)
            if self.dead:
                raise PeerDiedError(self.name, step, "died (killed)")
            self._seq += 1
            frames = [bytes(f) for f in encode(msg, step=step, seq=self._seq)]
            self.bytes_to_client += sum(len(f) for f in frames)
            status, back = self._answer(frames, step)
            if status == "crashed":
                self.dead = True
                raise PeerDiedError(self.name, step, f"crashed: {back[0].decode(errors='replace')}")
            if status == "refused":
                raise self.error(self.name, step, back[0].decode(errors="replace"))
            if self.dead:  # killed while it computed: its answer never arrives
                raise PeerDiedError(self.name, step, "died (killed) during the step")
            self.bytes_from_client += sum(len(f) for f in back)
            try:
                _, reply = decode(back)
            except WireError as exc:
                raise self.error(self.name, step, f"malformed answer: {exc}") from exc
            if self.record is not None:
                self.record.append((step, reply))
        if isinstance(reply, Rejected):
            raise self.error(self.name, step, f"rejected field {reply.field!r}: {reply.detail}", reply.field)
        if not isinstance(reply, expected):
            raise self.error(self.name, step, f"answered {type(reply).__name__}, expected "
                                              f"{expected.__name__}")
        return reply


class DirectPeer(FramesPeer):
    """A :class:`FramesPeer` that answers from ``client``'s handler table in the caller's thread; at most
    ``limit`` such handlers run at once (see the module docstring)."""

    def __init__(self, client: FedMFClient, server: str = "server", timeout: float = 300.0,
                 limit: threading.Semaphore | None = None) -> None:
        super().__init__(client.name, timeout)
        self.client, self.server = client, server
        self.handlers = client.handlers()
        self._limit = limit

    def _answer(self, frames: list[bytes], step: str) -> tuple[str, list[bytes]]:
        if self._limit is None:
            return answer_frames(self.handlers, self.server, self.name, frames)
        with self._limit:
            return answer_frames(self.handlers, self.server, self.name, frames)


def kill_during(peer: FramesPeer, step_pattern: str) -> None:
    """Make ``peer``'s client die when it is asked a step matching the regular expression
    ``step_pattern`` (``re.search``), e.g. ``"train/r2/a0/(g[0-9]+/)?upload$"`` (with or without
    masks)."""
    pattern = re.compile(step_pattern)

    def hook(p: FramesPeer, step: str, msg: Message) -> None:
        if pattern.search(step):
            p.kill()

    peer.hooks.append(hook)


def synthetic_federation(n_clients: int, n_users: int = 60, n_items: int = 40, ratings_per_user: float = 10.0,
                         seed: int = 0, test_fraction: float = 0.0
                         ) -> tuple[dict[str, pd.DataFrame], list[Any], pd.DataFrame]:
    """A small federation from :func:`fedrec.data.generate`: ``(client name -> its users' rating rows,
    catalogue (every item id, sorted), held-out rows)``; users dealt to ``c00, c01, ...`` by
    :func:`fedrec.data.partition.horizontal_split` (one user per client when ``n_clients == n_users``),
    after a :func:`fedrec.data.split.random_split` of ``test_fraction`` (0: no test rows)."""
    from fedrec.data import SyntheticConfig, generate
    from fedrec.data.partition import horizontal_split
    from fedrec.data.split import random_split

    cfg = SyntheticConfig(n_users=n_users, n_items=n_items, n_ratings=int(n_users * ratings_per_user),
                          seed=seed)
    inter = generate(cfg).dataset.interactions
    catalogue = sorted(inter["item_id"].unique().tolist())
    train, test = random_split(inter, test_fraction, seed) if test_fraction else (inter, inter.iloc[:0])
    width = len(str(n_clients - 1))
    parts = horizontal_split(train, n_clients, seed=seed)
    clients = {f"c{j:0{width}d}": p[["user_id", "item_id", "rating"]].reset_index(drop=True)
               for j, p in enumerate(parts)}
    return clients, catalogue, test.reset_index(drop=True)


def build_clients(ratings: Mapping[str, pd.DataFrame], catalogue: Sequence[Any], config: FedMFConfig,
                  backend_cache: dict[str, CryptoBackend] | None = None, *,
                  keys: Mapping[str, Any] | None = None, checkpoints: str | Path | None = None
                  ) -> dict[str, FedMFClient]:
    """One :class:`FedMFClient` per name (channel-less), sharing ``backend_cache``. ``keys``: their X25519
    key pairs (default: fresh ones; a restarted simulation passes the same); ``checkpoints``: a directory
    in which each client checkpoints in ``clients/NAME`` (:func:`checkpointers`)."""
    from fedrec.crypto.sealed import X25519Keys

    cache = {} if backend_cache is None else backend_cache
    out = {}
    for name in sorted(ratings):
        data, users, cat = client_data(ratings[name], catalogue)
        kp = keys[name] if keys is not None else X25519Keys.generate()
        ckpt = None if checkpoints is None else checkpointers(checkpoints, [name])[name]
        out[name] = FedMFClient(None, data, config, name=name, keys=kp, user_raw=users, catalogue=cat,
                                backend_cache=cache, checkpoint=ckpt)
    return out


def checkpointers(directory: str | Path, names: Sequence[str], every: int = 1) -> dict[str, Checkpointer]:
    """The Checkpointers of a simulated run under ``directory``: ``server`` (every ``every`` rounds) and
    ``clients/NAME`` per client name (they checkpoint when the server asks)."""
    from fedrec.protocols.checkpoint import Checkpointer

    root = Path(directory)
    out = {n: Checkpointer(root / "clients" / n) for n in names}
    out["server"] = Checkpointer(root / "server", every_batches=every)
    return out


@dataclass
class SimulationResult:
    """The server and clients after a run, wall time, and the traffic per client (direct mode)."""

    server: FedMFServer
    clients: dict[str, FedMFClient]
    seconds: float
    peers: dict[str, Peer] = field(default_factory=dict)
    #: ray mode: each client's final state (:func:`client_state`), fetched from its actor
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def traffic(self) -> dict[str, int]:
        """Bytes to / from the clients in total (direct and ray modes; 0 in memory mode)."""
        ps = [p for p in self.peers.values() if isinstance(p, FramesPeer)]
        return {"to_clients": sum(p.bytes_to_client for p in ps),
                "from_clients": sum(p.bytes_from_client for p in ps)}


def client_state(c: FedMFClient) -> dict[str, Any]:
    """A client's final model as plain arrays: ``finished, rounds_done, clipped, mu, q, b`` (items) and
    ``users, p, bu`` (its users')."""
    return {"finished": c.finished, "rounds_done": list(c.rounds_done), "clipped": c.clipped, "mu": c.mu,
            "q": None if c.items is None else c.items.q, "b": None if c.items is None else c.items.b,
            "users": list(c.data.users), "p": c.users.p, "bu": c.users.bu}


def answer_frames(handlers: Mapping[type[Any], Any], server: str, name: str, frames: Sequence[bytes]
                  ) -> tuple[str, list[bytes]]:
    """One request to a client, as bytes in and out: decode, run its handler (a refusal becomes
    :class:`Rejected`), encode the answer. ``("crashed", [reason])`` when the handler raised anything
    else (the client's process would end); ``("refused", [reason])`` for a request it has no handler for."""
    env, request = decode([bytes(f) for f in frames])
    handler = handlers.get(type(request))
    if handler is None:  # the server's error: the client stays alive
        return "refused", [f"no handler for {request.TYPE}".encode()]
    try:
        answer: Message = handler(Received(server, env.step, env.seq, request))
    except (Rejection, CryptoError) as exc:
        answer = Rejected(exc.field if isinstance(exc, Rejection) else type(request).__name__, str(exc))
    except Exception as exc:
        logger.exception("simulate: client %r crashed at step %r", name, env.step)
        return "crashed", [f"{type(exc).__name__}: {exc}".encode()]
    return "ok", [bytes(f) for f in encode(answer, step=env.step, seq=env.seq, reply_to=env.seq)]


class ClientGroup:
    """A Ray actor's body: some clients of a simulated federation, built in the actor's process."""

    def __init__(self, ratings: Mapping[str, pd.DataFrame], catalogue: Sequence[Any], config: FedMFConfig,
                 keys: Mapping[str, Any] | None, server: str = "server") -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.clients = build_clients(ratings, catalogue, config, keys=keys)
        self.handlers = {n: c.handlers() for n, c in self.clients.items()}
        self.server = server

    def public_keys(self) -> dict[str, bytes]:
        return {n: c.keys.public for n, c in self.clients.items()}

    def handle(self, name: str, frames: list[bytes]) -> tuple[str, list[bytes]]:
        return answer_frames(self.handlers[name], self.server, name, frames)

    def states(self) -> dict[str, dict[str, Any]]:
        return {n: client_state(c) for n, c in self.clients.items()}


class RayPeer(FramesPeer):
    """The server's side of one client that lives in a Ray actor (see ``mode="ray"``)."""

    def __init__(self, actor: Any, name: str, timeout: float) -> None:
        super().__init__(name, timeout)
        self.actor = actor

    def _answer(self, frames: list[bytes], step: str) -> tuple[str, list[bytes]]:
        import ray

        try:
            status, back = ray.get(self.actor.handle.remote(self.name, frames), timeout=self.timeout)
        except ray.exceptions.GetTimeoutError as exc:
            raise self.error(self.name, step, f"no answer within {self.timeout:g} s") from exc
        except ray.exceptions.RayActorError as exc:
            self.dead = True
            raise PeerDiedError(self.name, step, f"its actor died: {exc}") from exc
        return status, [bytes(f) for f in back]


def _simulate_ray(ratings: Mapping[str, pd.DataFrame], catalogue: Sequence[Any], config: FedMFConfig,
                  workers: int, address: str | None, client_keys: Mapping[str, Any] | None,
                  prepare: Callable[[dict[str, Peer]], None] | None, server_ckpt: Any,
                  executor: Executor | None = None) -> SimulationResult:
    from fedrec.compute.executor import RayExecutor

    engine = RayExecutor(workers, address)  # joins or starts Ray (stopped at the end if it started it)
    try:
        import ray

        names = sorted(ratings)
        n_actors = max(1, min(engine.workers, len(names)))
        groups = [names[j::n_actors] for j in range(n_actors)]
        actor_cls = ray.remote(num_cpus=1)(ClientGroup)
        actors = [actor_cls.remote({n: ratings[n] for n in g}, list(catalogue), config,
                                   None if client_keys is None else {n: client_keys[n] for n in g})
                  for g in groups]
        keys: dict[str, bytes] = {}
        for part in ray.get([a.public_keys.remote() for a in actors]):
            keys.update(part)
        peers: dict[str, Peer] = {n: RayPeer(a, n, config.timeout)
                                  for a, g in zip(actors, groups, strict=True) for n in g}
        if prepare is not None:
            prepare(peers)
        t0 = time.perf_counter()
        server = FedMFServer(peers, {n: keys[n] for n in names}, config, catalogue, checkpoint=server_ckpt,
                             executor=executor)
        server.run()
        seconds = time.perf_counter() - t0
        states: dict[str, dict[str, Any]] = {}
        for part in ray.get([a.states.remote() for a in actors]):
            states.update(part)
        for a in actors:
            ray.kill(a)
        return SimulationResult(server, {}, seconds, peers, states)
    finally:
        engine.close()


def simulate(ratings: Mapping[str, pd.DataFrame], catalogue: Sequence[Any], config: FedMFConfig, *,
             mode: str = "direct", prepare: Callable[[dict[str, Peer]], None] | None = None,
             timeout: float = 3600.0, checkpoints: str | Path | None = None, checkpoint_every: int = 1,
             client_keys: Mapping[str, Any] | None = None, workers: int = 0,
             address: str | None = None, executor: Executor | None = None) -> SimulationResult:
    """Run the protocol over ``ratings`` (client name -> ``user_id, item_id, rating`` rows) and
    ``catalogue``. ``prepare(peers)``: a chance to add hooks (e.g. :func:`kill_during`) before it starts.
    ``checkpoints``: every party checkpoints under that directory (:func:`checkpointers`; the server every
    ``checkpoint_every`` rounds) and a second call with the same directory and ``client_keys`` (the
    clients' X25519 key pairs, ``{name: c.keys}`` of the first run) resumes where the first stopped.
    ``mode="ray"``: ``workers`` actors (0: the cluster's CPUs) on a Ray at ``address`` (default: the
    initialised one, else a private local one); no client checkpoints in this mode. ``executor``: the
    server's ``[compute]`` executor (its secure sums load and add the uploads there; CKKS).
    Raises what the server raises (e.g. :class:`~fedrec.protocols.party.RoundFailed`)."""
    if mode not in ("direct", "memory", "ray"):
        raise ValueError(f"simulate: mode must be 'direct', 'memory' or 'ray', got {mode!r}")
    if mode == "ray":
        if checkpoints is not None:
            raise ValueError("simulate: mode='ray' keeps no client checkpoints; use mode='direct' to resume")
        return _simulate_ray(ratings, catalogue, config, workers, address, client_keys, prepare, None,
                             executor)
    clients = build_clients(ratings, catalogue, config, keys=client_keys, checkpoints=checkpoints)
    server_ckpt = None if checkpoints is None else checkpointers(checkpoints, [], checkpoint_every)["server"]
    keys = {n: c.keys.public for n, c in clients.items()}
    t0 = time.perf_counter()
    if mode == "direct":
        limit = threading.Semaphore(max(2, os.cpu_count() or 2))
        peers: dict[str, Peer] = {n: DirectPeer(c, timeout=config.timeout, limit=limit)
                                  for n, c in clients.items()}
        if prepare is not None:
            prepare(peers)
        server = FedMFServer(peers, keys, config, catalogue, checkpoint=server_ckpt, executor=executor)
        server.run()
        return SimulationResult(server, clients, time.perf_counter() - t0, peers)
    from fedrec.transport import MemoryNetwork
    from fedrec.transport.parties import run_parties

    net = MemoryNetwork()
    for name, c in clients.items():
        c.channel = net.channel(name, ["server"])
    channel = net.channel("server", list(clients))
    peers = {n: FedMFPeer(channel, n, timeout=config.timeout, error=FedMFError) for n in clients}
    if prepare is not None:
        prepare(peers)
    server = FedMFServer(peers, keys, config, catalogue, checkpoint=server_ckpt, executor=executor)
    parties: dict[str, Callable[[], object]] = {n: c.serve for n, c in clients.items()}
    parties["server"] = server.run
    out = run_parties(parties, timeout=timeout, return_exceptions=True)
    if isinstance(out["server"], BaseException):
        raise out["server"]
    for name, value in out.items():
        if isinstance(value, BaseException):
            logger.warning("simulate: client %r ended with %s: %s", name, type(value).__name__, value)
    return SimulationResult(server, clients, time.perf_counter() - t0, peers)
