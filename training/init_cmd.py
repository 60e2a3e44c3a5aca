"""Set up one party of a two-machine vertical FM: its CURVE key pair, its config, and what to send whom.

Run once per party, each on its own machine, in the folder the party will work in (``--dir``)::

    DIR/keys/NAME.key          public key: send it to the other party (it is not secret)
    DIR/keys/NAME.key_secret   secret key (mode 0600): never leaves this machine
    DIR/NAME.toml              the config of ``fedrec train --config DIR/NAME.toml``
    DIR/keys/PEER.key          <- put the other party's public key file here (the config names it)

The guest (the bank, ratings and the only CKKS key) listens; the host (the partner, user features)
connects to the guest's address, so only the guest needs an open inbound port. Both configs get the
same ``[model]`` table from the same flags: the agreed fields must be equal on both sides. Existing
key files are kept (a party's key should not change under its peer); an existing config is refused
unless ``--force``. The full walk-through, with the campaign at the end: docs/DEPLOY.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples (docs/DEPLOY.md is the whole guide):
  bank$     fedrec init --role guest --dir ~/fedrec-guest --listen tcp://0.0.0.0:7710 \\
                --interactions ~/data/ratings.csv
  partner$  fedrec init --role host --dir ~/fedrec-host --peer-endpoint tcp://bank.example:7710 \\
                --user-features ~/data/customers.parquet
  # exchange the public keys (bank: keys/guest.key -> partner's keys/guest.key; partner:
  # keys/host.key -> bank's keys/host.key), compare the fingerprints printed here by phone, then:
  bank$     fedrec train --config ~/fedrec-guest/guest.toml
  partner$  fedrec train --config ~/fedrec-host/host.toml

Exit status: 0 written, 1 error (e.g. the config exists: --force replaces it; keys are always kept).
"""

PEER = {"guest": "host", "host": "guest"}
DEFAULT_PORT = 7710


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=("guest", "host"),
                   help="guest: the bank (ratings, the only CKKS key, listens); host: the partner (user "
                        "features, connects to the guest)")
    p.add_argument("--dir", type=Path, default=Path("."), metavar="DIR",
                   help="the party's working folder; keys/ and NAME.toml are written here (default: .)")
    p.add_argument("--name", default=None, help="this party's name on the channel (default: the role)")
    p.add_argument("--peer-name", default=None, help="the other party's name (default: the other role)")
    p.add_argument("--listen", default=f"tcp://0.0.0.0:{DEFAULT_PORT}", metavar="ADDR",
                   help=f"guest: the address to listen on (default tcp://0.0.0.0:{DEFAULT_PORT}: every "
                        "interface; open this port to the host's machine only)")
    p.add_argument("--peer-endpoint", metavar="ADDR",
                   help="host (required): the guest's address, e.g. tcp://bank.example:7710")
    p.add_argument("--interactions", type=Path, metavar="FILE",
                   help="guest: the ratings file (user_id, item_id, rating, timestamp; docs/DATA.md)")
    p.add_argument("--item-features", type=Path, metavar="FILE", help="guest, optional: item side table")
    p.add_argument("--user-features", type=Path, metavar="FILE",
                   help="host: the user side table (user_id + feature columns; docs/DATA.md)")
    p.add_argument("--example-data", action="store_true",
                   help="also write this party's slice of the built-in synthetic data into DIR/data/ and use "
                        "it (both parties get consistent slices: a rehearsal before the real files)")
    p.add_argument("--id-column", default="user_id", help="the user id column of the data files (user_id)")
    p.add_argument("--backend", choices=("ckks", "paillier", "plain"), default="ckks",
                   help="crypto backend, equal on both sides (default ckks; paillier is ~100x slower; plain "
                        "encrypts nothing: tests only)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs, equal on both sides (6)")
    p.add_argument("--factors", type=int, default=8, help="FM factors, equal on both sides (8)")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="the run's output folder, relative to --dir (default: out)")
    p.add_argument("--force", action="store_true", help="replace an existing NAME.toml (keys are kept)")


def fingerprint(public_key_file: Path) -> str:
    """The fingerprint of a public key file to compare over the phone (the one ``fedrec keys`` prints and
    the transport logs: :func:`fedrec.transport.keys.fingerprint`)."""
    from fedrec.transport.keys import fingerprint as key_fingerprint

    return key_fingerprint(public_key_file)


def _rel(path: Path | None, base: Path, placeholder: str) -> str:
    """A TOML string of ``path`` (relative to ``base`` when inside it), or of ``placeholder``."""
    if path is None:
        return json.dumps(placeholder)  # a JSON string is a valid TOML basic string
    path = path.expanduser().resolve()
    try:
        return json.dumps(str(path.relative_to(base)))
    except ValueError:
        return json.dumps(str(path))


EXAMPLE_USERS, EXAMPLE_ITEMS, EXAMPLE_SEED = 600, 120, 0
EXAMPLE_FILES = {"guest": "data/interactions.csv", "host": "data/users.csv"}


def write_example_data(role: str, base: Path) -> Path:
    """This party's slice of the seeded synthetic data (the same on every machine): the guest's ratings
    of 90% of the users, the host's features of 90% of them, so PSI finds a real, partial overlap."""
    from fedrec.data import SyntheticConfig, generate, vertical_split, write_table

    ds = generate(SyntheticConfig(seed=EXAMPLE_SEED, n_users=EXAMPLE_USERS, n_items=EXAMPLE_ITEMS)).dataset
    guest, host = vertical_split(ds, host_user_fraction=0.9, n_host_only_users=EXAMPLE_USERS // 10,
                                 seed=EXAMPLE_SEED)
    path = base / EXAMPLE_FILES[role]
    path.parent.mkdir(parents=True, exist_ok=True)
    if role == "guest":
        write_table(guest.interactions, path, index=False)
    else:
        write_table(host.user_features.rename_axis("user_id"), path)
    return path


def config_text(args: argparse.Namespace, base: Path) -> str:
    """The party's TOML (commented, valid as written once the data paths exist)."""
    name, peer = args.name or args.role, args.peer_name or PEER[args.role]
    model: dict[str, Any] = {"backend": args.backend, "n_factors": args.factors, "batch_size": 4096,
                             "lr": 0.02, "epochs": args.epochs, "seed": 0, "timeout": 300.0}
    lines = [f"# {name}: the {args.role} of a two-party vertical FM, written by `fedrec init` "
             "(docs/DEPLOY.md).",
             "# Every key: docs/CONFIG.md. Relative paths are relative to this file's folder.", "",
             "[job]", 'protocol = "hetero_fm"', "", "[party]", f"role = {json.dumps(args.role)}",
             f"name = {json.dumps(name)}", "",
             "[network]"]
    if args.role == "guest":
        lines.append(f"listen = {json.dumps(args.listen)}            # the host connects here")
    lines += [f"key = {json.dumps(f'keys/{name}.key_secret')}        # this party's key pair (never copy it)",
              "connect_timeout = 600.0                # seconds to wait for the other party to show up",
              "recv_timeout = 300.0", "heartbeat_timeout = 30.0", "", f"[peers.{json.dumps(peer)}]"]
    if args.role == "host":
        lines.append(f"endpoint = {json.dumps(args.peer_endpoint)}    # the guest's address")
    lines += [f"public_key = {json.dumps(f'keys/{peer}.key')}          # the {peer}'s public key file: put "
              "it there", "",
              "[data]"]
    if args.role == "guest":
        lines.append(f"interactions = {_rel(args.interactions, base, EXAMPLE_FILES['guest'])}"
                     "   # user_id, item_id, rating, timestamp")
        if args.item_features is not None:
            lines.append(f"item_features = {_rel(args.item_features, base, '')}")
    else:
        lines.append(f"user_features = {_rel(args.user_features, base, EXAMPLE_FILES['host'])}"
                     "   # user_id + feature columns")
    lines += [f"id_column = {json.dumps(args.id_column)}", "",
              "[psi]", "enabled = true          # align the user ids (ECDH PSI) before training", "",
              "[model]                 # HeteroFMConfig: the agreed fields must equal the other party's"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in model.items()]
    if args.role == "guest":
        lines += ["# label DP is on by default (epsilon 2 for the whole training); another budget:",
                  "# dp_guest_epsilon = 8.0"]
    lines += ["", "[output]", f'dir = "{args.out}"', "progress = true", ""]
    return "\n".join(lines)


def _instructions(args: argparse.Namespace, base: Path, cfg: Path, fp: str) -> str:
    name, peer = args.name or args.role, args.peer_name or PEER[args.role]
    out = base / args.out
    lines = [f"{args.role} {name!r} set up in {base}",
             f"  key pair:  {base / 'keys' / (name + '.key')} (public), "
             f"{base / 'keys' / (name + '.key_secret')} (secret, 0600: never copy it)",
             f"  config:    {cfg}",
             f"  fingerprint of your public key: {fp}",
             "next:",
             f"  1. send {base / 'keys' / (name + '.key')} to the {peer} (any channel: it is public); "
             "read them the fingerprint above over the phone",
             f"  2. put the {peer}'s public key file at {base / 'keys' / (peer + '.key')} and compare its "
             f"fingerprint (`fedrec info {base / 'keys' / (peer + '.key')}`)"]
    if args.role == "guest":
        addr = args.listen.replace("0.0.0.0", "THIS-MACHINE")  # noqa: S104 - the wildcard is only replaced
        lines += [f"  3. tell the host your address: its --peer-endpoint is {addr}"
                  " (open that port to the host's machine only)",
                  f"  4. fedrec train --config {cfg}          (start both parties, in any order)",
                  f"  5. the host sends you its {out.name}/partials.parquet and partials.parquet.meta.json; "
                  "then: fedrec dormant / fedrec recommend --model "
                  f"{out / 'model'} --host-partials partials.parquet (docs/DEPLOY.md)"]
    else:
        lines += [f"  3. fedrec train --config {cfg}          (start both parties, in any order)",
                  f"  4. send {out / 'partials.parquet'} and {out / 'partials.parquet.meta.json'} to the "
                  "guest: its recommendations need them (they hold per-user model terms, no raw features)"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from fedrec.transport import KeyFileError, write_keypair
    from training.config import ConfigError, parse_config

    name = args.name or args.role
    try:
        if args.role == "host" and not args.peer_endpoint:
            raise ValueError("--peer-endpoint is required for the host: the guest's address, e.g. "
                             "tcp://bank.example:7710")
        if args.role == "guest" and args.peer_endpoint:
            raise ValueError("--peer-endpoint is for the host; the guest listens (--listen)")
        if args.example_data and (args.interactions or args.user_features or args.item_features):
            raise ValueError("--example-data writes the data files: give it or the data files, not both")
        for flag, value, role in (("--interactions", args.interactions, "guest"),
                                  ("--item-features", args.item_features, "guest"),
                                  ("--user-features", args.user_features, "host")):
            if value is not None and args.role != role:
                raise ValueError(f"{flag} is a {role}'s file; this party is the {args.role}")
        if args.epochs < 1 or args.factors < 1:
            raise ValueError("--epochs and --factors must be >= 1")
        base = args.dir.expanduser().resolve()
        cfg = base / f"{name}.toml"
        if cfg.exists() and not args.force:
            raise FileExistsError(f"{cfg} exists; --force replaces it (the keys in {base / 'keys'} are kept)")
        base.mkdir(parents=True, exist_ok=True)
        public = base / "keys" / f"{name}.key"
        if public.exists() and (base / "keys" / f"{name}.key_secret").exists():
            kept = True
        else:
            public, _ = write_keypair(base / "keys", name)
            kept = False
        example = write_example_data(args.role, base) if args.example_data else None
        text = config_text(args, base)
        parse_config(text, cfg, base_dir=base)  # what is written is what `fedrec train` accepts
        cfg.write_text(text, encoding="utf-8")
        fp = fingerprint(public)
    except (ValueError, OSError, KeyFileError, ConfigError) as err:
        print(f"fedrec init ({args.role}): {err}", file=sys.stderr)
        return 1
    if example is not None:
        print(f"example data (synthetic, seed {EXAMPLE_SEED}): {example}")
    if kept:
        print(f"kept the existing key pair {public} (delete both files to make a new one)")
    print(_instructions(args, base, cfg, fp))
    return 0
