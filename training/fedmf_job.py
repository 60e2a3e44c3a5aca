"""The two role runners of the ``fedmf`` job (horizontal federated MF, :mod:`fedrec.protocols.fedmf`).

The server listens (it is the hub: every client connects to it over CURVE) and drives the rounds; each
client serves it. No PSI: the parties share items (the catalogue), not users. Every party reads the
same catalogue file (``[data] catalogue``: a CSV/TSV/Parquet with an ``item_id`` column, in the agreed
order; other columns are ignored); its size and SHA-256 are agreed in the ``Hello``. A client reads its
ratings from ``[data] interactions`` (``user_id, item_id, rating``; a ``timestamp`` is optional), through
the validated table readers: every error names the file, the line and the column.

Keys: each party's CURVE key pair is also its X25519 key for the sealed CKKS key (:mod:`.keys` of the
protocol). The server relays the roster from its ``[peers.NAME] public_key`` files, so they are required
even with ``[network] insecure = true``; a client needs its ``[network] key`` file for the same reason.

Outputs in ``[output] dir`` (``summary.json`` last, by :mod:`training.party`)::

    server:  summary.json only (rounds, timings, failures, upload sizes): nothing it could decrypt
    client:  bundle/ (a serving bundle of its own users over the whole catalogue:
             ``fedrec recommend --model OUT/bundle ...``), summary.json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.config import PartyConfig, build_model_config
from training.jobs import PartyRun

if TYPE_CHECKING:
    import pandas as pd

    from fedrec.data.schema import Issue, RowKind
    from fedrec.protocols.fedmf import FedMFClient

log = logging.getLogger(__name__)

BUNDLE = "bundle"


def _model_config(cfg: PartyConfig) -> Any:
    from fedrec.protocols.fedmf import FedMFConfig

    values = dict(cfg.model)
    values.setdefault("show_progress", cfg.progress)
    return build_model_config(FedMFConfig, values, str(cfg.source))


def read_catalogue(path: Path, item_column: str = "item_id") -> list[Any]:
    """The item ids of a catalogue file in file order (validated: no missing or repeated id)."""
    from fedrec.data import read_side_table

    if not path.is_file():
        raise FileNotFoundError(f"[data] catalogue: {path} does not exist")
    table, _ = read_side_table(path, id_column=item_column)
    if not len(table):
        raise ValueError(f"[data] catalogue: {path} lists no item")
    return table.index.tolist()


def read_ratings(path: Path, user_column: str = "user_id", item_column: str = "item_id") -> pd.DataFrame:
    """``user_id, item_id, rating`` rows of a CSV/TSV/Parquet file (a ``timestamp`` column is optional),
    validated as an interaction table (any finite rating); errors name the file, line and column."""
    import pandas as pd

    from fedrec.data import DataValidationError, validate_interactions
    from fedrec.data.tables import read_delimited

    if not path.is_file():
        raise FileNotFoundError(f"[data] interactions: {path} does not exist")
    suffix = path.suffix.lower()
    lines: np.ndarray | None = None
    issues: tuple[Issue, ...] = ()
    kind: RowKind = "row"
    if suffix in (".parquet", ".pq"):
        raw = pd.read_parquet(path).reset_index(drop=True)
    elif suffix in (".csv", ".tsv", ".txt"):
        tt = read_delimited(path, sep="," if suffix == ".csv" else "\t", header=True)
        raw, lines, issues, kind = tt.frame, tt.line_numbers, tt.issues, "line"
    else:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .csv, .tsv or "
                         ".parquet")
    frame = raw.rename(columns={user_column: "user_id", item_column: "item_id"})
    for col in ("user_id", "item_id", "rating"):
        if col not in frame.columns:
            raise DataValidationError(f"{path}, column {col!r}: missing; the ratings file has "
                                      f"{list(map(str, raw.columns))}", source=str(path), column=col,
                                      reason="missing_column")
    if "timestamp" not in frame.columns:  # distinct, so two ratings of a pair are not duplicates
        frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    ratings, _ = validate_interactions(frame, source=str(path), rating_scale=None,
                                       id_type="auto" if kind == "line" else None, line_numbers=lines,
                                       prior_issues=issues, row_kind=kind)
    return ratings[["user_id", "item_id", "rating"]].reset_index(drop=True)


def write_bundle(client: FedMFClient, directory: Path) -> Path:
    """The client's serving bundle (:meth:`FedMFClient.factors` as a ``factors`` :class:`ServingBundle`)."""
    from fedrec.data.idmap import IdMap
    from serving.artifacts import ServingBundle

    f = client.factors()
    bundle = ServingBundle(
        kind="factors", user_map=IdMap(f["user_ids"], kind="user"),
        item_map=IdMap(f["item_ids"], kind="item"),
        a_u=f["a_u"].astype(np.float32), p_u=f["p_u"].astype(np.float32), b_i=f["b_i"].astype(np.float32),
        q_i=f["q_i"].astype(np.float32), seen_indptr=f["seen_indptr"], seen_indices=f["seen_indices"], at=0,
        source={"model_class": "FedMF", "hyperparameters": {"n_factors": client.config.n_factors},
                "client": client.name}, run_id=f["run_id"], origin=f"<fedmf client {client.name}>")
    return Path(bundle.save(directory))


def _x25519(cfg: PartyConfig) -> Any:
    from fedrec.crypto.sealed import X25519Keys, raw_key
    from fedrec.transport.keys import load_keypair

    if cfg.network.key is None:
        raise ValueError(f"{cfg.source}: [network] key is required by fedmf (the CURVE key pair is also the "
                         "X25519 key the CKKS key is sealed to), even with insecure = true")
    pair = load_keypair(cfg.network.key)
    return X25519Keys(raw_key(pair.public), raw_key(pair.secret))


def _client_keys(cfg: PartyConfig) -> dict[str, bytes]:
    from fedrec.crypto.sealed import raw_key
    from fedrec.transport.keys import load_public_key

    out = {}
    for name, peer in cfg.peers.items():
        if peer.public_key is None:
            raise ValueError(f"{cfg.source}: [peers.{name}] public_key is required by fedmf (relayed to the "
                             "clients for the sealed key set-up), even with insecure = true")
        out[name] = raw_key(load_public_key(peer.public_key))
    return out


def run_server(run: PartyRun) -> dict[str, Any]:
    """Drive the training; returns the run summary (the server writes nothing else)."""
    from fedrec.protocols.fedmf import FedMFServer

    cfg = run.cfg
    mcfg = _model_config(cfg)
    assert cfg.data.catalogue is not None
    catalogue = read_catalogue(cfg.data.catalogue, cfg.data.item_id_column)
    server = FedMFServer.over_channel(run.channel, _client_keys(cfg), mcfg, catalogue)
    log.info("server: %d client(s), catalogue of %d items, backend %s, %d round(s)", len(cfg.peers),
             len(catalogue), mcfg.backend, mcfg.rounds)
    t0 = time.perf_counter()
    server.run()
    summary = server.summary()
    return {"role": "server", "name": cfg.name, "peers": sorted(cfg.peers), "n_aligned": summary["in_job"],
            "alignment": "none (horizontal: the parties share the catalogue)", "n_items": len(catalogue),
            "fit_seconds": round(time.perf_counter() - t0, 3), **summary}


def run_client(run: PartyRun) -> dict[str, Any]:
    """Serve the server's rounds, then export the serving bundle of our users."""
    from fedrec import faults
    from fedrec.protocols.fedmf import FedMFClient, client_data

    cfg = run.cfg
    mcfg = _model_config(cfg)
    assert cfg.data.catalogue is not None and cfg.data.interactions is not None
    catalogue = read_catalogue(cfg.data.catalogue, cfg.data.item_id_column)
    ratings = read_ratings(cfg.data.interactions, cfg.data.id_column, cfg.data.item_id_column)
    data, users, cat = client_data(ratings, catalogue)
    log.info("client %s: %d ratings of %d users; catalogue of %d items", cfg.name, len(ratings), len(users),
             len(cat))
    client = FedMFClient(run.channel, data, mcfg, name=cfg.name, keys=_x25519(cfg), server=run.peer,
                         user_raw=users, catalogue=cat)
    t0 = time.perf_counter()
    client.serve()
    if not client.finished:
        raise RuntimeError(f"client {cfg.name}: the server ended the job before training finished (this "
                           "client was left out or the server failed; see the server's log)")
    faults.reached("job/export/bundle")
    path = write_bundle(client, cfg.output_dir / BUNDLE)
    return {"role": "client", "name": cfg.name, "peer": run.peer, "backend": mcfg.backend,
            "n_ratings": len(ratings), "n_users": len(users), "n_aligned": len(users),
            "alignment": "none (horizontal)", "rounds_taken_part": len(set(client.rounds_done)),
            "clipped_values": client.clipped, "fit_seconds": round(time.perf_counter() - t0, 3),
            "timings": {k: round(v, 3) for k, v in client.timings.items()}, "run_id": client.run_id,
            "bundle": str(path)}


# ---------------------------------------------------------------------------------------------- run files
@dataclass(frozen=True)
class FedMFRunFiles:
    """Where :func:`write_run` put everything: configs per party and output directories."""

    run_dir: Path
    server_config: Path
    client_configs: dict[str, Path]
    server_out: Path
    client_outs: dict[str, Path]


def write_run(clients: Mapping[str, pd.DataFrame], catalogue: Sequence[Any], out: Path, model: dict[str, Any],
              network: dict[str, Any] | None = None) -> FedMFRunFiles:
    """A server and one client per entry of ``clients`` (name -> ``user_id, item_id, rating`` rows): data
    files (``run/NAME/ratings.csv``, ``run/catalogue.csv``), a CURVE key pair each (``run/keys``) and
    TOML configs (``run/server.toml``, ``run/NAME.toml``) under ``out/run``; outputs go to ``out/NAME``.
    The server listens on a free port of 127.0.0.1. ``network`` overrides the ``[network]`` timeouts."""
    import pandas as pd

    from fedrec.transport import write_keypair
    from training.demo import _free_port, _toml

    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": list(catalogue)}).to_csv(run / "catalogue.csv", index=False)
    for name in ("server", *clients):
        write_keypair(run / "keys", name, force=True)
    addr = f"tcp://127.0.0.1:{_free_port()}"
    net = {"connect_timeout": 120.0, "recv_timeout": 300.0, "heartbeat_timeout": 15.0, **(network or {})}
    job = {"protocol": "fedmf"}
    server: dict[str, dict[str, Any]] = {
        "job": job, "party": {"role": "server", "name": "server"},
        "network": {"listen": addr, "key": "keys/server.key_secret", **net},
        **{f"peers.{n}": {"public_key": f"keys/{n}.key"} for n in clients},
        "data": {"catalogue": "catalogue.csv"}, "model": model,
        "output": {"dir": "../server", "progress": False}}
    (run / "server.toml").write_text(_toml(server), encoding="utf-8")
    configs = {}
    for name, rows in clients.items():
        (run / name).mkdir(exist_ok=True)
        rows[["user_id", "item_id", "rating"]].to_csv(run / name / "ratings.csv", index=False)
        doc = {"job": job, "party": {"role": "client", "name": name},
               "network": {"key": f"keys/{name}.key_secret", **net},
               "peers.server": {"endpoint": addr, "public_key": "keys/server.key"},
               "data": {"interactions": f"{name}/ratings.csv", "catalogue": "catalogue.csv"}, "model": model,
               "output": {"dir": f"../{name}", "progress": False}}
        configs[name] = run / f"{name}.toml"
        configs[name].write_text(_toml(doc), encoding="utf-8")
    return FedMFRunFiles(run, run / "server.toml", configs, out / "server", {n: out / n for n in clients})
