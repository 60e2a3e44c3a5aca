"""Private set intersection of two parties' id files: each party learns the common ids, in the same order.

One party listens, the other connects; the two run the ECDH-PSI protocol of :mod:`fedrec.psi.protocol`
over the ZeroMQ transport (CURVE-encrypted and authenticated by default). Each writes ``--out`` with the
columns ``aligned_index, id, row_index``: row ``k`` of both files is the same id, and ``row_index`` is the
0-based data row of that id in the party's own input. Neither party learns anything about the other's ids
outside the intersection, except how many unique ids it has.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedrec.transport import ZmqChannel

DEFAULT_CURVE = "x25519"  # fedrec.psi.group.DEFAULT_CURVE, repeated so --help does not load numpy

log = logging.getLogger(__name__)

EPILOG = """example (two machines; keys made once with `fedrec keys`):
  host$  fedrec psi --role host  --ids users.parquet --column user_id --out aligned.csv \\
                    --listen tcp://0.0.0.0:7700 --key keys/host.key_secret --peer-key keys/guest.key
  guest$ fedrec psi --role guest --ids customers.csv --column customer --out aligned.csv \\
                    --connect tcp://host.example:7700 --key keys/guest.key_secret --peer-key keys/host.key

Ids are strings (compared exactly, UTF-8) or integers (compared as their base-10 text); duplicate ids
are dropped with a warning, keeping the first row. Exit status: 0 done, 1 error (named on stderr).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=("guest", "host"),
                        help="this party's role; the peer must have the other one")
    parser.add_argument("--ids", required=True, metavar="FILE",
                        help="input file with the id column: .csv, .csv.gz, .tsv or .parquet")
    parser.add_argument("--column", required=True, metavar="NAME", help="name of the id column in --ids")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="aligned output (aligned_index, id, row_index); .csv or .parquet")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="ADDR",
                       help="bind here and wait for the peer, e.g. tcp://0.0.0.0:7700")
    where.add_argument("--connect", metavar="ADDR",
                       help="connect to the listening peer, e.g. tcp://10.0.0.5:7700")
    parser.add_argument("--key", metavar="FILE",
                        help="this party's secret key file NAME.key_secret (from `fedrec keys`)")
    parser.add_argument("--peer-key", metavar="FILE", help="the peer's public key file NAME.key")
    parser.add_argument("--name", help="this party's name on the channel (default: the role)")
    parser.add_argument("--peer-name", help="the peer's name on the channel (default: the other role)")
    parser.add_argument("--chunk-size", type=int, default=16384, metavar="N",
                        help="ids per message, at most 65536 (default: 16384)")
    parser.add_argument("--curve", choices=("ristretto255", "x25519"), default=None,
                        help="group for the blinding; both parties must use the same (default: "
                             f"{DEFAULT_CURVE}; x25519 is about twice as fast as ristretto255)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads for the scalar multiplications (default: all cores)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="give up when the peer is silent this long (default: 300)")
    parser.add_argument("--insecure", action="store_true",
                        help="no CURVE encryption or authentication (debugging only; warns)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _endpoint(addr: str) -> str:
    return addr if "://" in addr else f"tcp://{addr}"


def _open_channel(args: argparse.Namespace, name: str, peer: str) -> ZmqChannel:
    from fedrec.transport import KeyPair, TransportConfig, ZmqChannel, load_keypair, load_public_key

    config = TransportConfig(insecure=args.insecure, recv_timeout=args.timeout)
    keys: KeyPair | None = None
    peer_key: str | None = None
    if not args.insecure:
        if not args.key or not args.peer_key:
            raise ValueError("--key and --peer-key are required (or --insecure for debugging)")
        keys = load_keypair(args.key)
        peer_key = load_public_key(args.peer_key)
    if args.listen:
        return ZmqChannel.listen(name, keys, {peer: peer_key or ""} if peer_key else [peer],
                                 endpoint=_endpoint(args.listen), config=config)
    return ZmqChannel.connect(name, keys, peer, peer_key, _endpoint(args.connect), config=config)


def run(args: argparse.Namespace) -> int:
    from fedrec.psi.ids import IdError, read_id_column, write_aligned
    from fedrec.psi.protocol import run_psi
    from fedrec.transport import TransportError

    name = args.name or args.role
    peer = args.peer_name or ("host" if args.role == "guest" else "guest")
    try:
        ids = read_id_column(args.ids, args.column)
        channel = _open_channel(args, name, peer)
        try:
            result = run_psi(channel, peer, ids, role=args.role, chunk_size=args.chunk_size,
                             workers=args.workers, timeout=args.timeout, progress=not args.no_progress,
                             curve=args.curve)
        finally:
            channel.close()
        write_aligned(args.out, result.ids, result.rows)
    except (IdError, FileNotFoundError, ValueError, TransportError, OSError) as err:
        print(f"fedrec psi ({args.role}): {err}", file=sys.stderr)
        return 1
    print(f"{args.role}: {result.intersection_size} common ids (mine: {result.n_unique} unique of "
          f"{result.n_input} rows, peer: {result.peer_size}) in {result.seconds:.1f} s -> {args.out}")
    return 0
