"""``fedrec train`` configuration: every invalid file is refused with the file, table and key named."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from fedrec.protocols.hetero_fm import HeteroFMConfig
from training.cli import main
from training.config import (
    ConfigError,
    add_network_arguments,
    build_model_config,
    load_config,
    network_from_args,
    parse_config,
)
from training.jobs import PROTOCOLS, all_roles

GUEST = """
[job]
protocol = "hetero_fm"
[party]
role = "guest"
[network]
key = "keys/guest.key_secret"
[peers.host]
endpoint = "tcp://127.0.0.1:7710"
public_key = "keys/host.key"
[data]
interactions = "guest/interactions.csv"
[output]
dir = "out"
"""

HUB = """
[job]
protocol = "hetero_fm"
[party]
role = "guest"
name = "bank"
[network]
listen = "tcp://0.0.0.0:7710"
key = "keys/bank.key_secret"
[peers.telco]
public_key = "keys/telco.key"
[data]
interactions = "i.csv"
[output]
dir = "out"
"""


def test_valid_guest_config_resolves_paths_against_the_base_dir(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    cfg = parse_config(GUEST, "g.toml", base_dir=tmp_path)
    assert (cfg.protocol, cfg.role, cfg.name, list(cfg.peers)) == ("hetero_fm", "guest", "guest", ["host"])
    assert cfg.peers["host"].endpoint == "tcp://127.0.0.1:7710"
    assert cfg.peers["host"].public_key == tmp_path / "keys" / "host.key"
    assert cfg.data.interactions == tmp_path / "guest" / "interactions.csv"
    assert cfg.network.key == tmp_path / "keys" / "guest.key_secret" and cfg.network.listen is None
    assert cfg.output_dir == tmp_path / "out"
    assert cfg.psi.enabled and cfg.network.recv_timeout == 300.0


def test_listening_party_names_its_peers_without_endpoints(tmp_path: Path) -> None:
    cfg = parse_config(HUB, "g.toml", base_dir=tmp_path)
    assert cfg.name == "bank" and cfg.network.listen == "tcp://0.0.0.0:7710"
    assert list(cfg.peers) == ["telco"] and cfg.peers["telco"].endpoint is None


def test_checkpoint_table_defaults_to_the_output_dir_and_is_checked(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    cfg = parse_config(GUEST, "g.toml", base_dir=tmp_path)
    assert cfg.checkpoint.dir == tmp_path / "out" / "checkpoints"
    assert (cfg.checkpoint.every_batches, cfg.checkpoint.keep) == (0, 2)
    cfg = parse_config(GUEST + '[checkpoint]\ndir = "ck"\nevery_batches = 5\nkeep = 3\n', "g.toml",
                       base_dir=tmp_path)
    assert (cfg.checkpoint.dir, cfg.checkpoint.every_batches, cfg.checkpoint.keep) == (tmp_path / "ck", 5, 3)
    with pytest.raises(ConfigError, match=r"g.toml: \[checkpoint\] keep must be >= 2"):
        parse_config(GUEST + "[checkpoint]\nkeep = 1\n", "g.toml")
    with pytest.raises(ConfigError, match=r"\[checkpoint\] dir .* would hold \[output\] dir"):
        parse_config(GUEST + '[checkpoint]\ndir = "."\n', "g.toml", base_dir=tmp_path)


def test_unknown_key_is_named_with_a_suggestion() -> None:
    wanted = r"g.toml: unknown key \[network\] lisen \(did you mean 'listen'\?\)"
    with pytest.raises(ConfigError, match=wanted):
        parse_config(GUEST.replace("[network]", '[network]\nlisen = "tcp://0.0.0.0:1"'), "g.toml")


def test_unknown_peer_key_is_named_with_its_table() -> None:
    wanted = r"unknown key \[peers.host\] public_kye \(did you mean 'public_key'\?\)"
    with pytest.raises(ConfigError, match=wanted):
        parse_config(GUEST.replace("public_key =", "public_kye ="), "g.toml")


def test_unknown_table_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown table \[modle\] \(did you mean 'model'\?\)"):
        parse_config(GUEST + "[modle]\nepochs = 3\n", "g.toml")


def test_wrong_type_names_key_and_value() -> None:
    text = GUEST.replace("[data]", "[data]\nid_column = 7")
    with pytest.raises(ConfigError, match=r"\[data\] id_column must be a string, got an integer 7"):
        parse_config(text, "g.toml")


def test_boolean_is_not_accepted_as_a_number() -> None:
    text = GUEST.replace("[network]", "[network]\nrecv_timeout = true")
    with pytest.raises(ConfigError, match=r"\[network\] recv_timeout must be a number, got a boolean True"):
        parse_config(text, "g.toml")


def test_missing_required_key_and_table_are_named() -> None:
    with pytest.raises(ConfigError, match=r"missing key \[output\] dir"):
        parse_config(GUEST.replace('dir = "out"', 'progress = true'), "g.toml")
    with pytest.raises(ConfigError, match=r"missing table \[output\]"):
        parse_config(GUEST.split("[output]", maxsplit=1)[0], "g.toml")


def test_protocol_is_required_and_unknown_ones_are_refused_naming_the_known() -> None:
    with pytest.raises(ConfigError, match=r'g.toml: missing table \[job\] \(add:  \[job\]  protocol = '
                                          r'"hetero_fm"; known protocols: hetero_fm, fedmf\)'):
        parse_config(GUEST.replace('[job]\nprotocol = "hetero_fm"\n', ""), "g.toml")
    with pytest.raises(ConfigError, match=r"\[job\] protocol 'hetero_f' is not known \(did you mean "
                                          r"'hetero_fm'\?\); known: hetero_fm, fedmf"):
        parse_config(GUEST.replace('"hetero_fm"', '"hetero_f"'), "g.toml")


def test_roles_come_from_the_job_registry() -> None:
    assert set(all_roles()) == {r for p in PROTOCOLS.values() for r in p.roles}
    with pytest.raises(ConfigError, match=r"\[party\] role must be one of 'guest', 'host' \(protocol "
                                          r"'hetero_fm'\), got 'gust' \(did you mean 'guest'\?\)"):
        parse_config(GUEST.replace('role = "guest"', 'role = "gust"'), "g.toml")


def test_connecting_party_needs_the_endpoint_of_its_peer() -> None:
    with pytest.raises(ConfigError, match=r"\[peers.host\] endpoint is required: this party connects to "
                                          r"'host' \(or set \[network\] listen"):
        parse_config(GUEST.replace('endpoint = "tcp://127.0.0.1:7710"\n', ""), "g.toml")


def test_listening_party_refuses_a_peer_endpoint() -> None:
    text = GUEST.replace("[network]", '[network]\nlisten = "tcp://0.0.0.0:1"')
    with pytest.raises(ConfigError, match=r"\[peers.host\] endpoint is set but this party listens "
                                          r"\(\[network\] listen\)"):
        parse_config(text, "g.toml")


def test_a_party_cannot_be_its_own_peer() -> None:
    text = GUEST.replace('role = "guest"', 'role = "host"').replace("[data]", '[data]\nuser_features = "u"')
    with pytest.raises(ConfigError, match=r"h.toml: peer 'host' is this party's own name"):
        parse_config(text, "h.toml")


def test_guest_takes_several_hosts_and_a_host_one_guest() -> None:
    text = HUB + '[peers.media]\npublic_key = "keys/media.key"\n'
    assert list(parse_config(text, "g.toml").peers) == ["telco", "media"]  # issue #11: one table per host
    host = text.replace('role = "guest"', 'role = "host"')
    host = host.replace('[data]\ninteractions', '[data]\nuser_features')
    with pytest.raises(ConfigError, match=r"\[peers\]: role 'host' of protocol 'hetero_fm' talks to "
                                          r"exactly 1 peer\(s\), got 2 \(telco, media\)"):
        parse_config(host, "h.toml")


def test_keys_required_unless_insecure() -> None:
    text = GUEST.replace('key = "keys/guest.key_secret"\n', "").replace('public_key = "keys/host.key"\n', "")
    with pytest.raises(ConfigError, match=r"g.toml: \[network\] key and \[peers.host\] public_key are "
                                          r"required \(or \[network\] insecure for debugging\)"):
        parse_config(text, "g.toml")
    cfg = parse_config(text.replace("[network]", "[network]\ninsecure = true"), "g.toml")
    assert cfg.network.insecure and cfg.network.key is None


def test_old_single_peer_file_is_refused_with_the_exact_rewrite() -> None:
    old = """
[party]
role = "guest"
peer = "host"
[network]
connect = "tcp://127.0.0.1:7710"
key = "keys/guest.key_secret"
peer_key = "keys/host.key"
[data]
interactions = "guest/interactions.csv"
[output]
dir = "out"
"""
    with pytest.raises(ConfigError) as exc:
        parse_config(old, "g.toml")
    msg = str(exc.value)
    assert msg.startswith("g.toml: [party] peer, [network] connect, [network] peer_key: the single-peer "
                          "form is no longer read")
    rewrite = msg.split("Add\n\n", 1)[1].split("\n\nand delete", 1)[0]
    assert tomllib.loads(rewrite.replace("    ", "")) == {
        "job": {"protocol": "hetero_fm"},
        "peers": {"host": {"endpoint": "tcp://127.0.0.1:7710", "public_key": "keys/host.key"}}}
    assert "and delete [party] peer, [network] connect, [network] peer_key" in msg
    # applying the rewrite gives a valid file
    fixed = old.replace('peer = "host"\n', "").replace('connect = "tcp://127.0.0.1:7710"\n', "").replace(
        'peer_key = "keys/host.key"\n', "") + rewrite.replace("    ", "")
    assert parse_config(fixed, "g.toml").peers["host"].endpoint == "tcp://127.0.0.1:7710"


def test_host_may_not_hold_guest_files() -> None:
    text = GUEST.replace('role = "guest"', 'role = "host"').replace("[peers.host]", "[peers.guest]").replace(
        "[data]", '[data]\nuser_features = "u.csv"')
    with pytest.raises(ConfigError, match=r"h.toml: \[data\] interactions belongs to role guest of "
                                          r"protocol 'hetero_fm', not to 'host'; 'host' reads: categorical, "
                                          r"id_column, user_features"):
        parse_config(text, "h.toml")


def test_guest_needs_its_rating_table() -> None:
    with pytest.raises(ConfigError, match=r"missing key \[data\] interactions \(the guest's rating table\)"):
        parse_config(GUEST.replace('interactions = "guest/interactions.csv"', 'id_column = "u"'), "g.toml")


def test_invalid_toml_is_reported_with_the_file() -> None:
    with pytest.raises(ConfigError, match=r"g.toml: not valid TOML"):
        parse_config("[party\nrole=", "g.toml")


def test_model_table_is_checked_against_the_protocol_config() -> None:
    cfg = build_model_config(HeteroFMConfig, {"epochs": 2, "lr": 1, "backend": "plain"}, "g.toml")
    assert (cfg.epochs, cfg.lr, cfg.backend) == (2, 1, "plain")
    with pytest.raises(ConfigError, match=r"unknown key \[model\] epoch \(did you mean 'epochs'\?\)"):
        build_model_config(HeteroFMConfig, {"epoch": 2}, "g.toml")
    with pytest.raises(ConfigError, match=r"\[model\] epochs must be of type int, got a string '2'"):
        build_model_config(HeteroFMConfig, {"epochs": "2"}, "g.toml")
    with pytest.raises(ConfigError, match=r"\[model\]: HeteroFMConfig: backend must be ckks\|paillier"):
        build_model_config(HeteroFMConfig, {"backend": "rsa"}, "g.toml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def _flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_network_arguments(parser, aliases={"--peer-endpoint": "--connect"})
    return parser.parse_args(argv)


def test_flags_are_the_toml_keys_and_share_their_checks() -> None:
    args = _flags(["--connect", "tcp://h:1", "--key", "k", "--peer-public-key", "p", "--recv-timeout", "9",
                   "--heartbeat-timeout", "5"])
    net, peers = network_from_args(args, "guest", "host")
    assert (net.recv_timeout, net.heartbeat_timeout, net.connect_timeout) == (9.0, 5.0, 300.0)
    assert peers["host"].endpoint == "tcp://h:1" and peers["host"].public_key == Path("p")
    with pytest.raises(ConfigError, match=r"--key and --peer-public-key are required \(or --insecure"):
        network_from_args(_flags(["--listen", "tcp://*:1"]), "host", "guest")
    with pytest.raises(ConfigError, match=r"--heartbeat-timeout must be > 2 seconds"):
        network_from_args(_flags(["--listen", "x", "--insecure", "--heartbeat-timeout", "1"]), "h", "g")


def test_cli_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_text(GUEST.replace("[output]", "[psi]\nchunk_size = 'big'\n[output]"))
    assert main(["train", "--role", "guest", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fedrec train (guest): invalid configuration" in err
    assert "[psi] chunk_size must be an integer, got a string 'big'" in err


def test_cli_refuses_a_role_that_differs_from_the_config(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_text(GUEST)
    assert main(["train", "--role", "host", "--config", str(path)]) == 2
    assert "[party] role is 'guest' but --role is 'host'" in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("--role", "--config", "--no-progress", "--restart", "fedrec train --role host"):
        assert text in out
