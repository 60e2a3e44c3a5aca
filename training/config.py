"""The TOML configuration of one party of a federated job (``fedrec train --config FILE``).

A file has these tables (``[model]`` is passed to the protocol's config class; every other key is
listed here, with its type; relative paths are relative to the config file's folder)::

    [job]
    protocol = "hetero_fm"             # required; the protocols are listed in training/jobs.py

    [party]
    role = "guest"                     # a role of the protocol (hetero_fm: "guest" or "host")
    name = "guest"                     # this party's name on the channel (default: the role)

    [network]                          # this party's own settings
    listen = "tcp://0.0.0.0:7710"      # listen here (the hub of a multi-peer job listens); omit to connect
    key = "keys/guest.key_secret"      # own CURVE key pair (from `fedrec keys`)
    insecure = false                   # true: no CURVE (debugging only, loopback only; warns)
    connect_timeout = 300.0            # seconds to wait for the peers to show up
    recv_timeout = 300.0               # seconds a step may wait for a peer's message
    heartbeat_timeout = 30.0           # seconds of silence after which a peer is dead (> 2)

    [peers.host]                       # one table per peer, named by its party name
    endpoint = "tcp://10.0.0.5:7710"   # where to connect to it (only when this party does not listen)
    public_key = "keys/host.key"       # its CURVE public key file

    [data]                             # the keys of this role (training/jobs.py), e.g. for hetero_fm:
    interactions = "interactions.csv"  # guest: user_id, item_id, rating, timestamp (CSV / Parquet)
    item_features = "items.csv"        # guest, optional: item side table
    validation = "validation.csv"      # guest, optional: early-stopping rows (else the protocol's own)
    predict = "test.csv"               # guest, optional: pairs scored after training -> predictions.csv
    user_features = "users.csv"        # host: user side table
    catalogue = "items.csv"            # fedmf: the agreed item catalogue (its item_id column, in order)
    id_column = "user_id"              # the user id column of the files above
    item_id_column = "item_id"         # guest: the item id column
    rating_column = "rating"           # guest / fedmf client: the rating column of interactions
    timestamp_column = "timestamp"     # guest: the time column of interactions (Unix seconds or ISO-8601)
    feedback = "explicit"              # guest: "implicit" = events without a rating (docs/DATA.md)
    rating_scale = [1.0, 5.0]          # guest: the range ratings must lie in (explicit feedback)
    categorical = ["zip_prefix"]       # side-table columns that are categorical even if numeric-looking

    [psi]
    enabled = true                     # false: the ids are already aligned (e.g. by `fedrec psi`)
    chunk_size = 16384
    workers = 0                        # 0: all cores
    buckets = 0                        # N > 0: bucketed PSI, N buckets (the same N on both parties)

    [compute]                          # scale-out (docs/SCALE.md): the CKKS loops of train, recommend
    engine = "local"                   # local (this process), process (a local pool) or ray (fedrec[ray])
    address = "auto"                   # ray: a running cluster (auto: `ray start` here); unset: a private one
    workers = 0                        # worker processes (0: all cores)

    [model]                            # the protocol's config fields, e.g. backend = "ckks", epochs = 5

    [ads]                              # hetero_fm guest, logistic objective: the advertiser (docs/ADS.md)
    refit = "campaign"                 # after training, refit its campaign logit beside the host's terms
    refit_l2 = "auto"                  # the refit's L2: a number > 0, or auto (cross-validated)

    [guard]                            # hetero_fm guest: never worse than the bank alone (models/guard.py)
    mode = "blend"                     # blend | choose | off: weight of the federated model vs the bank alone

    [checkpoint]
    dir = "checkpoints"                # default: <output dir>/checkpoints
    every_batches = 0                  # 0: at every epoch end only; N: also every N batches
    keep = 2                           # newest checkpoints kept (>= 2)

    [output]
    dir = "artifacts/guest"            # everything the job writes; summary.json is written last
    progress = true                    # per-batch progress bars on stderr (--no-progress, -q: off)

The network options have one spelling everywhere: the ``fedrec psi`` flags are these keys with
dashes (``--listen``, ``--key``, ``--insecure``, ``--recv-timeout``, ...; a peer's keys as
``--peer-endpoint``, ``--peer-public-key``), see :func:`add_network_arguments`.

Unknown tables or keys, missing required keys and wrong types raise :class:`ConfigError` naming the file,
the table and the key (with a suggestion for a misspelt key). A file in the old single-peer form
(``[party] peer``, ``[network] connect`` / ``peer_key``) is refused with the exact rewrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.compute.executor import ComputeConfig
from training.jobs import GENERIC_DATA, PROTOCOLS, ProtocolSpec, RoleSpec


class ConfigError(ValueError):
    """A party configuration is unreadable or invalid; the message names the file, table and key."""


@dataclass(frozen=True)
class NetworkConfig:
    """This party's own network settings (the peers are :class:`PeerConfig`)."""

    listen: str | None = None
    key: Path | None = None
    insecure: bool = False
    connect_timeout: float = 300.0
    recv_timeout: float = 300.0
    heartbeat_timeout: float = 30.0


@dataclass(frozen=True)
class PeerConfig:
    endpoint: str | None = None
    public_key: Path | None = None


@dataclass(frozen=True)
class DataConfig:
    interactions: Path | None = None
    item_features: Path | None = None
    validation: Path | None = None
    predict: Path | None = None
    user_features: Path | None = None
    catalogue: Path | None = None
    id_column: str = "user_id"
    item_id_column: str = "item_id"
    categorical: tuple[str, ...] = ()
    rating_column: str = "rating"
    timestamp_column: str = "timestamp"
    #: "explicit" (rated interactions) or "implicit" (events, no rating: one positive per pair)
    feedback: str = "explicit"
    #: explicit ratings must lie in [min, max] (a logistic guest's labels: [0, 1]); None: the default
    rating_scale: tuple[float, float] | None = None
    #: implicit feedback: how much a (user, item) pair's events count in the loss (fedrec.data.implicit:
    #: "none" 1, "count" 1 + log(n_events), "recency" a sum of half-life decays)
    event_weighting: str = "none"
    #: the half-life of "recency" weighting, in days
    event_half_life_days: float = 30.0


@dataclass(frozen=True)
class PsiConfig:
    enabled: bool = True
    chunk_size: int = 16384
    workers: int = 0
    #: 0: one PSI session; N > 0: N buckets by a hash both parties salt, one session each (memory: one
    #: bucket's points; fedrec.psi.buckets, docs/SCALE.md); both parties must set the same N
    buckets: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    dir: Path
    every_batches: int = 0
    keep: int = 2


#: ``[ads] refit`` (fedrec.ads.refit.REFIT_KINDS, repeated: reading a config imports no model code)
ADS_REFIT = ("campaign", "off")


@dataclass(frozen=True)
class AdsConfig:
    """``[ads]``: the advertiser's refit after training (:mod:`fedrec.ads.refit`); the table absent: off
    (``fedrec ads prepare`` writes ``refit = "campaign"``)."""

    refit: str = "off"
    refit_l2: float | str = "auto"


#: ``[guard] mode`` (fedrec.models.guard.MODES, repeated: reading a config imports no model code)
GUARD_MODES = ("blend", "choose", "off")


@dataclass(frozen=True)
class GuardConfig:
    """``[guard]``: the guest-side guard of the vertical FM (:mod:`fedrec.models.guard`); guest only (the
    host is unaffected: nothing is sent)."""

    mode: str = "blend"


@dataclass(frozen=True)
class PartyConfig:
    """One party's validated configuration; ``model`` holds the raw ``[model]`` table (checked by
    :func:`build_model_config` against the protocol's config class)."""

    source: Path
    protocol: str
    role: str
    name: str
    peers: dict[str, PeerConfig]
    network: NetworkConfig
    data: DataConfig
    psi: PsiConfig
    checkpoint: CheckpointConfig
    output_dir: Path
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    ads: AdsConfig = field(default_factory=AdsConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    @property
    def job(self) -> ProtocolSpec:
        return PROTOCOLS[self.protocol]

    @property
    def role_spec(self) -> RoleSpec:
        return PROTOCOLS[self.protocol].roles[self.role]


# table -> key -> (expected type(s), human name of the type, required)
_Type = tuple[tuple[type, ...], str, bool]
_Spec = dict[str, _Type]
_STR: _Type = ((str,), "a string", False)
_PATH = _STR
_BOOL: _Type = ((bool,), "true or false", False)
_NUM: _Type = ((int, float), "a number", False)
_INT: _Type = ((int,), "an integer", False)
_STR_LIST: _Type = ((list,), "a list of strings", False)
_NUM_PAIR: _Type = ((list,), "a list of two numbers [min, max]", False)
#: ``[data] feedback``: rated interactions, or events without a rating (fedrec.data.implicit)
FEEDBACK = ("explicit", "implicit")
#: ``[psi] buckets`` at most (fedrec.psi.messages.MAX_BUCKETS; tests/test_train_jobs.py checks they agree)
MAX_PSI_BUCKETS = 1 << 20
#: ``[data] event_weighting`` (fedrec.data.implicit.WEIGHTINGS)
WEIGHTINGS = ("none", "count", "recency")

# One spelling of the network options: TOML key ``x_y`` <-> flag ``--x-y`` (a peer's: ``--peer-x-y``).
NETWORK_KEYS: dict[str, tuple[_Type, str]] = {
    "listen": (_STR, "listen at this address and let the peers connect, e.g. tcp://0.0.0.0:7700"),
    "key": (_PATH, "this party's CURVE key pair file NAME.key_secret (from `fedrec keys`)"),
    "insecure": (_BOOL, "no CURVE encryption or authentication (debugging only, loopback only; warns)"),
    "connect_timeout": (_NUM, "seconds to wait for the peers to connect (default: 300)"),
    "recv_timeout": (_NUM, "seconds a step may wait for a peer's message (default: 300)"),
    "heartbeat_timeout": (_NUM, "seconds of silence after which a peer is dead, > 2 (default: 30)"),
}
PEER_KEYS: dict[str, tuple[_Type, str]] = {
    "endpoint": (_STR, "where to connect to the peer, e.g. tcp://10.0.0.5:7700 (when not listening)"),
    "public_key": (_PATH, "the peer's CURVE public key file NAME.key"),
}
_TIMEOUTS = ("connect_timeout", "recv_timeout", "heartbeat_timeout")

SCHEMA: dict[str, _Spec] = {
    "job": {"protocol": ((str,), "a string", True)},
    "party": {"role": ((str,), "a string", True), "name": _STR},
    "network": {k: t for k, (t, _) in NETWORK_KEYS.items()},
    "peers": {},  # one sub-table per peer, checked against PEER_KEYS
    "data": {"interactions": _PATH, "item_features": _PATH, "validation": _PATH, "predict": _PATH,
             "user_features": _PATH, "catalogue": _PATH, "id_column": _STR, "item_id_column": _STR,
             "categorical": _STR_LIST, "rating_column": _STR, "timestamp_column": _STR, "feedback": _STR,
             "rating_scale": _NUM_PAIR, "event_weighting": _STR, "event_half_life_days": _NUM},
    "psi": {"enabled": _BOOL, "chunk_size": _INT, "workers": _INT, "buckets": _INT},
    "compute": {"engine": _STR, "address": _STR, "workers": _INT},
    "model": {},  # checked against the protocol's config dataclass
    "ads": {"refit": _STR, "refit_l2": ((int, float, str), "a number > 0 or \"auto\"", False)},
    "guard": {"mode": _STR},
    "checkpoint": {"dir": _PATH, "every_batches": _INT, "keep": _INT},
    "output": {"dir": ((str,), "a string", True), "progress": _BOOL},
}
_REQUIRED_TABLES = ("job", "party", "network", "peers", "data", "output")
_PEER_SPEC: _Spec = {k: t for k, (t, _) in PEER_KEYS.items()}
_LEGACY = {"party": ("peer",), "network": ("connect", "peer_key")}


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
        if ok and spec[key] == _STR_LIST:
            ok = all(isinstance(v, str) for v in value)  # a number pair is checked by its table
        if not ok:
            raise ConfigError(f"{src}: [{table}] {key} must be {what}, got {_type_name(value)} {value!r}")
    for key, (_, what, required) in spec.items():
        if required and key not in values:
            raise ConfigError(f"{src}: missing key [{table}] {key} ({what})")


# ---------------------------------------------------------------------------------------------- network
Say = Callable[[str, str | None], str]  # (key, peer or None) -> how the user spells it


def toml_words(key: str, peer: str | None) -> str:
    return f"[peers.{peer}] {key}" if peer is not None else f"[network] {key}"


def check_network(net: NetworkConfig, peers: Mapping[str, PeerConfig], name: str, say: Say = toml_words
                  ) -> None:
    """The topology and key rules shared by ``fedrec train`` (TOML) and ``fedrec psi`` (flags); the
    :class:`ConfigError` names the options as the user wrote them (``say``)."""
    if name in peers:
        raise ConfigError(f"peer {name!r} is this party's own name; a party cannot be its own peer")
    for peer in peers:
        if not peer or len(peer) > 64 or not peer.isprintable():
            raise ConfigError(f"peer name {peer!r}: party names are 1..64 printable characters")
    if net.listen is not None:
        for peer, p in peers.items():
            if p.endpoint is not None:
                raise ConfigError(f"{say('endpoint', peer)} is set but this party listens "
                                  f"({say('listen', None)}), so it connects to no peer; keep one of the two")
    elif len(peers) > 1:
        raise ConfigError(f"{len(peers)} peers ({', '.join(peers)}) but no {say('listen', None)}: a party "
                          "with several peers is the hub and must listen")
    else:
        (peer, p), = peers.items()
        if p.endpoint is None:
            raise ConfigError(f"{say('endpoint', peer)} is required: this party connects to {peer!r} (or set "
                              f"{say('listen', None)} to let it connect)")
    if not net.insecure:
        missing = ([say("key", None)] if net.key is None else []) + [
            say("public_key", peer) for peer, p in peers.items() if p.public_key is None]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (or "
                              f"{say('insecure', None)} for debugging)")
    for key in _TIMEOUTS:
        value = getattr(net, key)
        if not value > 0:
            raise ConfigError(f"{say(key, None)} must be > 0 seconds, got {value!r}")
    if not net.heartbeat_timeout > 2.0:  # TransportConfig: more than twice the 1 s heartbeat interval
        raise ConfigError(f"{say('heartbeat_timeout', None)} must be > 2 seconds (twice the heartbeat "
                          f"interval), got {net.heartbeat_timeout!r}")


def transport_config(net: NetworkConfig) -> Any:
    """The :class:`~fedrec.transport.TransportConfig` of these settings."""
    from fedrec.transport import TransportConfig

    return TransportConfig(insecure=net.insecure, recv_timeout=net.recv_timeout,
                           heartbeat_timeout=net.heartbeat_timeout)


def _flag(key: str, peer: bool = False) -> str:
    return "--" + ("peer-" if peer else "") + key.replace("_", "-")


def flag_words(key: str, peer: str | None) -> str:
    return _flag(key, peer is not None)


def add_network_arguments(parser: argparse.ArgumentParser, aliases: Mapping[str, str] | None = None) -> None:
    """The network options as flags, spelt like the TOML keys: ``[network] recv_timeout`` is
    ``--recv-timeout``, ``[peers.NAME] public_key`` is ``--peer-public-key`` (one peer: ``--peer NAME``).
    ``aliases`` maps a flag to an older spelling that is accepted too (e.g. ``--connect``)."""
    aliases = aliases or {}

    def names(flag: str) -> list[str]:
        return [flag, *([aliases[flag]] if flag in aliases else [])]

    metavar = {"listen": "ADDR", "key": "FILE", "endpoint": "ADDR", "public_key": "FILE"}
    where = parser.add_mutually_exclusive_group(required=True)
    for key, (type_, help_) in NETWORK_KEYS.items():
        target = where if key == "listen" else parser
        flag = _flag(key)
        if type_ is _BOOL:
            target.add_argument(*names(flag), dest=key, action="store_true", help=help_)
        elif type_ is _NUM:
            default = getattr(NetworkConfig, key)
            target.add_argument(*names(flag), dest=key, type=float, default=default, metavar="SECONDS",
                                help=help_)
        else:
            target.add_argument(*names(flag), dest=key, metavar=metavar[key], help=help_)
    for key, (_, help_) in PEER_KEYS.items():
        target = where if key == "endpoint" else parser
        target.add_argument(*names(_flag(key, peer=True)), dest=f"peer_{key}", metavar=metavar[key],
                            help=help_)
    parser.add_argument(*names("--peer"), dest="peer", metavar="NAME",
                        help="the peer's party name (default: the other role)")


def network_from_args(args: argparse.Namespace, name: str, peer: str
                      ) -> tuple[NetworkConfig, dict[str, PeerConfig]]:
    """The validated settings of :func:`add_network_arguments`'s flags (errors name the flags)."""
    net = NetworkConfig(listen=args.listen, key=Path(args.key) if args.key else None, insecure=args.insecure,
                        **{k: float(getattr(args, k)) for k in _TIMEOUTS})
    public = Path(args.peer_public_key) if args.peer_public_key else None
    peers = {peer: PeerConfig(endpoint=args.peer_endpoint, public_key=public)}
    check_network(net, peers, name, flag_words)
    return net, peers


# ---------------------------------------------------------------------------------------------- parsing
def _legacy_rewrite(src: str, doc: Mapping[str, Any]) -> str:
    """The exact rewrite of an old single-peer file into ``[job]`` + ``[peers.NAME]`` tables."""
    party, net = doc.get("party", {}), doc.get("network", {})
    role = party.get("role", "guest")
    peer = party.get("peer", "host" if role == "guest" else "guest")
    lines = [] if "job" in doc else ["[job]", 'protocol = "hetero_fm"', ""]
    lines.append(f"[peers.{peer}]")
    if "connect" in net:
        lines.append(f"endpoint = {json.dumps(net['connect'])}")
    if "peer_key" in net:
        lines.append(f"public_key = {json.dumps(net['peer_key'])}")
    old = [f"[{t}] {k}" for t, keys in _LEGACY.items() for k in keys if k in doc.get(t, {})]
    return (f"{src}: {', '.join(old)}: the single-peer form is no longer read; peers are [peers.NAME] "
            "tables now. Add\n\n" + "\n".join(f"    {x}" if x else "" for x in lines) +
            f"\n\nand delete {', '.join(old)} ([network] keeps listen, key, insecure and the timeouts; a "
            "peer's endpoint is only for a party that connects).")


def parse_config(text: str, source: str | Path = "<config>", base_dir: Path | None = None) -> PartyConfig:
    """Validate a TOML document; relative paths are resolved against ``base_dir`` (default: cwd)."""
    src = str(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{src}: not valid TOML: {err}") from None
    if any(k in doc.get(t, {}) for t, keys in _LEGACY.items() for k in keys):
        raise ConfigError(_legacy_rewrite(src, doc))
    for table, values in doc.items():
        if table not in SCHEMA:
            raise ConfigError(f"{src}: unknown table [{table}]{_suggest(table, SCHEMA)}; "
                              f"allowed: {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{src}: {table} must be a table [{table}], got {_type_name(values)}")
        if table == "peers":
            for peer, body in values.items():
                if not isinstance(body, dict):
                    raise ConfigError(f"{src}: [peers] {peer} must be a table [peers.{peer}], got "
                                      f"{_type_name(body)} {body!r}")
                _check_table(src, f"peers.{peer}", body, _PEER_SPEC)
        elif table != "model":
            _check_table(src, table, values, SCHEMA[table])
    for table in _REQUIRED_TABLES:
        if table not in doc:
            hint = {"job": f' (add:  [job]  protocol = "hetero_fm"; known protocols: {", ".join(PROTOCOLS)})',
                    "peers": " (one [peers.NAME] table per peer, with its public_key and, when this party "
                             "connects, its endpoint)"}.get(table, "")
            raise ConfigError(f"{src}: missing table [{table}]{hint}")
    base = base_dir if base_dir is not None else Path.cwd()

    def path(value: str | None, where: str) -> Path | None:
        if value is None:
            return None
        if not value:
            raise ConfigError(f"{src}: {where} is empty")
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    protocol = doc["job"]["protocol"]
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{src}: [job] protocol {protocol!r} is not known{_suggest(protocol, PROTOCOLS)}; "
                          f"known: {', '.join(PROTOCOLS)}")
    job = PROTOCOLS[protocol]
    party = doc["party"]
    role = party["role"]
    if role not in job.roles:
        raise ConfigError(f"{src}: [party] role must be one of {', '.join(map(repr, job.roles))} (protocol "
                          f"{protocol!r}), got {role!r}{_suggest(role, job.roles)}")
    name = party.get("name", role)
    spec = job.roles[role]
    net_doc = doc["network"]
    network = NetworkConfig(listen=net_doc.get("listen"), key=path(net_doc.get("key"), "[network] key"),
                            insecure=bool(net_doc.get("insecure", False)),
                            **{k: float(net_doc[k]) for k in _TIMEOUTS if k in net_doc})
    for p, body in doc["peers"].items():
        if body.get("endpoint") == "":
            raise ConfigError(f"{src}: [peers.{p}] endpoint is empty")
    peers = {p: PeerConfig(endpoint=body.get("endpoint"),
                           public_key=path(body.get("public_key"), f"[peers.{p}] public_key"))
             for p, body in doc["peers"].items()}
    lo, hi = spec.peers
    if not lo <= len(peers) <= hi:
        count = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
        raise ConfigError(f"{src}: [peers]: role {role!r} of protocol {protocol!r} talks to {count} peer(s), "
                          f"got {len(peers)}{' (' + ', '.join(peers) + ')' if peers else ''}")
    try:
        check_network(network, peers, name)
    except ConfigError as err:
        raise ConfigError(f"{src}: {err}") from None
    data = _data_config(src, protocol, role, doc["data"], path)
    psi_doc = doc.get("psi", {})
    if psi_doc.get("chunk_size", 1) < 1 or psi_doc.get("workers", 0) < 0:
        raise ConfigError(f"{src}: [psi] chunk_size must be >= 1 and workers >= 0")
    if not 0 <= psi_doc.get("buckets", 0) <= MAX_PSI_BUCKETS:
        raise ConfigError(f"{src}: [psi] buckets must be 0 (one session) or 1..{MAX_PSI_BUCKETS}, got "
                          f"{psi_doc['buckets']!r}")
    try:
        compute = ComputeConfig(**doc.get("compute", {}))
    except ValueError as err:
        raise ConfigError(f"{src}: [compute]: {err}") from None
    out_dir = path(doc["output"]["dir"], "[output] dir")
    assert out_dir is not None  # required key
    ads = _ads_config(src, protocol, role, doc.get("ads"))
    return PartyConfig(
        source=Path(src), protocol=protocol, role=role, name=name, peers=peers, network=network, data=data,
        psi=PsiConfig(**psi_doc),
        checkpoint=_checkpoint_config(src, doc.get("checkpoint", {}), out_dir, path),
        output_dir=out_dir, progress=bool(doc["output"].get("progress", True)),
        model=dict(doc.get("model", {})), compute=compute, ads=ads,
        guard=_guard_config(src, protocol, role, doc.get("guard")))


def _guard_config(src: str, protocol: str, role: str, doc: Mapping[str, Any] | None) -> GuardConfig:
    """``[guard]``: only the hetero_fm guest reads it (the host is unaffected)."""
    if doc is None:
        return GuardConfig()
    if protocol != "hetero_fm" or role != "guest":
        raise ConfigError(f"{src}: [guard] is the vertical FM guest's table (protocol 'hetero_fm', role "
                          f"'guest'), not for role {role!r} of protocol {protocol!r}")
    mode = doc.get("mode", "blend")
    if mode not in GUARD_MODES:
        raise ConfigError(f"{src}: [guard] mode must be one of {', '.join(map(repr, GUARD_MODES))}, got "
                          f"{mode!r}{_suggest(str(mode), GUARD_MODES)}")
    return GuardConfig(mode=mode)


def _ads_config(src: str, protocol: str, role: str, doc: Mapping[str, Any] | None) -> AdsConfig:
    """``[ads]``: only the hetero_fm guest (the advertiser) reads it; values checked here, the logistic
    objective when the job starts (``training.hetero_fm_job.prepare_guest``)."""
    if doc is None:
        return AdsConfig()
    if protocol != "hetero_fm" or role != "guest":
        raise ConfigError(f"{src}: [ads] is the advertiser's table (protocol 'hetero_fm', role 'guest'), not "
                          f"for role {role!r} of protocol {protocol!r}")
    refit = doc.get("refit", "off")
    if refit not in ADS_REFIT:
        raise ConfigError(f"{src}: [ads] refit must be one of {', '.join(map(repr, ADS_REFIT))}, got "
                          f"{refit!r}{_suggest(str(refit), ADS_REFIT)}")
    l2 = doc.get("refit_l2", "auto")
    if isinstance(l2, str) and l2 != "auto" or not isinstance(l2, str) and not (
            isinstance(l2, (int, float)) and not isinstance(l2, bool) and 0 < l2 < float("inf")):
        raise ConfigError(f"{src}: [ads] refit_l2 must be a number > 0 or \"auto\" (cross-validated within "
                          f"the training clicks), got {l2!r}")
    return AdsConfig(refit=refit, refit_l2=l2 if isinstance(l2, str) else float(l2))


def _data_config(src: str, protocol: str, role: str, doc: Mapping[str, Any], path: Any) -> DataConfig:
    spec = PROTOCOLS[protocol].roles[role]
    mine = {**spec.required, **spec.optional, **GENERIC_DATA}
    for key in doc:
        if key not in mine:
            owners = [r for r, s in PROTOCOLS[protocol].roles.items()
                      if key in s.required or key in s.optional]
            raise ConfigError(f"{src}: [data] {key} belongs to role {' / '.join(owners)} of protocol "
                              f"{protocol!r}, not to {role!r}; {role!r} reads: {', '.join(sorted(mine))}")
    for key, what in spec.required.items():
        if key not in doc:
            raise ConfigError(f"{src}: missing key [data] {key} ({what})")
    feedback = doc.get("feedback", "explicit")
    if feedback not in FEEDBACK:
        raise ConfigError(f"{src}: [data] feedback must be one of {', '.join(map(repr, FEEDBACK))}, got "
                          f"{feedback!r}")
    scale = doc.get("rating_scale")
    if scale is not None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
        if len(scale) != 2 or not numbers or not scale[0] < scale[1]:
            raise ConfigError(f"{src}: [data] rating_scale must be [min, max] with min < max, e.g. [1, 5]; "
                              f"got {scale!r}")
        if feedback == "implicit":
            raise ConfigError(f"{src}: [data] rating_scale is for rated interactions; feedback = "
                              "\"implicit\" has no rating")
    if feedback == "implicit" and "rating_column" in doc:
        raise ConfigError(f"{src}: [data] rating_column is for rated interactions; feedback = \"implicit\" "
                          "reads events without a rating (user, item, time)")
    weighting = doc.get("event_weighting", "none")
    half_life = doc.get("event_half_life_days", 30.0)
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"{src}: [data] event_weighting must be one of {', '.join(map(repr, WEIGHTINGS))}, "
                          f"got {weighting!r}")
    if ("event_weighting" in doc or "event_half_life_days" in doc) and feedback != "implicit":
        raise ConfigError(f"{src}: [data] event_weighting / event_half_life_days weigh the events of "
                          "feedback = \"implicit\"; rated interactions have no events to count")
    if not half_life > 0:
        raise ConfigError(f"{src}: [data] event_half_life_days must be > 0, got {half_life!r}")
    if "event_half_life_days" in doc and weighting != "recency":
        raise ConfigError(f"{src}: [data] event_half_life_days is for event_weighting = \"recency\", not "
                          f"{weighting!r}")
    columns = {k: doc.get(k, d) for k, d in (("id_column", "user_id"), ("item_id_column", "item_id"),
                                              ("rating_column", "rating"), ("timestamp_column", "timestamp"))}
    named = list(columns.values())
    if len(set(named)) < len(named):
        raise ConfigError(f"{src}: [data] two of id_column, item_id_column, rating_column, timestamp_column "
                          f"name the same column: {columns}")
    return DataConfig(
        **{k: path(doc.get(k), f"[data] {k}") for k in ("interactions", "item_features", "validation",
                                                        "predict", "user_features", "catalogue")},
        **columns, categorical=tuple(doc.get("categorical", ())), feedback=feedback,
        rating_scale=None if scale is None else (float(scale[0]), float(scale[1])),
        event_weighting=weighting, event_half_life_days=float(half_life))


def _checkpoint_config(src: str, doc: Mapping[str, Any], out_dir: Path, path: Any) -> CheckpointConfig:
    every, keep = doc.get("every_batches", 0), doc.get("keep", 2)
    if every < 0:
        raise ConfigError(f"{src}: [checkpoint] every_batches must be >= 0 (0: at epoch ends only), got "
                          f"{every}")
    if keep < 2:
        raise ConfigError(f"{src}: [checkpoint] keep must be >= 2 (a peer may be one checkpoint ahead), got "
                          f"{keep}")
    directory = path(doc.get("dir"), "[checkpoint] dir") or out_dir / "checkpoints"
    if directory == out_dir or directory in out_dir.parents:  # --restart deletes the checkpoint dir
        raise ConfigError(f"{src}: [checkpoint] dir {directory} would hold [output] dir {out_dir}; use a "
                          "directory of its own (default: <output dir>/checkpoints)")
    return CheckpointConfig(dir=directory, every_batches=every, keep=keep)


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


# ---------------------------------------------------------------------------------------------- [model]
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
