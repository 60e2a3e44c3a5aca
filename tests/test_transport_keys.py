"""Key files: safe permissions, strict loading, ZeroMQ-compatible format, and the ``fedrec keys`` command."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from fedrec.transport.errors import KeyFileError
from fedrec.transport.keys import (
    KeyPair,
    generate_keypair,
    load_keypair,
    load_peer_keys,
    load_public_key,
    write_keypair,
)
from training import keys_cmd as keys_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_file_is_0600_and_public_file_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public, secret = write_keypair(tmp_path / "k", "guest")
    finally:
        os.umask(old)
    assert (public.name, secret.name) == ("guest.key", "guest.key_secret")
    assert _mode(secret) == 0o600 and _mode(public) == 0o644


def test_written_pair_loads_back(tmp_path: Path) -> None:
    pair = generate_keypair()
    public, secret = write_keypair(tmp_path, "host", pair)
    assert load_keypair(secret) == pair
    assert load_public_key(public) == pair.public


def test_world_or_group_readable_secret_is_refused(tmp_path: Path) -> None:
    _, secret = write_keypair(tmp_path, "guest")
    for mode in (0o644, 0o640):
        secret.chmod(mode)
        with pytest.raises(KeyFileError, match=rf"mode 0{mode:o}.*chmod 600"):
            load_keypair(secret)


def test_existing_pair_is_kept_unless_forced(tmp_path: Path) -> None:
    first = generate_keypair()
    write_keypair(tmp_path, "guest", first)
    with pytest.raises(KeyFileError, match="already exists; pass --force"):
        write_keypair(tmp_path, "guest")
    write_keypair(tmp_path, "guest", force=True)
    assert load_keypair(tmp_path / "guest.key_secret") != first


def test_files_are_readable_by_zeromq_tooling(tmp_path: Path) -> None:
    pair = generate_keypair()
    _, secret = write_keypair(tmp_path, "guest", pair)
    public, private = zmq.auth.load_certificate(str(secret))
    assert (public.decode(), private.decode() if private else None) == (pair.public, pair.secret)


def test_public_loader_refuses_a_secret_file(tmp_path: Path) -> None:
    _, secret = write_keypair(tmp_path, "guest")
    with pytest.raises(KeyFileError, match="contains a secret key"):
        load_public_key(secret)


def test_mismatched_public_and_secret_keys_are_refused(tmp_path: Path) -> None:
    a, b = generate_keypair(), generate_keypair()
    _, secret = write_keypair(tmp_path, "guest", KeyPair(a.public, b.secret))
    with pytest.raises(KeyFileError, match="does not match"):
        load_keypair(secret)


def test_malformed_key_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    with pytest.raises(KeyFileError, match=r"bad.key:3: public-key is not a 40-character z85"):
        load_public_key(path)


def test_peer_allow_list_from_a_directory(tmp_path: Path) -> None:
    keys = {n: generate_keypair() for n in ("host", "client-1")}
    for n, k in keys.items():
        write_keypair(tmp_path, n, k)
    for secret in tmp_path.glob("*.key_secret"):
        secret.unlink()
    assert load_peer_keys(tmp_path) == {n: k.public for n, k in keys.items()}


def test_same_key_for_two_parties_is_refused(tmp_path: Path) -> None:
    pair = generate_keypair()
    write_keypair(tmp_path / "a", "host", pair)
    write_keypair(tmp_path / "b", "guest", pair)
    with pytest.raises(KeyFileError, match="same public key"):
        load_peer_keys([tmp_path / "a" / "host.key", tmp_path / "b" / "guest.key"])


def test_keys_command_writes_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    keys_cli.add_arguments(parser)
    assert keys_cli.run(parser.parse_args(["--out", str(tmp_path), "--name", "server"])) == 0
    assert _mode(tmp_path / "server.key_secret") == 0o600
    load_keypair(tmp_path / "server.key_secret")
    assert "server.key" in capsys.readouterr().out
    assert keys_cli.run(parser.parse_args(["--out", str(tmp_path), "--name", "server"])) == 1
    assert "--force" in capsys.readouterr().err


def test_keys_command_rejects_a_path_like_name(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    keys_cli.add_arguments(parser)
    assert keys_cli.run(parser.parse_args(["--out", str(tmp_path), "--name", "../evil"])) == 1
    assert not list(tmp_path.parent.glob("evil*"))
