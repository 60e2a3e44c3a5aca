"""Write a party's CURVE key pair: NAME.key (public, share it) and NAME.key_secret (mode 0600, keep it).

Each party runs this once; the parties then exchange their public ``NAME.key`` files, and each names
its peers' files in its configuration (``[peers.NAME] public_key``; ``fedrec psi --peer-public-key``).
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """example:
  fedrec keys --out keys/ --name guest     # writes keys/guest.key and keys/guest.key_secret
  fedrec keys --out keys/ --name host
  # give keys/host.key to the guest and keys/guest.key to the host; never copy a .key_secret file;
  # compare the printed fingerprints by phone (a wrong key is reported by its fingerprint)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default="keys",
                        help="directory to write the key files into (created with mode 0700; default: keys)")
    parser.add_argument("--name", metavar="PARTY", required=True,
                        help="party name, e.g. guest, host, server, client-3 (the files are PARTY.key*)")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair of that name")


def run(args: argparse.Namespace) -> int:
    from fedrec.transport.errors import KeyFileError
    from fedrec.transport.keys import fingerprint, write_keypair

    try:
        public_path, secret_path = write_keypair(args.out, args.name, force=args.force)
    except KeyFileError as e:
        print(f"fedrec keys: {e}", file=sys.stderr)
        return 1
    print(f"public key (share with peers): {public_path}")
    print(f"secret key (mode 0600, keep private): {secret_path}")
    print(f"fingerprint of the public key: {fingerprint(public_path)}  (read it to the peer by phone; the "
          "peer's transport names keys by this fingerprint)")
    return 0
