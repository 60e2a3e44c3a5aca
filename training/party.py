"""Run one party of a federated vertical-FM training job (guest or host) as its own process.

The party reads its TOML configuration (:mod:`training.config`), opens the CURVE-authenticated ZeroMQ
channel to its peer, aligns user ids with ECDH PSI over that same channel, then trains the vertical FM
of :mod:`fedrec.protocols.hetero_fm` (the guest holds the labels, the item side and the only CKKS secret
key; the host holds user features) and exports its half of the model as artifacts.

Who sees which user ids: PSI reveals the intersection to both parties and each party's set size to the
other. The guest trains on all of its users but passes the intersection to the protocol
(``HeteroFMGuest.fit(..., aligned_users=...)``), which never references any other user to the host —
not even as a count: the others are computed locally with zero host partials, exactly as in the
centralized FM where they have no feature row. The host drops its users outside the intersection
before training (and refuses any request for them).

Artifacts in ``[output] dir`` (arrays ``.npz`` without pickle, JSON metadata)::

    guest:  model/ (FactorizationMachine artifact of the guest fields + hetero.json),
            aligned.csv (aligned_index, id, row_index), summary.json
    host:   model/ (arrays.npz + meta.json of the user-feature field),
            partials.parquet (aligned_index, user_id, z_H, e_H_0..e_H_{k-1}) for the aligned users,
            aligned.csv, summary.json

Scoring joins them: ``z = z_G + z_H + <e_G, e_H>`` (:mod:`training.vertical_scoring`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.config import ConfigError, PartyConfig, build_model_config, load_config

if TYPE_CHECKING:
    import pandas as pd

    from fedrec.psi import PsiResult
    from fedrec.transport import Channel

log = logging.getLogger(__name__)

EPILOG = """examples (keys made once per party with `fedrec keys --out keys --name guest|host`):
  host$  fedrec train --role host  --config training/configs/host.toml
  guest$ fedrec train --role guest --config training/configs/guest.toml

The example configs read the files that `fedrec demo --out artifacts/demo` writes under
artifacts/demo/run/ (data, keys). Exit status: 0 done, 1 error (the party, peer and step on stderr),
2 invalid configuration.
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=("guest", "host"),
                   help="this party's role; must match [party] role in the config")
    p.add_argument("--config", required=True, type=Path, metavar="FILE.toml",
                   help="the party's TOML configuration (see training/configs/*.toml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (overrides [output])")


# ---------------------------------------------------------------------------------------------- channel
def open_channel(cfg: PartyConfig) -> Channel:
    """The authenticated channel to the peer, after it has connected (``connect_timeout``)."""
    # the message types must be registered before the peer's first message can arrive
    import fedrec.protocols.hetero_fm.messages  # noqa: F401
    import fedrec.psi.messages  # noqa: F401
    from fedrec.transport import KeyPair, TransportConfig, ZmqChannel, load_keypair, load_public_key

    net = cfg.network
    tconf = TransportConfig(insecure=net.insecure, recv_timeout=net.recv_timeout,
                            heartbeat_timeout=net.heartbeat_timeout)
    keys: KeyPair | None = None
    peer_key: str | None = None
    if not net.insecure:
        assert net.key is not None and net.peer_key is not None  # checked by the config parser
        keys = load_keypair(net.key)
        peer_key = load_public_key(net.peer_key)
    ch: Channel
    if net.listen is not None:
        peers: Any = {cfg.peer: peer_key} if peer_key else [cfg.peer]
        ch = ZmqChannel.listen(cfg.name, keys, peers, endpoint=net.listen, config=tconf)
        log.info("%s: listening on %s for %r", cfg.name, ch.endpoint, cfg.peer)
    else:
        assert net.connect is not None
        ch = ZmqChannel.connect(cfg.name, keys, cfg.peer, peer_key, net.connect, config=tconf)
    try:
        ch.wait_for_peers(timeout=net.connect_timeout)
    except BaseException:
        ch.close()
        raise
    return ch


# ---------------------------------------------------------------------------------------------- PSI
def align(channel: Channel, cfg: PartyConfig, raw_ids: np.ndarray) -> tuple[PsiResult | None, np.ndarray]:
    """PSI on ``raw_ids`` (unique); returns the result and a boolean mask of the common ones.

    With ``[psi] enabled = false`` the ids are taken as already aligned (every one is common)."""
    from fedrec.psi import encode_ids, run_psi

    if not cfg.psi.enabled:
        log.warning("%s: [psi] enabled = false: all %d ids are taken as aligned", cfg.name, len(raw_ids))
        return None, np.ones(len(raw_ids), dtype=bool)
    ids = encode_ids(raw_ids.tolist(), source=f"{cfg.role} user ids")
    result = run_psi(channel, cfg.peer, ids, role=cfg.role, chunk_size=cfg.psi.chunk_size,
                     workers=cfg.psi.workers or None, timeout=cfg.network.recv_timeout, progress=cfg.progress)
    common = np.zeros(len(raw_ids), dtype=bool)
    common[result.rows] = True
    log.info("%s: PSI: %d common ids (mine %d, peer %d) in %.1fs", cfg.name, result.intersection_size,
             len(raw_ids), result.peer_size, result.seconds)
    return result, common


def _write_alignment(out: Path, raw_ids: np.ndarray, psi: PsiResult | None, common: np.ndarray) -> None:
    from fedrec.psi import write_aligned

    if psi is not None:
        write_aligned(out / "aligned.csv", psi.ids, psi.rows)
    else:
        rows = np.flatnonzero(common)
        write_aligned(out / "aligned.csv", [str(x).encode() for x in raw_ids[rows]], rows)


def _model_config(cfg: PartyConfig) -> Any:
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    values = dict(cfg.model)
    values.setdefault("show_progress", cfg.progress)
    return build_model_config(HeteroFMConfig, values, str(cfg.source))


# ---------------------------------------------------------------------------------------------- guest
def _read_guest_data(cfg: PartyConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    from fedrec.data import read_interactions, read_side_table

    d = cfg.data
    cols = {d.id_column: "user_id", d.item_id_column: "item_id"}
    assert d.interactions is not None
    inter, report = read_interactions(d.interactions, columns=cols)
    log.info("guest: %s: %d interactions", d.interactions, len(inter))
    items = None
    if d.item_features is not None:
        items, _ = read_side_table(d.item_features, id_column=d.item_id_column, categorical=d.categorical,
                                   known_ids=set(inter["item_id"]), unknown="drop")
        log.info("guest: %s: features of %d items (rows of items without interactions dropped)",
                 d.item_features, len(items))
    val = None
    if d.validation is not None:
        val, _ = read_interactions(d.validation, columns=cols)
    return inter, items, val


def run_guest(cfg: PartyConfig, channel: Channel) -> dict[str, Any]:
    """Align, train with the host, export the guest half; returns the run summary."""
    import pandas as pd

    from fedrec.protocols.hetero_fm import HeteroFMGuest
    from fedrec.psi.ids import normalize_id

    mcfg = _model_config(cfg)
    inter, items, val = _read_guest_data(cfg)
    t0 = time.perf_counter()
    raw_users = np.asarray(pd.unique(inter["user_id"]))
    psi, common = align(channel, cfg, raw_users)
    t_psi = time.perf_counter() - t0
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    _write_alignment(cfg.output_dir, raw_users, psi, common)
    # the protocol's ids are str(raw id), which is the PSI normalisation of a valid (str or int) id
    aligned = [normalize_id(u, row) for row, u in zip(np.flatnonzero(common).tolist(),
                                                      raw_users[common].tolist(), strict=True)]
    guest = HeteroFMGuest(channel, host=cfg.peer, config=mcfg)
    t1 = time.perf_counter()
    guest.fit(inter, item_features=items, validation=val, aligned_users=aligned)
    t_fit = time.perf_counter() - t1
    guest.close("training finished")
    model_dir = guest.save(cfg.output_dir / "model")
    summary = {
        "role": "guest", "name": cfg.name, "peer": cfg.peer, "backend": mcfg.backend,
        "n_interactions": len(inter), "n_users": len(raw_users), "n_aligned": int(common.sum()),
        "psi_seconds": round(t_psi, 3), "fit_seconds": round(t_fit, 3),
        "epoch_seconds_total": round(guest.timings["epoch_seconds"], 3),
        "epochs_run": len(guest.history.train_loss), "best_epoch": guest.history.best_epoch,
        "history": guest.history.to_json(), "clipped_values": guest.clipped_values,
        "model_dir": str(model_dir),
    }
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------- host
def run_host(cfg: PartyConfig, channel: Channel) -> dict[str, Any]:
    """Align, serve the guest's training, export the host half and the aligned users' partials."""
    from fedrec.data import read_side_table
    from fedrec.protocols.hetero_fm import HeteroFMHost

    mcfg = _model_config(cfg)
    d = cfg.data
    assert d.user_features is not None
    table, _ = read_side_table(d.user_features, id_column=d.id_column, categorical=d.categorical)
    table.index.name = "user_id"
    log.info("host: %s: %d users, %d feature columns", d.user_features, len(table), table.shape[1])
    t0 = time.perf_counter()
    raw_users = table.index.to_numpy()
    psi, common = align(channel, cfg, raw_users)
    t_psi = time.perf_counter() - t0
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    _write_alignment(cfg.output_dir, raw_users, psi, common)
    if not common.any():
        raise RuntimeError(f"host: PSI with {cfg.peer!r} found no common users; nothing to train on")
    # rows in the aligned order, so the partials export is indexed like aligned.csv
    rows = psi.rows if psi is not None else np.flatnonzero(common)
    aligned = table.iloc[rows]
    host = HeteroFMHost(channel, guest=cfg.peer, config=mcfg)
    t1 = time.perf_counter()
    host.serve(aligned)
    t_fit = time.perf_counter() - t1
    model_dir = host.save(cfg.output_dir / "model")
    partials = host.export_partials(aligned.index.tolist())
    partials.insert(0, "aligned_index", np.arange(len(partials), dtype=np.int64))
    partials["user_id"] = partials["user_id"].astype(str)
    partials.to_parquet(cfg.output_dir / "partials.parquet", index=False)
    summary = {
        "role": "host", "name": cfg.name, "peer": cfg.peer, "backend": mcfg.backend,
        "n_users": len(table), "n_aligned": int(common.sum()), "psi_seconds": round(t_psi, 3),
        "serve_seconds": round(t_fit, 3), "rejected_requests": host.rejected,
        "privacy_epsilon": host.privacy_spent(), "model_dir": str(model_dir),
        "partials": str(cfg.output_dir / "partials.parquet"),
    }
    (cfg.output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def run_party(cfg: PartyConfig) -> dict[str, Any]:
    """Open the channel and run ``cfg.role``; the channel is closed whatever happens."""
    import torch

    # the parties take turns (one computes while the other waits); one torch thread each avoids
    # oversubscribing the cores they share with the peer and with CKKS
    torch.set_num_threads(1)
    channel = open_channel(cfg)
    try:
        return run_guest(cfg, channel) if cfg.role == "guest" else run_host(cfg, channel)
    finally:
        channel.close()


def run(args: argparse.Namespace) -> int:
    from fedrec.data import DataValidationError
    from fedrec.protocols.hetero_fm.messages import HeteroFMError
    from fedrec.psi import IdError
    from fedrec.transport import TransportError

    prefix = f"fedrec train ({args.role})"
    try:
        cfg = load_config(args.config)
        if cfg.role != args.role:
            raise ConfigError(f"{args.config}: [party] role is {cfg.role!r} but --role is {args.role!r}")
    except ConfigError as err:
        print(f"{prefix}: invalid configuration: {err}", file=sys.stderr)
        return 2
    if args.no_progress:
        cfg = _replace(cfg, progress=False)
    t0 = time.perf_counter()
    try:
        summary = run_party(cfg)
    except ConfigError as err:
        print(f"{prefix}: invalid configuration: {err}", file=sys.stderr)
        return 2
    except (TransportError, HeteroFMError) as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        return 1
    except (DataValidationError, IdError, FileNotFoundError, OSError, ValueError, RuntimeError) as err:
        print(f"{prefix}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{cfg.name}: done in {time.perf_counter() - t0:.1f}s: {summary['n_aligned']} aligned users, "
          f"artifacts in {cfg.output_dir}")
    return 0


def _replace(cfg: PartyConfig, **changes: Any) -> PartyConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.party --role ... --config ...`` (same as ``fedrec train``)."""
    from training.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
