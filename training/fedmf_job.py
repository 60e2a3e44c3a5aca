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

Checkpoints (``[checkpoint]``, default ``<output dir>/checkpoints``; :mod:`fedrec.protocols.fedmf.state`):
the server checkpoints after the set-up and after every ``every_batches``-th round (for FedMF a
*round* is the unit: ``0`` or ``1``: every round) and after the last one, each client when the server
asks; ``keep`` as for every protocol. Running ``fedrec train`` again with the same configs after a crash
(of the server, of clients, or of all) resumes every party from the newest round the server and the
clients both hold, with the same key; ``--restart`` (on every party) starts over. The server's
checkpoints hold ``Enc(θ_R)`` and the public context; a client's hold its users' factors and the
**secret** CKKS context (files 0600 in 0700 directories: the key that decrypts the model).

Outputs in ``[output] dir`` (``summary.json`` last, by :mod:`training.party`)::

    server:  summary.json (rounds, timings, failures, upload sizes) and checkpoints/: nothing it could decrypt
    client:  bundle/ (a serving bundle of its own users over the whole catalogue:
             ``fedrec recommend --model OUT/bundle ...``), summary.json
"""

from __future__ import annotations

import json
import logging
import sys
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


def model_config(cfg: PartyConfig) -> Any:
    """The protocol's config from ``[model]`` (:class:`~training.config.ConfigError` naming the key)."""
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


def read_ratings(path: Path, user_column: str = "user_id", item_column: str = "item_id",
                 rating_column: str = "rating") -> pd.DataFrame:
    """``user_id, item_id, rating`` rows of a CSV/TSV/Parquet file (a ``timestamp`` column is optional),
    validated as an interaction table (any finite rating); errors name the file, line and column."""

    from fedrec.data import DataValidationError, validate_interactions
    from fedrec.data.tables import read_delimited, read_parquet

    if not path.is_file():
        raise FileNotFoundError(f"[data] interactions: {path} does not exist")
    suffix = path.suffix.lower()
    lines: np.ndarray | None = None
    issues: tuple[Issue, ...] = ()
    kind: RowKind = "row"
    if suffix in (".parquet", ".pq"):
        raw = read_parquet(path)  # the validated reader: errors name the file, row and column
    elif suffix in (".csv", ".tsv", ".txt"):
        tt = read_delimited(path, sep="," if suffix == ".csv" else "\t", header=True)
        raw, lines, issues, kind = tt.frame, tt.line_numbers, tt.issues, "line"
    else:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .csv, .tsv or "
                         ".parquet")
    frame = raw.rename(columns={user_column: "user_id", item_column: "item_id", rating_column: "rating"})
    named = {"user_id": (user_column, "id_column"), "item_id": (item_column, "item_id_column"),
             "rating": (rating_column, "rating_column")}
    for col, (name, key) in named.items():
        if col not in frame.columns:
            raise DataValidationError(f"{path}, column {name!r}: missing ([data] {key}); the ratings file "
                                      f"has {list(map(str, raw.columns))}", source=str(path), column=name,
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
    r = np.asarray(client.data.r, dtype=np.float64)  # this silo's own ratings: the scale it reports in
    bundle = ServingBundle(
        kind="factors", user_map=IdMap(f["user_ids"], kind="user"),
        item_map=IdMap(f["item_ids"], kind="item"),
        a_u=f["a_u"].astype(np.float32), p_u=f["p_u"].astype(np.float32), b_i=f["b_i"].astype(np.float32),
        q_i=f["q_i"].astype(np.float32), seen_indptr=f["seen_indptr"], seen_indices=f["seen_indices"], at=0,
        source={"model_class": "FedMF", "hyperparameters": {"n_factors": client.config.n_factors},
                "client": client.name}, run_id=f["run_id"], origin=f"<fedmf client {client.name}>",
        score_kind="predicted_rating", rating_scale=(float(r.min()), float(r.max())) if r.size else None)
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
    mcfg = model_config(cfg)
    assert cfg.data.catalogue is not None
    catalogue = read_catalogue(cfg.data.catalogue, cfg.data.item_id_column)
    server = FedMFServer.over_channel(run.channel, _client_keys(cfg), mcfg, catalogue,
                                      checkpoint=run.checkpoint, executor=run.executor)
    log.info("server: %d client(s), catalogue of %d items, backend %s, %d round(s)", len(cfg.peers),
             len(catalogue), mcfg.backend, mcfg.rounds)
    t0 = time.perf_counter()
    server.run()
    summary = server.summary()
    return {"role": "server", "name": cfg.name, "peers": sorted(cfg.peers), "n_aligned": summary["in_job"],
            "alignment": "none (horizontal: the parties share the catalogue)", "n_items": len(catalogue),
            "fit_seconds": round(time.perf_counter() - t0, 3), "resumed_from_round": server.resumed_from,
            **summary}


def run_client(run: PartyRun) -> dict[str, Any]:
    """Serve the server's rounds, then export the serving bundle of our users."""
    from fedrec import faults
    from fedrec.protocols.fedmf import FedMFClient, client_data

    cfg = run.cfg
    mcfg = model_config(cfg)
    assert cfg.data.catalogue is not None and cfg.data.interactions is not None
    catalogue = read_catalogue(cfg.data.catalogue, cfg.data.item_id_column)
    ratings = read_ratings(cfg.data.interactions, cfg.data.id_column, cfg.data.item_id_column,
                           cfg.data.rating_column)
    data, users, cat = client_data(ratings, catalogue)
    log.info("client %s: %d ratings of %d users; catalogue of %d items", cfg.name, len(ratings), len(users),
             len(cat))
    client = FedMFClient(run.channel, data, mcfg, name=cfg.name, keys=_x25519(cfg), server=run.peer,
                         user_raw=users, catalogue=cat, checkpoint=run.checkpoint)
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
            "resumed_from_round": client.resumed_from, "bundle": str(path)}


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


# ---------------------------------------------------------------------------------------------- demo
def run_demo(args: Any) -> int:
    """``fedrec demo --protocol fedmf``: the built-in data (or ML-100K) split 90/10, the training users
    dealt to ``--clients`` silos; a server and one process per silo train over CURVE sockets
    (``fedrec train``), while this process fits fedrec's centralized ``BiasedMF`` on the same rows; the
    test RMSE of the federated model (each test user scored from its own silo's bundle) against it."""
    import pandas as pd

    from fedrec.data import DataValidationError, random_split
    from fedrec.data.partition import horizontal_split
    from fedrec.models import BiasedMF
    from training.demo import load_dataset
    from training.launcher import PartyFailed, PartyGroup, train_command

    t0 = time.perf_counter()
    if args.backend not in ("ckks", "plain"):
        print(f"fedrec demo: --protocol fedmf runs with --backend ckks or plain, not {args.backend}",
              file=sys.stderr)
        return 2
    try:
        ds = load_dataset(args)
    except (FileNotFoundError, DataValidationError, ValueError) as err:
        print(f"fedrec demo: {err}", file=sys.stderr)
        return 1
    train, test = random_split(ds.interactions, test_fraction=0.1, seed=args.seed)
    catalogue = sorted(ds.interactions["item_id"].unique().tolist())
    parts = horizontal_split(train, args.clients, seed=args.seed)
    clients = {f"silo{j + 1}": p[["user_id", "item_id", "rating"]] for j, p in enumerate(parts)}
    model = {"backend": args.backend, "n_factors": args.factors, "rounds": args.rounds, "seed": args.seed,
             "masks": args.clients >= 3, "timeout": 300.0}
    if args.dataset == "synthetic":  # less regularization than ML-100K's defaults (benchmarks/fedmf.py)
        model.update(l2=0.06, l2_bias=0.05)
    files = write_run(clients, catalogue, args.out, model)
    print(f"[1/3] {ds.name}: {len(train)} train ratings of {train['user_id'].nunique()} users dealt to "
          f"{len(clients)} silos, {len(catalogue)} items; test {len(test)}; files, keys and configs in "
          f"{files.run_dir}; starting the server and {len(clients)} client processes ({args.backend}, "
          f"secure aggregation {'on' if model['masks'] else 'off'})", flush=True)
    with PartyGroup() as group:
        group.start("server", train_command("server", files.server_config, progress=False, restart=True),
                    files.run_dir / "server.log")
        for name, config in files.client_configs.items():
            group.start(name, train_command("client", config, progress=False, restart=True),
                        files.run_dir / f"{name}.log")
        tc = time.perf_counter()
        central = BiasedMF(n_factors=args.factors, seed=args.seed).fit(train)
        central_s = time.perf_counter() - tc
        try:
            group.wait(timeout=args.timeout or 900.0)
        except PartyFailed as err:
            print(f"fedrec demo: {err}", file=sys.stderr)
            return 1
    server = json.loads((files.server_out / "summary.json").read_text())
    print(f"[2/3] {server['rounds']} rounds in {server['fit_seconds']:.1f}s (median round "
          f"{float(np.median(server['round_seconds'])):.2f}s, upload {server['upload_bytes'] / 1e6:.2f} MB "
          f"per client); BiasedMF fitted in {central_s:.1f}s", flush=True)
    from serving.scorer import Scorer

    pred = pd.Series(np.nan, index=test.index)
    for name, out in files.client_outs.items():
        scorer = Scorer.load(out / BUNDLE)
        mine = test["user_id"].isin(set(clients[name]["user_id"]))
        if mine.any():
            rows = test[mine]
            pred[mine] = _bundle_predict(scorer.bundle, rows)
    unknown = pred.isna()
    if unknown.any():  # users with every rating in the test set: μ + b_i of any silo's bundle
        any_bundle = Scorer.load(next(iter(files.client_outs.values())) / BUNDLE).bundle
        pred[unknown] = _bundle_predict(any_bundle, test[unknown])
    y = test["rating"].to_numpy(dtype=np.float64)
    lo, hi = float(train["rating"].min()), float(train["rating"].max())
    fed = float(np.sqrt(np.mean((np.clip(pred.to_numpy(), lo, hi) - y) ** 2)))
    cen = float(np.sqrt(np.mean((central.predict(test) - y) ** 2)))
    result = {"dataset": ds.name, "clients": len(clients), "backend": args.backend, "model": model,
              "federated_rmse": fed, "central_biasedmf_rmse": cen, "test_users_unknown": int(unknown.sum()),
              "server": server, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[3/3] test RMSE: federated MF {fed:.4f}, centralized BiasedMF {cen:.4f} "
          f"({100 * (fed / cen - 1):+.2f}%); a silo's bundle serves its users: fedrec recommend --model "
          f"{files.client_outs[next(iter(clients))] / BUNDLE} --users USERS --out recs.csv")
    out_json = args.json or args.out / "results.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1, default=str))
    print(f"results {out_json}; total {result['seconds']}s")
    return 0


def _bundle_predict(bundle: Any, rows: pd.DataFrame) -> np.ndarray:
    """``a_u + b_i + <p_u, q_i>`` from a serving bundle (an unknown user: ``b_i``)."""
    u = bundle.user_map.to_inner(rows["user_id"].tolist(), unknown="mask", match="key")
    i = bundle.item_map.to_inner(rows["item_id"].tolist(), unknown="raise", match="key")
    known = u >= 0
    su = np.where(known, u, 0)
    return (np.where(known, bundle.a_u[su], 0.0) + bundle.b_i[i]
            + np.einsum("nk,nk->n", bundle.p_u[su] * known[:, None], bundle.q_i[i]))
