"""Run the end-to-end federated demo: two party processes train a vertical FM over CKKS and ZeroMQ.

Steps: (1) data — the seeded synthetic dataset (or MovieLens 100K / 1M with ``--dataset ml-100k`` /
``ml-1m``, read from ``--data-dir``; without the files, an error naming what to download from GroupLens
and where, since the data may not be redistributed and a synthetic stand-in under the MovieLens name
would be quoted as MovieLens results; ``synthetic-ml1m`` is a synthetic set of ML-1M's shape), split
90/10 into train/test (``random_split``; on MovieLens 10% of the users first become cold, see
:func:`split`); the train rows go to the guest (the bank: ratings + item
features), the user features to the host (``vertical_split(host_user_fraction=0.9,
n_host_only_users=10% of users)``, so each party has users the other lacks); each party's files,
a fresh CURVE key pair per party and a TOML config per party are written under ``OUT/run``.
(2) The host and the guest start as separate OS processes (``fedrec train --role ...``) talking over
CURVE-encrypted ZeroMQ on 127.0.0.1: PSI aligns their user ids, then the guest trains the vertical FM with
the host under CKKS (the guest holds the only secret key) and both export their halves. (3) Meanwhile
this process fits the references on the same train rows: the guest-only FM (the bank alone) and the
centralized FM on the pooled data (an upper bound no real deployment has). (4) The federated model is
scored from the two exported halves (guest model + host partials) and all three are compared on every
test user and on cold users (<= 5 train ratings) with bootstrap CIs, beside the guarded model the bank is
handed: the guest's blend ``(1 - alpha) * bank alone + alpha * federated`` (``[guard]``,
:mod:`fedrec.models.guard`; alpha chosen by the guest on its validation rows, printed).

Hyperparameters (``n_factors=8, batch_size=4096, lr=0.02, epochs=6``) are chosen for speed: a CKKS batch
costs about the same whatever its number of rows (the cost is per distinct user in it), so few large
batches with a larger step keep the federated run near a minute (measured: 8 s per CKKS epoch, ~95 s for
the whole demo on 2 shared cores). Against the FM defaults (512-row batches, lr 1e-3, 32 factors, up
to 60 epochs, 100-170 s per reference fit) the test RMSE is ~0.04 higher for every model (guest-only
0.629 vs 0.592, centralized 0.622 vs 0.584), but the message is the same: the host's features lower the
cold-user RMSE by 0.035-0.043 (0.789 -> 0.754 here, 0.785 -> 0.742 with the defaults).
If a party fails, the demo names it, prints its stderr tail, stops the other and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EPILOG = """examples:
  fedrec demo                                   # synthetic data, CKKS, artifacts in ./artifacts/demo
  fedrec demo --users 300 --items 60 --epochs 1 # a tiny run (seconds)
  fedrec demo --dataset ml-100k --data-dir ../shared/data/ml-100k
  fedrec demo --dataset ml-1m --data-dir ~/data/ml-1m   # GroupLens's ml-1m.zip, unzipped (it says how)
  fedrec demo --dataset synthetic-ml1m --backend plain  # ML-1M's size, synthetic ratings
  fedrec demo --backend plain --out /tmp/run --json /tmp/run/results.json
  fedrec demo --hosts 2                       # one guest and two hosts (features split between them)
  fedrec demo --protocol fedmf --clients 4   # horizontal MF: a server and 4 silo processes
  fedrec demo --protocol ads                 # federated advertising: advertiser + platform processes
  fedrec demo --protocol ads --data-dir ../shared/data/ads/talkingdata   # the same on TalkingData

The parties can also be run by hand from the files this writes (see training/configs/*.toml):
  fedrec train --role host --config artifacts/demo/run/host.toml &
  fedrec train --role guest --config artifacts/demo/run/guest.toml
"""

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "ml-100k", "ml-1m", "synthetic-ml1m")
#: the files of each MovieLens dataset the demo reads
_MOVIELENS_FILES = {"ml-100k": ("u.data", "u.user", "u.item"),
                    "ml-1m": ("ratings.dat", "users.dat", "movies.dat")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="built-in synthetic data (default); MovieLens 100K or 1M from --data-dir; "
                        "synthetic-ml1m: synthetic ratings of ML-1M's shape (6040 users, 3706 items, "
                        "1,000,209 ratings), reported as synthetic")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the MovieLens folder (ml-100k: u.data, u.user, u.item; ml-1m: ratings.dat, "
                        "users.dat, movies.dat) or its parent; default $FEDREC_DATA_DIR/<dataset> or "
                        "../shared/data/<dataset>")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the splits and the models (0)")
    p.add_argument("--users", type=int, default=None, help="synthetic users (default 2000)")
    p.add_argument("--items", type=int, default=None, help="synthetic items (default 500)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs, federated and references (6)")
    p.add_argument("--factors", type=int, default=8, help="FM factors (8)")
    p.add_argument("--backend", choices=("ckks", "paillier", "plain"), default="ckks",
                   help="crypto backend of the federated run (default ckks; plain = no encryption)")
    p.add_argument("--out", type=Path, default=Path("artifacts/demo"),
                   help="directory for the run files and artifacts (default: artifacts/demo)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results here (default: OUT/results.json)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for the CIs (500)")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up when the parties have not finished after this many seconds (900; 3600 "
                        "on the ML-1M-sized sets, whose CKKS epochs take minutes)")
    p.add_argument("--protocol", choices=("hetero_fm", "fedmf", "ads"), default="hetero_fm",
                   help="hetero_fm: the vertical FM (default); fedmf: horizontal federated MF, a server and "
                        "--clients silo processes (training/fedmf_job.py: run_demo); ads: federated "
                        "advertising, advertiser and platform processes on the synthetic funnel, or on "
                        "TalkingData with --data-dir (training/ads_demo.py)")
    p.add_argument("--hosts", type=int, default=1,
                   help="hetero_fm: host processes (1); with N > 1 the host's feature columns are split "
                        "over N hosts, each holding a different 85%% of the host users (issue #11)")
    p.add_argument("--clients", type=int, default=4, help="fedmf: silo client processes (4)")
    p.add_argument("--rounds", type=int, default=100, help="fedmf: federated rounds (100)")


def _write_guest_files(guest_view: Any, run: Path) -> dict[str, Any]:
    """The guest's interactions (and item table) under ``run/guest``; returns its ``[data]`` table."""
    from fedrec.data import write_table

    write_table(guest_view.interactions, run / "guest" / "interactions.parquet", index=False)
    data: dict[str, Any] = {"interactions": "guest/interactions.parquet"}
    if guest_view.item_features is not None:
        write_table(guest_view.item_features, run / "guest" / "items.parquet")
        data["item_features"] = "guest/items.parquet"
    return data


def _write_multihost_run(guest_view: Any, hosts: dict[str, Any], out: Path, model: dict[str, Any],
                         timeouts: dict[str, float] | None) -> RunFiles:
    from fedrec.data import write_table
    from fedrec.transport import write_keypair

    run = out / "run"
    guest_data = _write_guest_files(guest_view, run)
    for name in ("guest", *hosts):
        write_keypair(run / "keys", name, force=True)
    addr = f"tcp://127.0.0.1:{_free_port()}"
    timeouts = {"connect_timeout": 120.0, "recv_timeout": 300.0, "heartbeat_timeout": 15.0,
                **(timeouts or {})}
    job = {"protocol": "hetero_fm"}
    guest: dict[str, dict[str, Any]] = {"job": job, "party": {"role": "guest", "name": "guest"},
                                        "network": {"listen": addr, "key": "keys/guest.key_secret",
                                                    **timeouts}}
    for h in hosts:  # the guest is the hub: every host connects to it; hosts know only the guest
        guest[f"peers.{h}"] = {"public_key": f"keys/{h}.key"}
    guest.update({"data": guest_data, "psi": {"enabled": True}, "model": model,
                  "output": {"dir": "../guest", "progress": True}})
    (run / "guest.toml").write_text(_toml(guest), encoding="utf-8")
    for h, table in hosts.items():
        write_table(table.rename_axis("user_id"), run / h / "users.parquet")
        doc = {"job": job, "party": {"role": "host", "name": h},
               "network": {"key": f"keys/{h}.key_secret", **timeouts},
               "peers.guest": {"endpoint": addr, "public_key": "keys/guest.key"},
               "data": {"user_features": f"{h}/users.parquet"}, "psi": {"enabled": True}, "model": model,
               "output": {"dir": f"../{h}", "progress": False}}
        (run / f"{h}.toml").write_text(_toml(doc), encoding="utf-8")
    first = next(iter(hosts))
    return RunFiles(run, run / "guest.toml", run / f"{first}.toml", out / "guest", out / first,
                    {h: run / f"{h}.toml" for h in hosts}, {h: out / h for h in hosts})


# ---------------------------------------------------------------------------------------------- data
def load_dataset(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from fedrec.data import SyntheticConfig, generate, load_ml1m, load_ml100k

    if args.dataset in _MOVIELENS_FILES:
        name = args.dataset
        first = _MOVIELENS_FILES[name][0]
        shared = Path(os.environ.get("FEDREC_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared"
                                     / "data"))
        folder = Path(args.data_dir) if args.data_dir is not None else shared / name
        if not (folder / first).is_file() and (folder / name / first).is_file():
            folder = folder / name  # the reference-data folder itself was given
        missing = [f for f in _MOVIELENS_FILES[name] if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(movielens_missing(name, folder, missing))
        return load_ml100k(folder) if name == "ml-100k" else load_ml1m(folder)
    if args.dataset == "synthetic-ml1m":
        return generate(SyntheticConfig.ml1m_shape(seed=args.seed)).dataset
    cfg = SyntheticConfig(seed=args.seed)
    if args.users is not None:
        cfg = replace(cfg, n_users=args.users)
    if args.items is not None:
        cfg = replace(cfg, n_items=args.items)
    return generate(cfg).dataset


def movielens_missing(name: str, folder: Path, missing: list[str]) -> str:
    """What to download and where, when a MovieLens file is not there (GroupLens does not allow
    redistribution, so the data are never shipped; a synthetic stand-in is never reported under the
    MovieLens name: its figures would be quoted as MovieLens results)."""
    from fedrec.data.movielens import MOVIELENS_ZIPS

    spec = MOVIELENS_ZIPS[name]
    parent = folder.parent if folder.name == name else folder
    text = (f"MovieLens {name[3:].upper()} not found: {', '.join(missing)} missing in {folder} (it needs "
            f"{', '.join(_MOVIELENS_FILES[name])}). Download {spec.url} (md5 {spec.md5}) and unzip it so "
            f"that {folder / missing[0]} exists, or let fedrec download and check it: python -c \"from "
            f"fedrec.data.movielens import download_movielens; download_movielens('{name}', '{parent}')\" "
            f"(then --data-dir {parent / spec.folder}). GroupLens does not allow redistributing it, so it is "
            "not shipped")
    if name == "ml-1m":
        text += ("; for a run of ML-1M's size now, `fedrec demo --dataset synthetic-ml1m` (synthetic ratings "
                 "of the same shape, reported as synthetic)")
    return text


def model_table(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[model]`` table both parties get (and the references' FMConfig, minus the protocol keys)."""
    return {"backend": args.backend, "n_factors": args.factors, "batch_size": 4096, "lr": 0.02,
            "epochs": args.epochs, "seed": args.seed, "timeout": 300.0}


@dataclass
class RunFiles:
    run_dir: Path
    guest_config: Path
    host_config: Path
    guest_out: Path
    host_out: Path
    host_configs: dict[str, Path] | None = None
    host_outs: dict[str, Path] | None = None


def split_hosts(features: Any, n_hosts: int, seed: int, keep: float = 0.85) -> dict[str, Any]:
    """The host table's columns dealt round-robin over ``n_hosts`` hosts ``host1..hostN``, each keeping
    a different random ``keep`` share of the users (so users have all, some or none of the hosts)."""
    cols = list(features.columns)
    out = {}
    for j in range(n_hosts):
        rng = np.random.default_rng([seed, 11, j])
        rows = np.sort(rng.choice(len(features), size=int(round(keep * len(features))), replace=False))
        out[f"host{j + 1}"] = features.iloc[rows][cols[j::n_hosts]]
    return out


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    return "\n".join(f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items())
                     for t, body in doc.items())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_run(guest_view: Any, host_view: Any, out: Path, model: dict[str, Any],
              timeouts: dict[str, float] | None = None, hosts: dict[str, Any] | None = None) -> RunFiles:
    """Each party's files, keys and config under ``out/run`` (paths in the configs are relative);
    ``timeouts`` overrides the ``[network]`` timeouts (connect 120 s, receive 300 s, heartbeat 15 s).
    ``hosts``: several hosts' feature tables by name (then ``host_view`` is not used)."""
    if hosts is not None and len(hosts) > 1:
        return _write_multihost_run(guest_view, hosts, out, model, timeouts)
    from fedrec.data import write_table
    from fedrec.transport import write_keypair

    run = out / "run"
    guest_data = _write_guest_files(guest_view, run)
    features = host_view.user_features.rename_axis("user_id")
    write_table(features, run / "host" / "users.parquet")
    for name in ("guest", "host"):
        write_keypair(run / "keys", name, force=True)
    addr = f"tcp://127.0.0.1:{_free_port()}"
    timeouts = {"connect_timeout": 120.0, "recv_timeout": 300.0, "heartbeat_timeout": 15.0,
                **(timeouts or {})}
    job = {"protocol": "hetero_fm"}
    docs: dict[str, dict[str, dict[str, Any]]] = {  # the guest is the hub: it listens, the host connects
        "guest": {"job": job, "party": {"role": "guest", "name": "guest"},
                  "network": {"listen": addr, "key": "keys/guest.key_secret", **timeouts},
                  "peers.host": {"public_key": "keys/host.key"},
                  "data": guest_data, "psi": {"enabled": True}, "model": model,
                  "output": {"dir": "../guest", "progress": True}},
        "host": {"job": job, "party": {"role": "host", "name": "host"},
                 "network": {"key": "keys/host.key_secret", **timeouts},
                 "peers.guest": {"endpoint": addr, "public_key": "keys/guest.key"},
                 "data": {"user_features": "host/users.parquet"}, "psi": {"enabled": True}, "model": model,
                 "output": {"dir": "../host", "progress": False}},
    }
    for name, doc in docs.items():
        (run / f"{name}.toml").write_text(_toml(doc), encoding="utf-8")
    return RunFiles(run, run / "guest.toml", run / "host.toml", out / "guest", out / "host")


# ---------------------------------------------------------------------------------------------- models
def fit_references(train: Any, host_features: Any, item_features: Any, model: dict[str, Any],
                   out: Path) -> dict[str, tuple[Any, float]]:
    """The guest-only FM and the centralized FM (pooled: the host's features joined in the clear)."""
    from fedrec.models import FactorizationMachine
    from fedrec.protocols.hetero_fm import HeteroFMConfig
    from training.demo_report import CENTRALIZED, GUEST_ONLY

    params = HeteroFMConfig(**model).fm_params()
    fitted: dict[str, tuple[Any, float]] = {}
    for name, use_host in ((GUEST_ONLY, False), (CENTRALIZED, True)):
        t0 = time.perf_counter()
        fm = FactorizationMachine(**{**params, "use_user_features": use_host})
        fm.fit(train, user_features=host_features if use_host else None, item_features=item_features)
        fitted[name] = (fm, time.perf_counter() - t0)
        fm.save(out / "reference" / ("centralized" if use_host else "guest_only"))
        log.info("%s: fitted in %.1fs", name, fitted[name][1])
    return fitted


def split(interactions: Any, dataset: str, seed: int) -> tuple[Any, Any]:
    """90/10 ``random_split``. MovieLens users all have >= 20 ratings, so there 10% of the users are
    first made "new" (``pseudo_new_user_split``: their first 5 ratings stay in train, the rest is test)."""
    import pandas as pd

    from fedrec.data import pseudo_new_user_split, random_split

    if dataset == "synthetic":
        return random_split(interactions, test_fraction=0.1, seed=seed)
    rest, new_users = pseudo_new_user_split(interactions, user_fraction=0.1, keep_first=5, seed=seed)
    train, test = random_split(rest, test_fraction=0.1, seed=seed)
    return train.reset_index(drop=True), pd.concat([test, new_users], ignore_index=True)


class _Background(threading.Thread):
    """Runs ``fn`` in a thread; ``result()`` re-raises its exception."""

    def __init__(self, fn: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn, self._args = fn, args
        self._out: Any = None
        self._err: BaseException | None = None

    def run(self) -> None:
        try:
            self._out = self._fn(*self._args)
        except BaseException as exc:  # handed to the caller by result()
            self._err = exc

    def result(self) -> Any:
        self.join()
        if self._err is not None:
            raise self._err
        return self._out


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the PartyGroup, which stops the children


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    import torch

    from fedrec.data import DataValidationError, cold_users, vertical_split
    from fedrec.models.vertical import VerticalFM
    from training.demo_report import GUARDED, evaluate, federated_label, format_table, results_for_json
    from training.launcher import PartyFailed, PartyGroup, train_command

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    torch.set_num_threads(1)  # the two parties need the other cores
    if args.protocol == "fedmf":
        from training.fedmf_job import run_demo

        return run_demo(args)
    if args.protocol == "ads":
        from training.ads_demo import run_demo as run_ads_demo

        return run_ads_demo(args)
    t_start = time.perf_counter()
    try:
        ds = load_dataset(args)
    except (FileNotFoundError, DataValidationError, ValueError) as err:
        print(f"fedrec demo: {err}", file=sys.stderr)
        return 1
    train, test = split(ds.interactions, args.dataset, args.seed)
    n_users = int(ds.interactions["user_id"].nunique())
    gv, hv = vertical_split(ds.with_interactions(train), host_user_fraction=0.9,
                            n_host_only_users=max(1, n_users // 10), seed=args.seed)
    print(f"[1/4] {ds.name}: {n_users} users, {ds.n_items} items, {len(ds.interactions)} ratings -> "
          f"guest {gv.interactions['user_id'].nunique()} users ({len(train)} train ratings), host "
          f"{len(hv.user_features)} users x {hv.user_features.shape[1]} features; test {len(test)} ratings",
          flush=True)
    model = model_table(args)
    n_hosts = getattr(args, "hosts", 1)
    host_tables = split_hosts(hv.user_features, n_hosts, args.seed) if n_hosts > 1 else None
    if (args.out / "results.json").is_file():  # never silently: a campaign may be reading this folder
        print(f"note: {args.out} holds an earlier demo; its run files, models and results are replaced "
              "(--out DIR keeps them apart)", file=sys.stderr, flush=True)
    files = write_run(gv, hv, args.out, model, hosts=host_tables)
    configs = files.host_configs or {"host": files.host_config}
    outs = files.host_outs or {"host": files.host_out}
    print(f"[2/4] party files, CURVE keys and configs in {files.run_dir}; starting "
          f"{'host' if n_hosts == 1 else ', '.join(configs)} and guest processes ({args.backend})",
          flush=True)
    with PartyGroup() as group:
        # --restart: the data were just written, so whatever an earlier demo left in OUT is stale
        for h, conf in configs.items():
            group.start(h, train_command("host", conf, progress=False, restart=True),
                        files.run_dir / f"{h}.log")
        group.start("guest", train_command("guest", files.guest_config, restart=True),
                    files.run_dir / "guest.log", echo=sys.stderr)
        refs = _Background(fit_references, train, hv.user_features, gv.item_features, model, args.out)
        refs.start()
        try:
            group.wait(timeout=args.timeout or (3600.0 if ds.n_users > 5000 else 900.0))
        except PartyFailed as err:
            print(f"fedrec demo: {err}", file=sys.stderr)
            return 1
    fitted = refs.result()
    fit_times = ", ".join(f"{n}: {s:.1f}s" for n, (_, s) in fitted.items())
    print(f"[3/4] parties done; references fitted ({fit_times})", flush=True)
    summaries = {r: json.loads((d / "summary.json").read_text()) for r, d in
                 (("guest", files.guest_out), *outs.items())}
    partials: Any = (files.host_out / "partials.parquet" if n_hosts == 1
                     else {h: d / "partials.parquet" for h, d in outs.items()})
    # the federated model as trained, and what the bank is handed: the guard's blend (fedrec.models.guard)
    scorer = VerticalFM.load(files.guest_out / "model", partials, guard=False)
    guarded = VerticalFM.load(files.guest_out / "model", partials)
    preds = {name: fm.predict(test) for name, (fm, _) in fitted.items()}
    federated = federated_label(1 + n_hosts)  # the guest and each host: one process each
    preds[federated] = scorer.predict(test)
    preds[GUARDED] = guarded.predict(test)
    test_users = test["user_id"].unique()
    no_partials = int((~scorer.partials_for(list(test_users)).found).sum())  # type: ignore[union-attr]
    y = test["rating"].to_numpy(dtype=np.float64)
    cold = test["user_id"].isin(cold_users(train, max_ratings=5)).to_numpy()
    res = evaluate(preds, y, cold, args.n_boot, args.seed, federated=federated)
    seconds = {name: s for name, (_, s) in fitted.items()}
    seconds[federated] = summaries["guest"]["fit_seconds"]
    g = summaries["guest"]
    guard = g.get("guard") or {}
    seconds[GUARDED] = seconds[federated]  # the bank alone is fitted in a thread during the training
    res.update(dataset=ds.name, backend=args.backend, model=model, parties=summaries,
               fallbacks={**scorer.last_fallbacks, "host_partials_users": no_partials,  # rows; users
                          **({"per_host_rows": scorer.last_host_fallbacks} if n_hosts > 1 else {})},
               seconds=round(time.perf_counter() - t_start, 1))
    host_users = "/".join(str(summaries[h]["n_users"]) for h in outs)
    print(f"[4/4] PSI: {g['n_aligned']} common users (guest {g['n_users']}, host{'s' if n_hosts > 1 else ''} "
          f"{host_users}) in {g['psi_seconds']:.1f}s; federated training "
          f"{g['epochs_run']} epochs, {g['epoch_seconds_total'] / max(g['epochs_run'], 1):.1f}s/epoch; "
          f"test users without host partials: {no_partials} "
          "(scored with the guest terms)")
    ldp = g.get("label_dp") or {}
    if ldp.get("on"):
        print(f"label privacy: on, epsilon {ldp['epsilon']:.3g} at delta {ldp['delta']:g} for the whole "
              "training (what the host learns of the ratings; docs/SECURITY.md)\n")
    else:
        print('label privacy: OFF (label_dp = "off")\n')
    if guard.get("status") == "chosen":
        print(f"guard ({guard['mode']}): alpha {guard['alpha']:.2f} chosen on {guard['n_rows']} validation "
              f"rows ({guard['source']}): {guard['metric']} bank alone {guard['bank_alone']:.4f}, federated "
              f"{guard['federated']:.4f}, guarded {guard['blended']:.4f}\n")
    elif guard:
        print(f"guard ({guard.get('mode')}): {guard.get('status')}, alpha {guard.get('alpha')} (the "
              "federated model as trained)\n")
    print(format_table(res, seconds))
    out_json = args.json or args.out / "results.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results_for_json(res, args.out), indent=1, default=str))
    print(f"\nartifacts: {args.out.resolve()}  (guest/, host/, reference/, run/; results {out_json})  "
          f"total {res['seconds']}s")
    return 0
