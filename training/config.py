"""The TOML configuration of one party of a federated training job (``fedrec train --config FILE``).

A file has these tables (``[model]`` is passed to the protocol's ``HeteroFMConfig``; every other key is
listed here, with its type; relative paths are relative to the config file's folder)::

    [party]
    role = "guest"                  # "guest" (labels, items, CKKS secret key) or "host" (user features)
    name = "guest"                  # this party's name on the channel (default: the role)
    peer = "host"                   # the other party's name (default: the other role)

    [network]
    connect = "tcp://127.0.0.1:7710"   # exactly one of connect / listen
    # listen = "tcp://0.0.0.0:7710"
    key = "keys/guest.key_secret"      # own CURVE key pair (from `fedrec keys`)
    peer_key = "keys/host.key"         # the peer's public key
    insecure = false                   # true: no CURVE (debugging only; warns)
    connect_timeout = 60.0             # seconds to wait for the peer to show up
    recv_timeout = 300.0               # seconds a step may wait for the peer's message
    heartbeat_timeout = 30.0           # seconds of silence after which the peer is dead

    [data]
    interactions = "interactions.csv"  # guest: user_id, item_id, rating, timestamp (CSV / Parquet)
    item_features = "items.csv"        # guest, optional: item side table
    validation = "validation.csv"      # guest, optional: early-stopping rows (else the protocol's own)
    predict = "test.csv"               # guest, optional: pairs scored after training -> predictions file
    user_features = "users.csv"        # host: user side table
    id_column = "user_id"              # the user id column of the files above
    item_id_column = "item_id"         # guest: the item id column
    categorical = ["zip_prefix"]       # side-table columns that are categorical even if numeric-looking

    [psi]
    enabled = true                     # false: the ids are already aligned (e.g. by `fedrec psi`)
    chunk_size = 16384
    workers = 0                        # 0: all cores

    [model]                            # HeteroFMConfig fields, e.g. backend = "ckks", epochs = 5

    [output]
    dir = "artifacts/guest"            # the party's model half, alignment and (host) partials
    progress = true                    # tqdm progress bars on stderr

Unknown tables or keys, missing required keys and wrong types raise :class:`ConfigError` naming the file,
the table and the key (with a suggestion for a misspelt key).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("guest", "host")


class ConfigError(ValueError):
    """A party configuration is unreadable or invalid; the message names the file, table and key."""


@dataclass(frozen=True)
class NetworkConfig:
    listen: str | None
    connect: str | None
    key: Path | None
    peer_key: Path | None
    insecure: bool = False
    connect_timeout: float = 60.0
    recv_timeout: float = 300.0
    heartbeat_timeout: float = 30.0


@dataclass(frozen=True)
class DataConfig:
    interactions: Path | None = None
    item_features: Path | None = None
    validation: Path | None = None
    predict: Path | None = None
    user_features: Path | None = None
    id_column: str = "user_id"
    item_id_column: str = "item_id"
    categorical: tuple[str, ...] = ()


@dataclass(frozen=True)
class PsiConfig:
    enabled: bool = True
    chunk_size: int = 16384
    workers: int = 0


@dataclass(frozen=True)
class PartyConfig:
    """One party's validated configuration; ``model`` holds the raw ``[model]`` table (checked by
    :func:`build_model_config` against the protocol's config class)."""

    source: Path
    role: str
    name: str
    peer: str
    network: NetworkConfig
    data: DataConfig
    psi: PsiConfig
    output_dir: Path
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)


# table -> key -> (expected type(s), human name of the type, required)
_Spec = dict[str, tuple[tuple[type, ...], str, bool]]
_STR: tuple[tuple[type, ...], str, bool] = ((str,), "a string", False)
_PATH = _STR
_BOOL: tuple[tuple[type, ...], str, bool] = ((bool,), "true or false", False)
_NUM: tuple[tuple[type, ...], str, bool] = ((int, float), "a number", False)
_INT: tuple[tuple[type, ...], str, bool] = ((int,), "an integer", False)
_STR_LIST: tuple[tuple[type, ...], str, bool] = ((list,), "a list of strings", False)

SCHEMA: dict[str, _Spec] = {
    "party": {"role": ((str,), "a string", True), "name": _STR, "peer": _STR},
    "network": {"listen": _STR, "connect": _STR, "key": _PATH, "peer_key": _PATH, "insecure": _BOOL,
                "connect_timeout": _NUM, "recv_timeout": _NUM, "heartbeat_timeout": _NUM},
    "data": {"interactions": _PATH, "item_features": _PATH, "validation": _PATH, "predict": _PATH,
             "user_features": _PATH, "id_column": _STR, "item_id_column": _STR, "categorical": _STR_LIST},
    "psi": {"enabled": _BOOL, "chunk_size": _INT, "workers": _INT},
    "model": {},  # checked against the protocol's config dataclass
    "output": {"dir": ((str,), "a string", True), "progress": _BOOL},
}
_REQUIRED_TABLES = ("party", "network", "data", "output")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check_table(src: str, table: str, values: Mapping[str, Any], spec: _Spec) -> None:
    for key, value in values.items():
        if key not in spec:
            raise ConfigError(f"{src}: unknown key [{table}] {key}{_suggest(key, spec)}; "
                              f"allowed: {', '.join(sorted(spec))}")
        types_, what, _ = spec[key]
        ok = isinstance(value, types_) and not (isinstance(value, bool) and bool not in types_)
        if ok and types_ == (list,):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            raise ConfigError(f"{src}: [{table}] {key} must be {what}, got {_type_name(value)} {value!r}")
    for key, (_, what, required) in spec.items():
        if required and key not in values:
            raise ConfigError(f"{src}: missing key [{table}] {key} ({what})")


def parse_config(text: str, source: str | Path = "<config>", base_dir: Path | None = None) -> PartyConfig:
    """Validate a TOML document; relative paths are resolved against ``base_dir`` (default: cwd)."""
    src = str(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{src}: not valid TOML: {err}") from None
    for table, values in doc.items():
        if table not in SCHEMA:
            raise ConfigError(f"{src}: unknown table [{table}]{_suggest(table, SCHEMA)}; "
                              f"allowed: {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{src}: {table} must be a table [{table}], got {_type_name(values)}")
        if table != "model":
            _check_table(src, table, values, SCHEMA[table])
    for table in _REQUIRED_TABLES:
        if table not in doc:
            raise ConfigError(f"{src}: missing table [{table}]")
    base = base_dir if base_dir is not None else Path.cwd()

    def path(table: str, key: str) -> Path | None:
        value = doc.get(table, {}).get(key)
        if value is None:
            return None
        if not value:
            raise ConfigError(f"{src}: [{table}] {key} is empty")
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    party = doc["party"]
    role = party["role"]
    if role not in ROLES:
        raise ConfigError(f"{src}: [party] role must be 'guest' or 'host', got {role!r}")
    other = "host" if role == "guest" else "guest"
    net = doc["network"]
    if ("listen" in net) == ("connect" in net):
        raise ConfigError(f"{src}: [network] needs exactly one of 'listen' and 'connect'")
    insecure = bool(net.get("insecure", False))
    if not insecure and not ("key" in net and "peer_key" in net):
        raise ConfigError(f"{src}: [network] key and peer_key are required (or insecure = true for "
                          "debugging)")
    for key in ("connect_timeout", "recv_timeout", "heartbeat_timeout"):
        if key in net and not net[key] > 0:
            raise ConfigError(f"{src}: [network] {key} must be > 0 seconds, got {net[key]!r}")
    network = NetworkConfig(listen=net.get("listen"), connect=net.get("connect"), key=path("network", "key"),
                            peer_key=path("network", "peer_key"), insecure=insecure,
                            **{k: float(net[k]) for k in ("connect_timeout", "recv_timeout",
                                                          "heartbeat_timeout") if k in net})
    data = _data_config(src, role, doc["data"], path)
    psi_doc = doc.get("psi", {})
    if psi_doc.get("chunk_size", 1) < 1 or psi_doc.get("workers", 0) < 0:
        raise ConfigError(f"{src}: [psi] chunk_size must be >= 1 and workers >= 0")
    out_dir = path("output", "dir")
    assert out_dir is not None  # required key
    return PartyConfig(
        source=Path(src), role=role, name=party.get("name", role), peer=party.get("peer", other),
        network=network, data=data, psi=PsiConfig(**psi_doc), output_dir=out_dir,
        progress=bool(doc["output"].get("progress", True)), model=dict(doc.get("model", {})))


def _data_config(src: str, role: str, doc: Mapping[str, Any], path: Any) -> DataConfig:
    guest_only = ("interactions", "item_features", "validation", "predict", "item_id_column")
    if role == "guest":
        if "interactions" not in doc:
            raise ConfigError(f"{src}: missing key [data] interactions (the guest's rating table)")
        if "user_features" in doc:
            raise ConfigError(f"{src}: [data] user_features belongs to the host; the guest has none")
    else:
        if "user_features" not in doc:
            raise ConfigError(f"{src}: missing key [data] user_features (the host's user table)")
        wrong = [k for k in guest_only if k in doc]
        if wrong:
            raise ConfigError(f"{src}: [data] {', '.join(wrong)} belong(s) to the guest, not the host")
    return DataConfig(
        interactions=path("data", "interactions"), item_features=path("data", "item_features"),
        validation=path("data", "validation"), predict=path("data", "predict"),
        user_features=path("data", "user_features"), id_column=doc.get("id_column", "user_id"),
        item_id_column=doc.get("item_id_column", "item_id"), categorical=tuple(doc.get("categorical", ())))


def load_config(path: str | Path) -> PartyConfig:
    """Read and validate a party's TOML file; relative paths are relative to the file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {p} cannot be read: {err}") from None
    return parse_config(text, p, base_dir=p.resolve().parent)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a dataclass field's type hint (int, float, bool, str, lists/tuples,
    unions/Optional, Literal); ``int`` is accepted for ``float``, ``bool`` never for numbers."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(hint, type) and isinstance(value, hint)


def build_model_config(config_cls: type, values: Mapping[str, Any], source: str = "<config>",
                       **fixed: Any) -> Any:
    """Instantiate the protocol's config dataclass from the ``[model]`` table, checking key names and
    types first (the error names ``[model] key``); ``fixed`` values (e.g. ``seed``) fill unset keys."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key [model] {key}{_suggest(key, names)}; allowed: "
                              f"{', '.join(sorted(names))}")
        if not _matches(value, hints[key]):
            raise ConfigError(f"{source}: [model] {key} must be of type {_hint_name(hints[key])}, got "
                              f"{_type_name(value)} {value!r}")
        kwargs[key] = tuple(value) if typing.get_origin(hints[key]) is tuple else value
    for key, value in fixed.items():
        if key in names:
            kwargs.setdefault(key, value)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: [model]: {err}") from None


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
