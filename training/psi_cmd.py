"""Private set intersection of two parties' id files: each party learns the common ids, in the same order.

One party listens, the other connects; the two run the ECDH-PSI protocol of :mod:`fedrec.psi.protocol`
over the ZeroMQ transport (CURVE-encrypted and authenticated by default), opened by
:func:`fedrec.transport.open_channel` like every command's. The network flags are the ``[network]`` /
``[peers.NAME]`` keys of a ``fedrec train`` config (:mod:`training.config`). Each party writes ``--out``
(atomically) with the columns ``aligned_index, id, row_index``: row ``k`` of both files is the same id,
and ``row_index`` is the 0-based data row of that id in the party's own input. Neither party learns
anything about the other's ids outside the intersection, except how many unique ids it has.

``--buckets N`` (both parties the same ``N``; :mod:`fedrec.psi.buckets`): the ids are cut into ``N``
buckets by a hash salted by both parties, and one PSI session runs per bucket pair, so a party holds one
bucket's blinded values at a time instead of the whole set's (100M ids: 6.4 GB at once). Same output.
Every bucket is padded with dummy ids to a size that depends only on the set size and ``N``, so the
bucket sizes reveal nothing more than one session (docs/SECURITY.md, "PSI"; docs/SCALE.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CURVE = "x25519"  # fedrec.psi.group.DEFAULT_CURVE, repeated so --help does not load numpy

log = logging.getLogger(__name__)

#: the spellings of `fedrec psi` before its network flags took the config's words; still accepted
ALIASES = {"--peer-endpoint": "--connect", "--peer-public-key": "--peer-key", "--recv-timeout": "--timeout",
           "--peer": "--peer-name"}

EPILOG = """example (two machines; keys made once with `fedrec keys`):
  host$  fedrec psi --role host  --ids users.parquet --column user_id --out aligned.csv \\
                    --listen tcp://0.0.0.0:7700 --key keys/host.key_secret --peer-public-key keys/guest.key
  guest$ fedrec psi --role guest --ids customers.csv --column customer --out aligned.csv \\
                    --peer-endpoint tcp://host.example:7700 --key keys/guest.key_secret \\
                    --peer-public-key keys/host.key

The network flags are the keys of a `fedrec train` config: [network] listen/key/insecure/
connect_timeout/recv_timeout/heartbeat_timeout as --listen/--key/--insecure/--connect-timeout/...,
and the peer's [peers.NAME] endpoint/public_key as --peer-endpoint/--peer-public-key (--peer NAME).
The older --connect, --peer-key, --timeout and --peer-name are still accepted.

Large sets: --buckets N on BOTH parties (the same N; a different N stops both, naming the two) runs
one session per bucket pair, each party's memory one bucket's; e.g. 100M ids: --buckets 100.

Deadlines: --recv-timeout bounds every wait for the peer; --run-timeout the whole run (default: 3 x
recv_timeout + 2 ms per id of both sets; with --buckets, each bucket's session). The listening party
prints every thread's stack to stderr on SIGUSR1 (kill -USR1 PID: where a run waits) and carries on.

Ids are strings (compared exactly, UTF-8) or integers (compared as their base-10 text); duplicate ids
are dropped with a warning, keeping the first row. Exit status: 0 done, 1 error (named on stderr).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import add_network_arguments

    parser.add_argument("--role", required=True, choices=("guest", "host"),
                        help="this party's role; the peer must have the other one")
    parser.add_argument("--ids", required=True, metavar="FILE",
                        help="input file with the id column: .csv, .csv.gz, .tsv or .parquet")
    parser.add_argument("--column", required=True, metavar="NAME", help="name of the id column in --ids")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="aligned output (aligned_index, id, row_index); .csv or .parquet")
    parser.add_argument("--name", help="this party's name on the channel (default: the role)")
    # the keys of [network] and [peers.NAME] of a `fedrec train` config, as flags (older spellings kept)
    add_network_arguments(parser, aliases=ALIASES)
    parser.add_argument("--chunk-size", type=int, default=16384, metavar="N",
                        help="ids per message, at most 65536 (default: 16384)")
    parser.add_argument("--curve", choices=("ristretto255", "x25519"), default=None,
                        help="group for the blinding; both parties must use the same (default: "
                             f"{DEFAULT_CURVE}; x25519 is about twice as fast as ristretto255)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads for the scalar multiplications (default: all cores)")
    parser.add_argument("--run-timeout", type=float, default=None, metavar="SECONDS",
                        help="bound on the whole PSI run, whatever the peer does (default: 3 x "
                             "recv_timeout + 2 ms per id of both sets)")
    parser.add_argument("--buckets", type=int, default=0, metavar="N",
                        help="bucketed PSI with N buckets (both parties must pass the same N): one session "
                             "per bucket pair, memory of one bucket; default: one session")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from fedrec.artifacts import atomic_file
    from fedrec.data.tables import check_output_file, replacing_note
    from fedrec.psi.ids import IdError, read_id_column, write_aligned
    from fedrec.psi.messages import MESSAGES
    from fedrec.psi.protocol import run_psi
    from fedrec.transport import PeerAddress, TransportError, open_channel
    from training.config import ConfigError, network_from_args, transport_config

    name = args.name or args.role
    peer = args.peer or ("host" if args.role == "guest" else "guest")
    try:
        net, peers = network_from_args(args, name, peer)
        # everything local first: the ids, and whether --out can be written (before the network opens)
        ids = read_id_column(args.ids, args.column)
        check_output_file(args.out, suffixes=(".csv", ".parquet"))
        note = replacing_note(args.out)
        if note:
            print(note, file=sys.stderr)
        if args.run_timeout is not None and not args.run_timeout > 0:
            raise ValueError(f"--run-timeout must be positive, got {args.run_timeout}")
        from fedrec.psi.messages import MAX_BUCKETS

        if not 0 <= args.buckets <= MAX_BUCKETS:
            raise ValueError(f"--buckets must be in 1..{MAX_BUCKETS}, got {args.buckets}")
        if net.listen is not None:
            _stacks_on_sigusr1()
        channel = open_channel(name, {p: PeerAddress(c.endpoint, c.public_key) for p, c in peers.items()},
                               key=net.key, listen=net.listen, config=transport_config(net),
                               messages=MESSAGES, connect_timeout=net.connect_timeout)
        reason = "closed"
        try:
            result: Any
            if args.buckets:
                from fedrec.psi.buckets import run_bucketed_psi

                result = run_bucketed_psi(channel, peer, ids, role=args.role, n_buckets=args.buckets,
                                          chunk_size=args.chunk_size, workers=args.workers,
                                          timeout=net.recv_timeout, curve=args.curve,
                                          run_timeout=args.run_timeout)
            else:
                result = run_psi(channel, peer, ids, role=args.role, chunk_size=args.chunk_size,
                                 workers=args.workers, timeout=net.recv_timeout, curve=args.curve,
                                 progress=not args.no_progress, run_timeout=args.run_timeout)
            with atomic_file(args.out) as tmp:
                _commit(channel, peer, net.recv_timeout, tmp,
                        lambda: write_aligned(tmp, result.ids, result.rows))
        except BaseException as err:  # the peer hears why (its error then names this party's reason)
            reason = f"fedrec psi ({args.role}) stopped: {err}"[:1000]
            raise
        finally:
            channel.close(reason)
    except (ConfigError, IdError, FileNotFoundError, ValueError, TransportError, OSError) as err:
        print(f"fedrec psi ({args.role}): {err}", file=sys.stderr)
        return 1
    buckets = f" in {result.n_buckets} buckets of {result.bucket_size} (padded)" if args.buckets else ""
    print(f"{args.role}: {result.intersection_size} common ids (mine: {result.n_unique} unique of "
          f"{result.n_input} rows, peer: {result.peer_size}){buckets} in {result.seconds:.1f} s -> "
          f"{args.out}")
    return 0


COMMIT_STEP = "psi/commit"


def _stacks_on_sigusr1() -> None:
    """The serving (listening) party: SIGUSR1 prints every thread's stack to stderr and the run carries
    on, to see where a slow run waits. Cheap: one C-level signal handler (~70 us to install), nothing runs
    until the signal. It replaces SIGUSR1's default action (terminate). Skipped where there is no SIGUSR1
    (Windows) or stderr has no file descriptor (embedded, captured)."""
    import faulthandler
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError, RuntimeError) as err:
        log.debug("fedrec psi: no stack dump on SIGUSR1 (%s)", err)


def _commit(channel: Any, peer: str, timeout: float, tmp: Path, write: Callable[[], None]) -> None:
    """Write (and fsync) this party's output into its temporary file, tell the peer, hear whether the
    peer's is written too; raise unless both are, so the caller's atomic file is put in place only
    when both parties succeed (both exit 0, or both exit 1 and neither leaves an output)."""
    import os

    from fedrec.psi import PsiPeerError
    from fedrec.psi.messages import Committed

    try:
        write()
        with open(tmp, "rb") as f:  # on the disk now: a full disk fails here, before the peer is told
            os.fsync(f.fileno())
        ok, detail = True, ""
    except OSError as err:
        ok, detail, failure = False, f"{type(err).__name__}: {err}", err
    channel.send(peer, Committed(ok, detail), step=COMMIT_STEP)
    theirs = channel.recv(peer, Committed, step=COMMIT_STEP, timeout=timeout)
    if not ok:
        raise failure
    if not theirs.ok:
        raise PsiPeerError(peer, COMMIT_STEP, f"the peer could not write its output ({theirs.detail}); "
                                              "this party's output is not written either")
