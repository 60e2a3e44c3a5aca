#!/usr/bin/env python3
"""Hostile-peer fuzzing of fedrec's live endpoints (issue #9): frames from an authenticated malicious peer
against the vertical FM host's training loop, a PSI host and the FedMF server, and hostile HTTP traffic
against ``fedrec serve``. Each endpoint runs in its own process over real ZeroMQ + CURVE (HTTP: uvicorn
on the loopback); the attacker holds a registered key, so every frame reaches the receive path.

Per endpoint it reports: frames/requests sent by kind, how they were answered (transport error reply,
protocol ``Rejected``, clean end of a PSI session naming the peer and step), crashes (the process died or
printed a traceback), hangs (a liveness probe or session beyond its deadline), 5xx (HTTP), and whether a
legitimate run completed right after the barrage. Results: ``benchmarks/results/fuzz.{json,md,png}``.

    python benchmarks/fuzz.py            # >= 25,000 frames per endpoint, >= 10,000 HTTP requests
    python benchmarks/fuzz.py --quick    # 1,500 frames per endpoint, 1,000 HTTP requests (~2 min)

Frame kinds: ``garbage`` (random bytes), ``header`` (msgpack that is not a valid header), ``unknown``
(an unregistered type), ``field`` (a valid message with one field replaced, dropped or added),
``frame`` (array/blob frames mangled: bytes, dtype, shape, count), ``envelope`` (forged session id, seq 0,
seq 2^63-1, replays, 10 kB step names, forged reply_to, error reports) and ``semantic`` (well-formed
messages with hostile values: counts and cursors beyond the set-up, users outside the aligned set,
invalid points, wrong shapes, another Setup, another config).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
HOST = "127.0.0.1"
U63 = (1 << 63) - 1
log = logging.getLogger("fuzz")


# ----------------------------------------------------------------------------------------------- frames
def _mutate_value(rng: np.random.Generator, v: Any) -> Any:
    choices: list[Any] = [
        U63,
        -1,
        1 << 40,
        2**31 - 1,
        0,
        -(1 << 63),
        1.5,
        float("nan"),
        float("inf"),
        "x",
        "y" * 5000,
        [],
        [1, 2, 3],
        {"a": 1},
        None,
        True,
        b"\x00" * 40,
    ]
    return choices[int(rng.integers(len(choices)))]


def hostile_frames(
    rng: np.random.Generator,
    templates: list[Any],
    session: int,
    next_seq: Callable[[], int],
    semantic: list[Any],
    step_prefix: str,
    fixed_step: bool = False,
) -> Iterator[tuple[str, list[bytes]]]:
    """An endless stream of ``(kind, frames)`` (see the module docstring); ``fixed_step``: every frame
    at ``step_prefix`` (for a party that reads one step, as PSI's chunk loop)."""
    from fedrec.transport.wire import encode

    kinds = ["garbage", "header", "unknown", "field", "frame", "envelope", "semantic"]
    weights = np.array([1, 1, 1, 3, 2, 2, 3], dtype=float)
    weights /= weights.sum()
    i = 0
    while True:
        i += 1
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        step = step_prefix if fixed_step else f"{step_prefix}/{i}"
        if kind == "garbage":
            n = int(rng.integers(1, 4))
            yield kind, [rng.bytes(int(rng.integers(0, 2000))) for _ in range(n)]
        elif kind == "header":
            bad: list[Any] = [
                1,
                [1, 2],
                "str",
                {"v": 1},
                {"v": 1, "t": 5, "step": "", "seq": 1, "sid": session},
                {"v": 99, "t": "x", "step": "", "seq": 1, "sid": session, "b": {}, "f": []},
                {"v": 1, "t": "party.Ack", "step": "s", "seq": -5, "sid": session, "b": {}, "f": []},
            ]
            yield kind, [msgpack.packb(bad[int(rng.integers(len(bad)))])]
        elif kind == "unknown":
            h = {
                "v": 1,
                "t": "evil.Nothing",
                "step": step,
                "seq": next_seq(),
                "sid": session,
                "re": None,
                "b": {},
                "f": [],
            }
            yield kind, [msgpack.packb(h)]
        elif kind in ("field", "frame"):
            msg = templates[int(rng.integers(len(templates)))]
            frames = [bytes(f) for f in encode(msg, step=step, seq=next_seq(), session=session)]
            h = msgpack.unpackb(frames[0], raw=False)
            fields = h["b"]
            if kind == "field" or len(frames) == 1:
                op = int(rng.integers(3))
                keys = list(fields)
                if op == 0 and keys:
                    fields[keys[int(rng.integers(len(keys)))]] = _mutate_value(rng, None)
                elif op == 1 and keys:
                    del fields[keys[int(rng.integers(len(keys)))]]
                else:
                    fields["extra"] = 1
            else:
                op = int(rng.integers(4))
                j = int(rng.integers(1, len(frames)))
                if op == 0:
                    frames[j] = rng.bytes(len(frames[j]))
                elif op == 1:
                    frames[j] = frames[j][: len(frames[j]) // 2]
                elif op == 2:
                    frames.append(rng.bytes(16))
                else:
                    for d in fields.values():
                        if isinstance(d, dict) and "dtype" in d:
                            d["dtype"], d["shape"] = "<f8", [int(rng.integers(0, 1 << 20))]
            frames[0] = msgpack.packb(h)
            yield kind, frames
        elif kind == "envelope":
            msg = templates[int(rng.integers(len(templates)))]
            op = int(rng.integers(6))
            seq = {0: next_seq(), 1: 0, 2: U63, 3: 1, 4: next_seq(), 5: next_seq()}[op]
            sid = session ^ int(rng.integers(1, 1 << 20)) if op == 0 else session
            frames = [bytes(f) for f in encode(msg, step=step, seq=seq, session=sid)]
            if op == 4:  # a 10 kB step name (the writer refuses one; the attacker patches the header)
                h = msgpack.unpackb(frames[0], raw=False)
                h["step"] = "s" * 10_000
                frames[0] = msgpack.packb(h)
            if op == 5:  # an error report about a made-up message
                from fedrec.transport.control import ErrorReply

                frames = [
                    bytes(f)
                    for f in encode(
                        ErrorReply("malformed", "fuzz", step, 7), step=step, seq=seq, session=sid, reply_to=7
                    )
                ]
            yield kind, frames
        else:
            msg = semantic[int(rng.integers(len(semantic)))]
            yield kind, [bytes(f) for f in encode(msg, step=step, seq=next_seq(), session=session)]


class Attacker:
    """An authenticated peer that sends raw frames and keeps its own inbox small."""

    def __init__(self, channel: Any, peer: str) -> None:
        self.ch, self.peer = channel, peer
        self.sent: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()

    def next_seq(self) -> int:
        with self.ch._cond:
            st = self.ch._state[self.peer]
            seq = st.next_seq
            st.next_seq += 1
            return int(seq)

    def send(self, kind: str, frames: list[bytes]) -> None:
        from fedrec.transport.errors import TransportError

        try:
            self.ch._transmit(self.peer, frames, step="fuzz")
            self.sent[kind] += 1
        except TransportError as exc:
            self.sent["not_sent"] += 1
            log.debug("not sent: %s", exc)

    def drain(self) -> None:
        """Count and drop what the endpoint answered (attacker-side bookkeeping, not a channel API)."""
        from fedrec.protocols.messages import Rejected
        from fedrec.transport.errors import RemoteError

        with self.ch._cond:
            for item in self.ch._inbox:
                if isinstance(item.error, RemoteError):
                    self.answers["transport_error_reply"] += 1
                elif isinstance(item.msg, Rejected):
                    self.answers["protocol_rejected"] += 1
                else:
                    self.answers["other_answer"] += 1
            self.ch._inbox.clear()
            for st in self.ch._state.values():
                st.buffered = st.buffered_bytes = st.rejected_queued = 0


# ----------------------------------------------------------------------------------------------- keys
def make_keys(directory: Path, names: list[str]) -> None:
    from fedrec.transport.keys import write_keypair

    for n in names:
        write_keypair(directory, n)


def _channel_listen(keys: Path, me: str, peers: list[str], config: Any) -> Any:
    from fedrec.transport.keys import load_keypair, load_public_key
    from fedrec.transport.zmq_channel import ZmqChannel

    return ZmqChannel.listen(
        me,
        load_keypair(keys / f"{me}.key_secret"),
        {p: load_public_key(keys / f"{p}.key") for p in peers},
        config=config,
    )


def _channel_connect(keys: Path, me: str, server: str, endpoint: str, config: Any) -> Any:
    from fedrec.transport.keys import load_keypair, load_public_key
    from fedrec.transport.zmq_channel import ZmqChannel

    ch = ZmqChannel.connect(
        me,
        load_keypair(keys / f"{me}.key_secret"),
        server,
        load_public_key(keys / f"{server}.key"),
        endpoint,
        config=config,
    )
    ch.wait_for_peers(timeout=20)
    return ch


def _transport_config() -> Any:
    from fedrec.transport.channel import TransportConfig

    return TransportConfig(
        recv_timeout=30, send_timeout=10, heartbeat_interval=0.5, heartbeat_timeout=20, handshake_timeout=5
    )


class _Output:
    """A server role's stdout lines and stderr, read as they come (a thread per pipe). A pipe read only
    when the role is stopped fills up (64 KiB on Linux) and blocks the role in its next print: the PSI
    host, which reports every run, stopped serving at its ~415th run that way (issue #9)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.lines: list[str] = []
        self.err: list[str] = []
        self.threads = [
            threading.Thread(target=self._read, args=(proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)


_OUTPUTS: dict[int, _Output] = {}


def _spawn(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``fuzz.py <args>`` (a server role); returns the process and the endpoint it printed. Its
    output is drained from then on (:class:`_Output`; :func:`_finish` returns it)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("endpoint "):
        proc.kill()
        raise SystemExit(f"{args[0]} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    _OUTPUTS[proc.pid] = _Output(proc)
    return proc, line.split()[1]


def _output(proc: subprocess.Popen[str]) -> list[str]:
    """The stdout lines a server role printed so far (after its endpoint line)."""
    return list(_OUTPUTS[proc.pid].lines)


def _finish(proc: subprocess.Popen[str]) -> tuple[bool, list[str], str]:
    """Stop a server role; ``(alive until stopped, its stdout lines, its stderr)``."""
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    output = _OUTPUTS.pop(proc.pid)
    output.join(timeout=10)
    return alive, output.lines, "".join(f"{x}\n" for x in output.err)


# ----------------------------------------------------------------------------------------------- hetero FM
def _hetero_data() -> tuple[Any, Any, Any]:
    from fedrec.data.partition import vertical_split
    from fedrec.data.synthetic import SyntheticConfig, generate
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    ds = generate(SyntheticConfig(n_users=60, n_items=30, n_ratings=600, seed=3)).dataset
    gv, hv = vertical_split(ds, seed=0)
    cfg = HeteroFMConfig(label_dp="off", n_factors=4, epochs=1, batch_size=128, backend="plain", timeout=60)
    return cfg, gv, hv


def serve_host(keys: Path) -> None:
    """Server role: the vertical FM host, serving one guest job after another on one endpoint."""
    from fedrec.protocols.hetero_fm import HeteroFMHost
    from fedrec.transport.errors import PeerDiedError, PeerTimeoutError

    cfg, _, hv = _hetero_data()
    ch = _channel_listen(keys, "host", ["guest"], _transport_config())
    print(f"endpoint {ch.endpoint}", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (ch.close(), os._exit(0)))
    while True:
        host = HeteroFMHost(ch, "guest", cfg)
        try:
            host.serve(hv.user_features)
            print(json.dumps({"event": "served", "rejected": host.rejected}), flush=True)
        except (PeerDiedError, PeerTimeoutError) as exc:
            print(json.dumps({"event": "guest gone", "detail": str(exc)[:200]}), flush=True)
            time.sleep(0.2)


def _hetero_semantic(cfg: Any, n_aligned: int, n_batches: int) -> list[Any]:
    from fedrec.crypto.backend import make_backend
    from fedrec.protocols.hetero_fm.messages import (
        EncryptedResiduals,
        EpochEnd,
        PartialsRequest,
        PredictRequest,
        ReleasedGradients,
        Setup,
    )
    from fedrec.protocols.messages import Checkpoint, CheckpointRef, Hello, Resume

    pub = make_backend("plain").public_bytes()
    other = dict(cfg.agreed(), n_factors=99)
    return [
        EpochEnd(0, False, 2**31 - 1),
        EpochEnd(0, False, n_batches + 1),
        EpochEnd(5, False, n_batches),
        PartialsRequest("train", 0, 2**31 - 1, np.array([0])),
        PartialsRequest("train", 10**6, 0, np.array([0])),
        PartialsRequest("train", 0, 0, np.array([n_aligned + 5])),
        PartialsRequest("validate", 0, 0, np.array([3, 1])),
        PartialsRequest("predict", 0, 0, np.arange(n_aligned + 1)),
        PredictRequest(["nobody", "u?"]),
        Checkpoint(0, 2**30, False),
        Checkpoint(2**20, 0, True),
        EncryptedResiduals(0, 0, 10**9, 1, 1, [b"garbage"]),
        EncryptedResiduals(0, 0, 3, 1, 1, [b"x"] * 50, 0, 60),
        ReleasedGradients(0, 0, np.zeros((3, 7))),
        ReleasedGradients(7, 9, np.zeros((1, 1))),
        Setup(pub, "0" * 64, ["a", "b"], 3),
        Setup(pub, "0" * 64, ["a", "a"], 3),
        Hello("hetero_fm", 99, "x", {}),
        Hello("hetero_fm", 4, "run", other),
        Resume("other-run", [CheckpointRef(2**20, 2**31, True, "d", "e")]),
    ]


def fuzz_host(keys: Path, n_frames: int, seed: int, probe_every: int) -> dict[str, Any]:
    import hashlib

    from fedrec.crypto.backend import make_backend
    from fedrec.protocols.hetero_fm import HeteroFMGuest
    from fedrec.protocols.hetero_fm.config import PROTOCOL, PROTOCOL_VERSION
    from fedrec.protocols.hetero_fm.messages import HeteroFMError, Partials, PartialsRequest, Setup, SetupAck
    from fedrec.protocols.messages import Ack, Hello
    from fedrec.protocols.party import Peer

    cfg, gv, hv = _hetero_data()
    proc, endpoint = _spawn(["--serve-host", str(keys)])
    result: dict[str, Any] = {"endpoint": "hetero_fm host training loop"}
    try:
        ch = _channel_connect(keys, "guest", "host", endpoint, _transport_config())
        peer = Peer(ch, "host", timeout=30, error=HeteroFMError)
        users = sorted(str(u) for u in hv.user_features.index)[:40]
        n_batches = 5
        peer.ask(Hello(PROTOCOL, PROTOCOL_VERSION, "fuzz", cfg.agreed()), Ack, "fm/setup")
        pub = make_backend("plain").public_bytes()
        peer.ask(Setup(pub, hashlib.sha256(pub).hexdigest(), users, n_batches), SetupAck, "fm/setup")
        templates = [
            PartialsRequest("validate", 0, 0, np.array([0, 1])),
            *_hetero_semantic(cfg, 40, n_batches),
        ]
        atk = Attacker(ch, "host")
        gen = hostile_frames(
            np.random.default_rng(seed),
            templates,
            ch._session,
            atk.next_seq,
            _hetero_semantic(cfg, len(users), n_batches),
            "fuzz",
        )
        probes, t0 = [], time.perf_counter()
        hangs = 0
        for i in range(n_frames):
            atk.send(*next(gen))
            if (i + 1) % 200 == 0:
                atk.drain()
            if (i + 1) % probe_every == 0:
                tp = time.perf_counter()
                try:
                    peer.ask(PartialsRequest("validate", 0, 0, np.array([0, 1])), Partials, "probe")
                    probes.append(time.perf_counter() - tp)
                except Exception as exc:  # noqa: BLE001 - a failed probe is the finding
                    hangs += 1
                    log.error("probe failed: %s", exc)
        atk.drain()
        seconds = time.perf_counter() - t0
        ch.close()
        alive_mid = proc.poll() is None
        # a legitimate run right after the barrage, against the same process and endpoint
        t1 = time.perf_counter()
        legit_ok, legit_error = True, ""
        try:
            gch = _channel_connect(keys, "guest", "host", endpoint, _transport_config())
            guest = HeteroFMGuest(gch, "host", cfg).fit(
                gv.interactions, item_features=gv.item_features, validation="none"
            )
            guest.close()
            gch.close()
        except Exception as exc:  # noqa: BLE001
            legit_ok, legit_error = False, f"{type(exc).__name__}: {exc}"[:300]
        result.update(
            frames=sum(v for k, v in atk.sent.items() if k != "not_sent"),
            by_kind=dict(atk.sent),
            answers=dict(atk.answers),
            seconds=round(seconds, 1),
            frames_per_second=round(n_frames / seconds),
            probes=len(probes),
            hangs=hangs,
            probe_p99_ms=round(1000 * float(np.percentile(probes, 99)), 1) if probes else None,
            legit_run_ok=legit_ok,
            legit_run_seconds=round(time.perf_counter() - t1, 1),
            legit_error=legit_error,
        )
    finally:
        alive, out, err = _finish(proc)
    result["crashes"] = int(not (alive and alive_mid)) + err.count("Traceback")
    return result


# ----------------------------------------------------------------------------------------------- PSI
PSI_HOST_IDS = [f"id{i}" for i in range(0, 300)]
PSI_GUEST_IDS = [f"id{i}" for i in range(150, 400)]
PSI_TIMEOUT = 3.0
PSI_GUEST_SIZE = 250  # what the attacker's and the honest guest's Hellos announce
#: the host's whole-run deadline (run_psi's default for these set sizes: 3 timeout + 2 ms per id = 10.1 s);
#: a run that a peer keeps alive chunk by chunk ends there
PSI_RUN_TIMEOUT = 3 * PSI_TIMEOUT + 0.002 * (len(PSI_HOST_IDS) + PSI_GUEST_SIZE)
#: a host run longer than this is a hang: beyond its whole-run deadline, plus 1 s for a loaded machine
PSI_HANG_SECONDS = PSI_RUN_TIMEOUT + 1.0


def serve_psi(keys: Path) -> None:
    """Server role: a PSI host running one session after another on one endpoint."""
    import faulthandler

    from fedrec.psi.group import Engine
    from fedrec.psi.ids import encode_ids
    from fedrec.psi.protocol import run_psi
    from fedrec.transport.errors import TransportError

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a stuck run waits (fuzz_psi asks)
    ch = _channel_listen(keys, "host", ["guest"], _transport_config())
    print(f"endpoint {ch.endpoint}", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (ch.close(), os._exit(0)))
    engine = Engine(1)
    ids = encode_ids(PSI_HOST_IDS)
    while True:
        t0 = time.perf_counter()
        print(json.dumps({"event": "start", "at": time.time()}), flush=True)  # a run never ended is a hang
        try:
            r = run_psi(ch, "guest", ids, role="host", chunk_size=64, timeout=PSI_TIMEOUT, engine=engine)
            rec = {"outcome": "ok", "common": r.intersection_size, "run_timeout": r.stats["run_timeout"]}
        except (TransportError, ValueError) as exc:  # PsiPeerError is a TransportError
            rec = {"outcome": "error", "error": type(exc).__name__, "detail": str(exc)[:300]}
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(rec), flush=True)
        if rec.get("error") == "PeerDiedError":
            time.sleep(0.2)


def _psi_semantic(run: bytes) -> list[Any]:
    """Well-formed PSI messages with hostile values; chunks of the attacker's current ``run``, and some
    of another run (which the host skips)."""
    from fedrec.psi.messages import BlindedChunk, Finish, Hello

    pts = np.frombuffer(np.random.default_rng(0).bytes(64 * 32), dtype=np.uint8).reshape(64, 32)
    return [
        BlindedChunk("single", 10**6, pts[:2], run),
        BlindedChunk("single", 0, pts[:1], run),
        BlindedChunk("single", 0, np.zeros((64, 32), np.uint8), run),
        BlindedChunk("double", 0, pts, run),
        BlindedChunk("single", 1, pts, run),
        BlindedChunk("double", 10**9, pts[:3], run),
        BlindedChunk("single", 0, pts, b"\x07" * 16),
        Finish(b"\x00" * 32, b"\x00" * 32, 10**9, b"\x00" * 32),
        Hello("guest", 1 << 40, 64, b"\x01" * 32),
        Hello("host", 10, 64, b"\x01" * 32),
        Hello("guest", 250, 64, b"\x02" * 32, curve="ristretto255"),
        Hello("guest", 250, 64, b"\x02" * 32, curve="x25519", peer_salt=b"\x03" * 32),
    ]


def fuzz_psi(
    keys: Path, n_frames: int, seed: int, legit_timeout: float = 120.0, legit_delay: float = PSI_TIMEOUT + 1
) -> dict[str, Any]:
    """The PSI barrage, then an honest guest that connects and waits ``legit_delay`` s before its run:
    past one host run's timeout, so the Hello of a host run that timed out is queued at the guest (the
    run-binding check: it must pair the host's current run, not that one)."""
    from fedrec.psi.ids import encode_ids
    from fedrec.psi.messages import BlindedChunk, Hello, run_id
    from fedrec.psi.protocol import CHUNK_STEP, HELLO_STEP, run_psi

    proc, endpoint = _spawn(["--serve-psi", str(keys)])
    result: dict[str, Any] = {"endpoint": "PSI host"}
    try:
        ch = _channel_connect(keys, "guest", "host", endpoint, _transport_config())
        atk = Attacker(ch, "host")
        pts = np.frombuffer(np.random.default_rng(1).bytes(64 * 32), dtype=np.uint8).reshape(64, 32)
        run = b"\x00" * 16
        templates = [
            Hello("guest", 250, 64, b"\x03" * 32, curve="x25519"),
            BlindedChunk("single", 0, pts, run),
        ]
        semantic = _psi_semantic(run)
        gen = hostile_frames(
            np.random.default_rng(seed),
            templates,
            ch._session,
            atk.next_seq,
            semantic,
            CHUNK_STEP,
            fixed_step=True,
        )
        salt = b""
        runs_opened = 0

        def answer_hellos() -> None:
            """Complete the handshake of the attacker's current run (echo the host's salt), so that the
            frames that follow reach the chunk phase with this run's id."""
            nonlocal runs_opened
            with ch._cond:
                hellos = [m.msg for m in ch._inbox if isinstance(m.msg, Hello) and m.msg.peer_salt == salt]
            if hellos:
                host_salt = hellos[-1].salt
                ch.send("host", Hello("guest", 250, 64, salt, curve="x25519", peer_salt=host_salt),
                        step=HELLO_STEP)
                atk.sent["hello"] += 1
                tag = run_id(salt, host_salt)
                templates[1] = BlindedChunk("single", 0, pts, tag)
                semantic[:] = _psi_semantic(tag)
                runs_opened += 1

        t0 = time.perf_counter()
        for i in range(n_frames):
            if i % 25 == 0:  # open a run; answer_hellos completes it so that what follows reaches the chunks
                salt = os.urandom(32)
                ch.send("host", Hello("guest", 250, 64, salt, curve="x25519"), step=HELLO_STEP)
                atk.sent["hello"] += 1
            if i % 5 == 4:
                answer_hellos()
            atk.send(*next(gen))
            if (i + 1) % 200 == 0:
                atk.drain()
        seconds = time.perf_counter() - t0
        atk.drain()
        ch.close()
        time.sleep(PSI_TIMEOUT + 1)
        alive_mid = proc.poll() is None
        t1 = time.perf_counter()
        legit_ok, legit_error = True, ""
        try:
            gch = _channel_connect(keys, "guest", "host", endpoint, _transport_config())
            time.sleep(legit_delay)
            # the host may still be working through the flood queued before the attacker's goodbye; until
            # then the guest's connection is the second one and ignored: its Hello is re-sent every 10 s
            r = run_psi(gch, "host", encode_ids(PSI_GUEST_IDS), role="guest", chunk_size=64,
                        timeout=legit_timeout)
            legit_ok = r.intersection_size == 150
            legit_error = "" if legit_ok else f"intersection {r.intersection_size} != 150"
            time.sleep(1.0)  # the host reports its side of the run before it is stopped
            gch.close()
        except Exception as exc:  # noqa: BLE001
            legit_ok, legit_error = False, f"{type(exc).__name__}: {exc}"[:300]
        legit_seconds = time.perf_counter() - t1
    finally:
        stopped_at = time.time()
        lines = [json.loads(x) for x in _output(proc) if x.startswith("{")]
        starts = [x["at"] for x in lines if x.get("event") == "start"]
        running = stopped_at - starts[-1] if len(starts) > sum("outcome" in x for x in lines) else 0.0
        if running > PSI_HANG_SECONDS and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # where the stuck run waits: all threads' stacks (faulthandler)
            time.sleep(1.0)
        alive, out, err = _finish(proc)
    stacks = err[err.find("Thread 0x") :] if "Thread 0x" in err else ""
    sessions = [x for x in (json.loads(y) for y in out if y.startswith("{")) if "outcome" in x]
    errors = [s for s in sessions if s["outcome"] == "error"]
    unnamed = [s for s in errors if "peer 'guest'" not in s["detail"] or "step" not in s["detail"]]
    late = [s for s in sessions if s["seconds"] > PSI_HANG_SECONDS]
    result.update(
        frames=sum(v for k, v in atk.sent.items() if k not in ("not_sent", "hello")),
        by_kind=dict(atk.sent),
        answers=dict(atk.answers),
        seconds=round(seconds, 1),
        frames_per_second=round(n_frames / seconds),
        sessions=len(sessions),
        runs_opened_by_attacker=runs_opened,
        session_errors=dict(Counter(s["error"] for s in errors)),
        errors_not_naming_peer_and_step=len(unnamed),
        # a run beyond its deadlines: ended late, or still running when the host was stopped
        hangs=len(late) + int(running > PSI_HANG_SECONDS),
        session_running_at_end_seconds=round(running, 1),
        longest_run_seconds=max((s["seconds"] for s in sessions), default=0.0),
        stuck_stacks=stacks[-6000:],
        crashes=int(not (alive and alive_mid)) + err.count("Traceback"),
        stderr_tail=err[-3000:] if ("Traceback" in err or proc.returncode not in (0, None, -15)) else "",
        returncode=proc.returncode,
        sessions_tail=sessions[-3:],
        # the host's side of the legitimate run: its last completed session
        legit_host_common=next((s["common"] for s in reversed(sessions) if s["outcome"] == "ok"), None),
        legit_run_ok=legit_ok,
        legit_run_seconds=round(legit_seconds, 1),
        legit_error=legit_error,
    )
    if unnamed:
        result["unnamed_example"] = unnamed[0]["detail"]
    if legit_ok and result["legit_host_common"] != len(set(PSI_HOST_IDS) & set(PSI_GUEST_IDS)):
        result["legit_run_ok"] = False
        result["legit_error"] = f"the host's last session found {result['legit_host_common']} common ids"
    return result


# ----------------------------------------------------------------------------------------------- FedMF
FEDMF_CLIENTS = ["c0", "c1", "c2"]


def _fedmf_setup() -> tuple[Any, dict[str, Any], list[Any]]:
    from fedrec.protocols.fedmf import FedMFConfig
    from fedrec.protocols.fedmf.simulation import synthetic_federation

    ratings, catalogue, _ = synthetic_federation(len(FEDMF_CLIENTS), n_users=30, n_items=20, seed=0)
    cfg = FedMFConfig(backend="plain", masks=False, rounds=4, min_ok=2, n_factors=4, timeout=20)
    return cfg, {n: ratings[k] for n, k in zip(FEDMF_CLIENTS, sorted(ratings), strict=True)}, catalogue


def serve_fedmf(keys: Path, jobs: int) -> None:
    """Server role: the FedMF server running ``jobs`` jobs one after another on one endpoint."""
    from zmq.utils import z85

    from fedrec.crypto.sealed import X25519Keys  # noqa: F401 - CURVE keys double as X25519 keys
    from fedrec.protocols.fedmf import FedMFServer
    from fedrec.transport.keys import load_public_key

    cfg, _, catalogue = _fedmf_setup()
    ch = _channel_listen(keys, "server", FEDMF_CLIENTS, _transport_config())
    print(f"endpoint {ch.endpoint}", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (ch.close(), os._exit(0)))
    pks = {n: z85.decode(load_public_key(keys / f"{n}.key")) for n in FEDMF_CLIENTS}
    for job in range(jobs):
        deadline = time.monotonic() + 120
        while not all(ch.alive(n) for n in FEDMF_CLIENTS) and time.monotonic() < deadline:
            time.sleep(0.1)  # every client (back) on the endpoint
        server = FedMFServer.over_channel(ch, pks, cfg, catalogue, run_id=f"job{job}")
        t0 = time.perf_counter()
        try:
            server.run()
            rec = {
                "job": job,
                "outcome": "ok",
                "rounds": server.rounds_done,
                "in_job": sorted(server.alive),
                "excluded": sorted(server.excluded),
            }
        except Exception as exc:  # noqa: BLE001 - reported, then the next job
            rec = {"job": job, "outcome": "error", "error": f"{type(exc).__name__}: {exc}"[:400]}
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(rec), flush=True)
    ch.close()


def _honest_client(
    keys: Path, name: str, endpoint: str, ratings: Any, catalogue: list[Any], cfg: Any
) -> None:
    from zmq.utils import z85

    from fedrec.crypto.sealed import X25519Keys
    from fedrec.protocols.fedmf import FedMFClient
    from fedrec.protocols.fedmf.client import client_data
    from fedrec.transport.keys import load_keypair

    kp = load_keypair(keys / f"{name}.key_secret")
    xk = X25519Keys(z85.decode(kp.public), z85.decode(kp.secret))
    ch = _channel_connect(keys, name, "server", endpoint, _transport_config())
    data, users, cat = client_data(ratings, catalogue)
    try:
        FedMFClient(ch, data, cfg, name=name, keys=xk, user_raw=users, catalogue=cat).serve()
    finally:
        ch.close()


def _fedmf_semantic() -> list[Any]:
    from fedrec.protocols.fedmf.messages import KeyAck, MaskAdvert, SealedShares, UnmaskShares, Upload
    from fedrec.protocols.messages import Ack, Rejected

    return [
        Upload("train", 10**6, 0, b"\x00" * 64),
        Upload("stats", 0, 900, b"garbage"),
        Upload("train", 0, 0, b"\x01" * 10_000),
        KeyAck("0" * 64),
        MaskAdvert(b"\x00" * 32),
        SealedShares([b"x"] * 5),
        UnmaskShares([b"a"], [b"b"]),
        Ack("x"),
        Rejected("f", "d"),
    ]


def fuzz_fedmf(keys: Path, n_frames: int, seed: int) -> dict[str, Any]:
    from fedrec.protocols.messages import Ack

    cfg, ratings, catalogue = _fedmf_setup()
    proc, endpoint = _spawn(["--serve-fedmf", str(keys), "2"])
    result: dict[str, Any] = {"endpoint": "FedMF server"}
    try:
        honest = [
            threading.Thread(
                target=_honest_client, args=(keys, n, endpoint, ratings[n], catalogue, cfg), daemon=True
            )
            for n in FEDMF_CLIENTS[:2]
        ]
        for t in honest:
            t.start()
        ch = _channel_connect(keys, "c2", "server", endpoint, _transport_config())
        atk = Attacker(ch, "server")
        templates = [Ack("x"), *_fedmf_semantic()]
        gen = hostile_frames(
            np.random.default_rng(seed), templates, ch._session, atk.next_seq, _fedmf_semantic(), "fedmf"
        )
        t0 = time.perf_counter()
        for i in range(n_frames):
            atk.send(*next(gen))
            if (i + 1) % 200 == 0:
                atk.drain()
        seconds = time.perf_counter() - t0
        for t in honest:
            t.join(120)
        atk.drain()
        ch.close()
        # the legitimate run: job 2, every client honest (c2 now by its real owner)
        t1 = time.perf_counter()
        honest = [
            threading.Thread(
                target=_honest_client, args=(keys, n, endpoint, ratings[n], catalogue, cfg), daemon=True
            )
            for n in FEDMF_CLIENTS
        ]
        for t in honest:
            t.start()
        for t in honest:
            t.join(180)
        legit_seconds = time.perf_counter() - t1
        proc.wait(timeout=60)
    finally:
        alive, out, err = _finish(proc)
    jobs = [json.loads(x) for x in out if x.startswith("{")]
    first = jobs[0] if jobs else {}
    second = jobs[1] if len(jobs) > 1 else {}
    result.update(
        frames=sum(v for k, v in atk.sent.items() if k != "not_sent"),
        by_kind=dict(atk.sent),
        answers=dict(atk.answers),
        seconds=round(seconds, 1),
        frames_per_second=round(n_frames / seconds),
        attacked_job=first,
        hangs=0 if first else 1,
        crashes=int(proc.returncode not in (0, None)) + err.count("Traceback"),
        legit_run_ok=second.get("outcome") == "ok"
        and second.get("rounds") == cfg.rounds
        and len(second.get("in_job", [])) == 3,
        legit_run_seconds=round(legit_seconds, 1),
        legit_job=second,
    )
    return result


# ----------------------------------------------------------------------------------------------- HTTP
def _http_request(port: int, path: str, method: str = "GET", timeout: float = 15.0) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _raw_request(port: int, data: bytes, timeout: float = 15.0) -> int:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        try:
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except ConnectionResetError:
            return 0
        if not buf.startswith(b"HTTP/"):
            return 0  # closed without an answer
        return int(buf.split()[1])


def _slow_request(port: int, rng: np.random.Generator, timeout: float = 20.0) -> int:
    """A client that trickles its request head (slowloris): the server must answer 408 or close."""
    head = b"GET /recommend?user=u1&k=5 HTTP/1.1\r\nHost: x\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            for b in head:
                s.sendall(bytes([b]))
                time.sleep(float(rng.uniform(0.05, 0.3)))
            buf = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            return 0
        return int(buf.split()[1]) if buf.startswith(b"HTTP/") else 0


def fuzz_http(n_requests: int, seed: int) -> dict[str, Any]:
    from serving.artifacts import random_bundle

    sys.path.insert(0, str(REPO / "benchmarks"))
    from serving_load import MALFORMED, RAW_GARBAGE, start_server

    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    hangs = 0
    with tempfile.TemporaryDirectory() as tmp:
        random_bundle(500, 200, 8, seed=seed).save(Path(tmp) / "bundle")
        proc, port = start_server(Path(tmp) / "bundle")
        t0 = time.perf_counter()
        try:

            def one(i: int) -> tuple[str, int, float]:
                r = np.random.default_rng([seed, i])
                kind = ["valid", "malformed", "junk_query", "raw", "method", "slow"][
                    int(r.choice(6, p=[0.2, 0.25, 0.25, 0.2, 0.09, 0.01]))
                ]
                ts = time.perf_counter()
                try:
                    if kind == "valid":
                        st = _http_request(
                            port, f"/recommend?user=u{int(r.integers(0, 600))}&k={int(r.integers(1, 50))}"
                        )
                    elif kind == "malformed":
                        st = _http_request(port, MALFORMED[int(r.integers(len(MALFORMED)))])
                    elif kind == "junk_query":
                        q = "".join(chr(int(c)) for c in r.integers(33, 127, int(r.integers(1, 200))))
                        q = q.replace("#", "%23").replace(" ", "%20")
                        st = _http_request(
                            port, "/recommend?" + q.replace("%", "%" if r.random() < 0.5 else "%%")
                        )
                    elif kind == "raw":
                        data = (
                            RAW_GARBAGE[int(r.integers(len(RAW_GARBAGE)))]
                            if r.random() < 0.5
                            else r.bytes(int(r.integers(1, 3000))) + b"\r\n\r\n"
                        )
                        st = _raw_request(port, data)
                    elif kind == "method":
                        st = _http_request(
                            port,
                            "/recommend?user=u1",
                            method=["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"][int(r.integers(6))],
                        )
                    else:
                        st = _slow_request(port, r)
                except (OSError, http.client.HTTPException):
                    st = -1
                return kind, st, time.perf_counter() - ts

            with ThreadPoolExecutor(max_workers=32) as pool:  # concurrent connections
                for kind, st, dt in pool.map(one, range(n_requests)):
                    kinds[kind] += 1
                    statuses[str(st)] += 1
                    if dt > 15.0 and kind != "slow":
                        hangs += 1
            seconds = time.perf_counter() - t0
            legit = [_http_request(port, f"/recommend?user=u{i}&k=10") for i in range(100)]
            alive = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    five = sum(v for k, v in statuses.items() if k.startswith("5") and k != "503")
    return {
        "endpoint": "fedrec serve (HTTP)",
        "requests": n_requests,
        "by_kind": dict(kinds),
        "statuses": dict(statuses),
        "http_5xx": five,
        "http_503_connection_limit": statuses.get("503", 0),
        "hangs": hangs,
        "crashes": int(not alive),
        "seconds": round(seconds, 1),
        "legit_run_ok": all(s == 200 for s in legit),
        "legit_statuses": dict(Counter(legit)),
    }


# ----------------------------------------------------------------------------------------------- report
def write_report(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    from fedrec.artifacts import atomic_file

    with atomic_file(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    rows = [
        "| endpoint | hostile inputs | answered as | crashes | hangs | 5xx | legit run after |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in result["endpoints"]:
        n = r.get("frames", r.get("requests", 0))
        how = r.get("answers") or r.get("session_errors") or r.get("statuses") or {}
        if "session_errors" in r:
            how = {**r.get("answers", {}), **{f"session {k}": v for k, v in r["session_errors"].items()}}
        shown = ", ".join(f"{k} {v}" for k, v in sorted(how.items(), key=lambda kv: -kv[1])[:5])
        rows.append(
            f"| {r['endpoint']} | {n:,} | {shown} | {r['crashes']} | {r['hangs']} | "
            f"{r.get('http_5xx', '-')} | {'ok' if r['legit_run_ok'] else 'FAILED'} "
            f"({r.get('legit_run_seconds', '-')} s) |"
        )
    quick = " --quick" if result["quick"] else ""
    text = (
        f"# Hostile fuzzing of the live endpoints (`benchmarks/fuzz.py{quick}`)\n\n"
        f"{result['when']}, commit {result['commit']}, seed {result['seed']}; each endpoint in its own "
        "process "
        "over ZeroMQ + CURVE (the attacker holds a registered key), HTTP on the loopback.\n\n"
        + "\n".join(rows)
        + "\n\nFrame kinds per endpoint (garbage, header, unknown, field, frame, envelope, "
        "semantic) are in fuzz.json (`by_kind`). 'answers' counts what the attacker got back: "
        "transport error replies (malformed/replay), protocol `Rejected` naming the field; frames "
        "dropped without an answer (replays, a second connection) are not answered by design. PSI "
        "sessions a hostile frame ends are counted by error class; every such error names the peer "
        f"and the step ({sum(r.get('errors_not_naming_peer_and_step', 0) for r in result['endpoints'])} "
        "do not). A hang is a liveness probe beyond its deadline, or a PSI host run longer than "
        f"{PSI_HANG_SECONDS:.1f} s, its whole-run deadline (run_timeout {PSI_RUN_TIMEOUT:.1f} s: "
        f"3 x its {PSI_TIMEOUT:g} s timeout + 2 ms per id) + 1 s (ended late, or still running when the "
        "host was stopped). "
        "HTTP 503 is the connection limit answering in JSON (not an error of the server).\n"
    )
    with atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(text, encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = [r["endpoint"] for r in result["endpoints"]]
        counts = [r.get("frames", r.get("requests", 0)) for r in result["endpoints"]]
        bad = [r["crashes"] + r["hangs"] + r.get("http_5xx", 0) for r in result["endpoints"]]
        ax.barh(names, counts, color="#4c72b0", label="hostile inputs")
        ax.barh(names, bad, color="#c44e52", label="crashes + hangs + 5xx")
        for y, (c, b) in enumerate(zip(counts, bad, strict=True)):
            ax.text(c, y, f" {c:,} / {b}", va="center", fontsize=8)
        ax.set_xlabel("count")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("fedrec live endpoints under a hostile authenticated peer")
        fig.tight_layout()
        with atomic_file(out.with_suffix(".png")) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
    except ImportError:
        log.warning("matplotlib missing: no PNG")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1,500 frames per endpoint and 1,000 HTTP requests")
    p.add_argument("--frames", type=int, default=None, help="hostile frames per endpoint (default 25,000)")
    p.add_argument("--requests", type=int, default=None, help="hostile HTTP requests (default 10,000)")
    p.add_argument(
        "--only",
        nargs="*",
        default=["host", "psi", "fedmf", "http"],
        choices=["host", "psi", "fedmf", "http"],
        help="endpoints to fuzz (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the hostile streams (default 0)")
    p.add_argument("--out", type=Path, default=RESULTS / "fuzz", help="output stem (default: results/fuzz)")
    p.add_argument("--serve-host", metavar="KEYS", help=argparse.SUPPRESS)
    p.add_argument("--serve-psi", metavar="KEYS", help=argparse.SUPPRESS)
    p.add_argument("--serve-fedmf", nargs=2, metavar=("KEYS", "JOBS"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if (args.serve_host or args.serve_psi or args.serve_fedmf) else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.serve_host or args.serve_psi or args.serve_fedmf:
        logging.getLogger().setLevel(logging.CRITICAL)  # the hostile traffic is logged by design; quiet here
        if args.serve_host:
            serve_host(Path(args.serve_host))
        elif args.serve_psi:
            serve_psi(Path(args.serve_psi))
        else:
            serve_fedmf(Path(args.serve_fedmf[0]), int(args.serve_fedmf[1]))
        return 0
    logging.getLogger("fedrec").setLevel(logging.CRITICAL)
    frames = args.frames or (1500 if args.quick else 25_000)
    requests = args.requests or (1000 if args.quick else 10_000)
    endpoints = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        make_keys(keys, ["host", "guest", "server", *FEDMF_CLIENTS])
        for name in args.only:
            t0 = time.perf_counter()
            log.info("fuzzing %s ...", name)
            if name == "host":
                r = fuzz_host(keys, frames, args.seed, probe_every=250)
            elif name == "psi":
                r = fuzz_psi(keys, frames, args.seed)
            elif name == "fedmf":
                r = fuzz_fedmf(keys, frames, args.seed)
            else:
                r = fuzz_http(requests, args.seed)
            r["wall_seconds"] = round(time.perf_counter() - t0, 1)
            log.info("%s: %s", name, json.dumps({k: v for k, v in r.items() if k not in ("by_kind",)})[:600])
            endpoints.append(r)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "quick": args.quick,
        "seed": args.seed,
        "commit": commit,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "frames_per_endpoint": frames,
        "http_requests": requests,
        "endpoints": endpoints,
        "bar_met": all(
            r["crashes"] == 0 and r["hangs"] == 0 and r.get("http_5xx", 0) == 0 and r["legit_run_ok"]
            for r in endpoints
        ),
    }
    write_report(result, args.out)
    print((args.out.with_suffix(".md")).read_text(encoding="utf-8"))
    return 0 if result["bar_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
