"""``fedrec train`` configuration: every invalid file is refused with the file, table and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.protocols.hetero_fm import HeteroFMConfig
from training.cli import main
from training.config import ConfigError, build_model_config, load_config, parse_config

GUEST = """
[party]
role = "guest"
[network]
connect = "tcp://127.0.0.1:7710"
key = "keys/guest.key_secret"
peer_key = "keys/host.key"
[data]
interactions = "guest/interactions.csv"
[output]
dir = "out"
"""


def test_valid_guest_config_resolves_paths_against_the_base_dir(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    cfg = parse_config(GUEST, "g.toml", base_dir=tmp_path)
    assert (cfg.role, cfg.name, cfg.peer) == ("guest", "guest", "host")
    assert cfg.data.interactions == tmp_path / "guest" / "interactions.csv"
    assert cfg.network.key == tmp_path / "keys" / "guest.key_secret"
    assert cfg.output_dir == tmp_path / "out"
    assert cfg.psi.enabled and cfg.network.recv_timeout == 300.0


def test_unknown_key_is_named_with_a_suggestion() -> None:
    wanted = r"g.toml: unknown key \[network\] conect \(did you mean 'connect'\?\)"
    with pytest.raises(ConfigError, match=wanted):
        parse_config(GUEST.replace("connect =", "conect ="), "g.toml")


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


def test_listen_and_connect_are_exclusive() -> None:
    text = GUEST.replace("[network]", '[network]\nlisten = "tcp://0.0.0.0:1"')
    with pytest.raises(ConfigError, match=r"exactly one of 'listen' and 'connect'"):
        parse_config(text, "g.toml")


def test_keys_required_unless_insecure() -> None:
    text = GUEST.replace('key = "keys/guest.key_secret"\n', "")
    with pytest.raises(ConfigError, match=r"\[network\] key and peer_key are required"):
        parse_config(text, "g.toml")


def test_host_may_not_hold_guest_files() -> None:
    text = GUEST.replace('role = "guest"', 'role = "host"').replace(
        "[data]", '[data]\nuser_features = "u.csv"')
    with pytest.raises(ConfigError, match=r"\[data\] interactions belong\(s\) to the guest"):
        parse_config(text, "h.toml")


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


def test_cli_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_text(GUEST.replace("[psi]", "").replace("[output]", "[psi]\nchunk_size = 'big'\n[output]"))
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
    for text in ("--role", "--config", "--no-progress", "fedrec train --role host"):
        assert text in out
