"""The two role runners of the ``hetero_fm`` job (vertical FM, :mod:`fedrec.protocols.hetero_fm`).

Each reads its files, aligns user ids with the peer (:mod:`training.alignment`: the alignment both
still hold, else PSI), trains through the protocol with checkpoints, and exports its half. Who sees
which user ids: PSI reveals the intersection to both parties and each party's set size to the other.
The guest trains on all of its users but passes the intersection to the protocol
(``fit(..., aligned_users=...)``), which never references any other user to the host, not even as a
count: the others are computed locally with zero host partials, exactly as in the centralized FM
where they have no feature row. The host drops its users outside the intersection before training.

Outputs in ``[output] dir``, written into a stage and put in place only when both parties' are
written (:mod:`fedrec.protocols.commit`: the guest coordinates; ``summary.json`` is placed last)::

    guest:  aligned.csv, alignment.json, model/ (FactorizationMachine artifact of the guest fields +
            hetero.json; the guard's guard.json + bank_alone/, :mod:`training.guard_job`),
            predictions.csv ([data] predict: the pairs + ``prediction``, the guarded model's; with
            alpha < 1 also ``prediction_federated``), refit.json
            ([ads] refit = "campaign": the advertiser's campaign logit refitted beside the host's terms,
            :mod:`fedrec.ads.refit`; then ``prediction`` is the refit's and ``prediction_fm`` the FM's)
    host:   aligned.csv, alignment.json, model/ (the host half),
            partials.parquet (aligned_index, user_id, z_H, e_H_0..e_H_{k-1}) for the aligned users, with
            its fingerprint partials.parquet.meta.json (the run id; fedrec.models.vertical)

Scoring joins the halves: ``z = z_G + z_H + <e_G, e_H>`` (``fedrec recommend`` / :mod:`serving`).

``[compute]`` (docs/SCALE.md): with CKKS, the guest's encryptions and decryptions and the host's products,
masks and serialization run on the party's executor (``process`` or ``ray``); ``local`` (the default)
runs them in the party's process.

Several hosts (issue #11): the guest config has one ``[peers.NAME]`` table per host and listens; it
runs PSI with each host in turn (each alignment in ``alignments/<host>/``), then trains with all of them
(:mod:`fedrec.protocols.hetero_fm.hosts`). Every host runs the unchanged host role (one peer: the
guest) and exports its own ``partials.parquet``; scoring joins the guest half with every host's file
(``VerticalFM.load(model, {host: partials})``; users without one host's row get its zeros, flagged).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.alignment import align
from training.config import ConfigError, PartyConfig, build_model_config
from training.jobs import PartyRun
from training.progress import BatchBar, warn_about_backend

if TYPE_CHECKING:
    import pandas as pd

    from fedrec.data.schema import RowKind
    from fedrec.protocols.hetero_fm import HeteroFMHost

log = logging.getLogger(__name__)

PARTIALS = "partials.parquet"  # + its fingerprint sidecar partials.parquet.meta.json (fedrec.models.vertical)


def model_config(cfg: PartyConfig) -> Any:
    """The protocol's config from ``[model]`` (:class:`~training.config.ConfigError` naming the key)."""
    from fedrec.protocols.hetero_fm import HeteroFMConfig

    values = dict(cfg.model)
    values.setdefault("show_progress", cfg.progress)
    if cfg.data.feedback == "implicit" and cfg.data.event_weighting != "none":
        if values.get("weight_column", "weight") != "weight":
            raise ConfigError(f"{cfg.source}: [model] weight_column = {values['weight_column']!r} and [data] "
                              f"event_weighting = {cfg.data.event_weighting!r}: the events' weights are the "
                              "column 'weight'; drop weight_column")
        values["weight_column"] = "weight"
    return build_model_config(HeteroFMConfig, values, str(cfg.source))


# ---------------------------------------------------------------------------------------------- files
def _read_guest_data(cfg: PartyConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    from fedrec.data import read_side_table

    d = cfg.data
    cols = {d.id_column: "user_id", d.item_id_column: "item_id", d.rating_column: "rating",
            d.timestamp_column: "timestamp"}
    assert d.interactions is not None
    implicit = d.feedback == "implicit"
    objective = cfg.model.get("objective", "regression")
    if implicit and objective != "ranking":
        raise ConfigError(f"{cfg.source}: [data] feedback = \"implicit\" (events without a rating) needs "
                          f"[model] objective = \"ranking\" (sampled negatives), not {objective!r}")
    # a logistic objective's labels are 0/1 (conversions: fedrec ads), ratings are 1..5 unless configured
    scale = d.rating_scale or ((0.0, 1.0) if objective == "logistic" else (1.0, 5.0))
    if implicit:  # no rating column: rated 1 here, then one positive per (user, item), at its last event
        cols.pop(d.rating_column)
    inter = _interactions(d.interactions, cols, None if implicit else scale, implicit, d)
    log.info("guest: %s: %d interactions%s", d.interactions, len(inter),
             f" (implicit feedback: one positive per user and item, weights {d.event_weighting!r})"
             if implicit else "")
    weight_column = cfg.model.get("weight_column")
    if weight_column is not None and weight_column not in inter.columns:
        raise ConfigError(f"{cfg.source}: [model] weight_column = {weight_column!r} is not a column of "
                          f"{d.interactions} as read (it has {list(inter.columns)}); for an event log, "
                          f"[data] event_weighting sets the weights")
    items = None
    if d.item_features is not None:
        items, _ = read_side_table(d.item_features, id_column=d.item_id_column, categorical=d.categorical,
                                   known_ids=set(inter["item_id"]), unknown="drop")
        log.info("guest: %s: features of %d items (rows of items without interactions dropped)",
                 d.item_features, len(items))
    val = None
    if d.validation is not None:
        val = _interactions(d.validation, cols, None if implicit else scale, implicit, d)
    return inter, items, val


def _interactions(path: Path, cols: dict[str, str], scale: tuple[float, float] | None,
                  implicit: bool, d: Any) -> pd.DataFrame:
    """An interaction file through the validated reader; implicit feedback: events into one positive
    per pair (:func:`fedrec.data.implicit.implicit_interactions`) with its ``weight`` under ``[data]
    event_weighting`` (:func:`model_config` makes it the guest's ``weight_column``)."""
    from fedrec.data import read_interactions
    from fedrec.data.implicit import implicit_interactions

    frame, _ = read_interactions(path, columns=cols, rating_scale=scale, implicit=implicit)
    if implicit:
        keep = ["user_id", "item_id", "rating", "timestamp"]
        keep += ["weight"] if d.event_weighting != "none" else []
        frame = implicit_interactions(frame, d.event_weighting, half_life_days=d.event_half_life_days)[keep]
    return frame


def read_pairs(path: Path, user_column: str = "user_id", item_column: str = "item_id"
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pairs to score (CSV/TSV with a header, or Parquet): ``(the file's columns as read, the
    pairs typed and checked like an interaction table)``. ``rating`` and ``timestamp`` are optional
    here (a timestamp is used when given); every error names the file, the line (row) and the column."""
    from fedrec.data import DataValidationError, validate_interactions
    from fedrec.data.tables import read_table

    suffix = path.suffix.lower()
    if not path.is_file() and not path.exists():
        raise FileNotFoundError(f"[data] predict: {path} does not exist")
    if suffix not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .csv, .tsv "
                         "or .parquet")
    tt = read_table(path)  # the validated reader: every malformed-file case is a named error
    parquet = suffix in (".parquet", ".pq")
    raw, issues = tt.frame, tt.issues
    lines: np.ndarray | None = None if parquet else tt.line_numbers
    kind: RowKind = "row" if parquet else "line"
    for column, key in ((user_column, "id_column"), (item_column, "item_id_column")):
        if column not in raw.columns:
            raise DataValidationError(f"{path}, column {column!r}: missing ([data] {key}); the pairs file "
                                      f"has {list(map(str, raw.columns))}", source=str(path), column=column,
                                      reason="missing_column")
    frame = raw.rename(columns={user_column: "user_id", item_column: "item_id"})
    placeholders = [c for c in ("rating", "timestamp") if c not in frame.columns]
    if "rating" in placeholders:
        frame["rating"] = 0.0
    if "timestamp" in placeholders:  # distinct, so repeated pairs without a time are not duplicates
        frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    pairs, _ = validate_interactions(frame, source=str(path), rating_scale=None,
                                     id_type="auto" if kind == "line" else None, line_numbers=lines,
                                     prior_issues=issues, row_kind=kind)
    return raw, pairs.drop(columns=placeholders).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- prepare
def prepare_guest(cfg: PartyConfig) -> tuple[Any, ...]:
    """Before the network opens: the guest's files (interactions, items, validation, pairs to score)."""
    warn_about_backend(str(cfg.model.get("backend", "ckks")), "guest")
    if cfg.ads.refit != "off" and model_config(cfg).objective != "logistic":
        raise ConfigError(f"{cfg.source}: [ads] refit = {cfg.ads.refit!r} refits a conversion model; [model] "
                          f"objective is {model_config(cfg).objective!r}, expected \"logistic\" (or set "
                          "refit = \"off\")")
    inter, items, val = _read_guest_data(cfg)
    pairs = None
    if cfg.data.predict is not None:  # read before training: a bad file must not cost a training run
        pairs = read_pairs(cfg.data.predict, cfg.data.id_column, cfg.data.item_id_column)
    return inter, items, val, pairs


def prepare_host(cfg: PartyConfig) -> pd.DataFrame:
    """Before the network opens: the host's user table."""
    warn_about_backend(str(cfg.model.get("backend", "ckks")), "host")
    return _read_host_table(cfg)


# ---------------------------------------------------------------------------------------------- guest
def run_guest(run: PartyRun) -> dict[str, Any]:
    """Align, train with the host, score ``[data] predict``, export the guest half; returns the summary."""
    import pandas as pd

    from fedrec import faults
    from fedrec.models.guard import save_guard
    from fedrec.protocols.hetero_fm import HeteroFMGuest
    from training import guard_job

    cfg = run.cfg
    mcfg = model_config(cfg)
    inter, items, val, pairs = run.prepared if run.prepared is not None else prepare_guest(cfg)
    raw_users = np.asarray(pd.unique(inter["user_id"]))
    hosts = list(cfg.peers)
    als = {h: align(run, raw_users, "guest", peer=h) for h in hosts}  # PSI per host, one after the other
    al = als[hosts[0]]
    # declared in the aligned order, which both parties hold (the host's final checkpoint is keyed by it);
    # the protocol's ids are str(raw id), the PSI normalisation of a valid (str or int) id
    aligned: Any = al.ids if len(hosts) == 1 else {h: a.ids for h, a in als.items()}
    guest = HeteroFMGuest(run.channel, host=run.peer if len(hosts) == 1 else hosts, config=mcfg,
                          executor=run.executor)
    guarding = guard_job.start(cfg, mcfg, inter, items, val)  # the bank alone, fitted in a thread
    t1 = time.perf_counter()
    guest.fit(inter, item_features=items, validation=val, aligned_users=aligned, checkpoint=run.checkpoint)
    t_fit = time.perf_counter() - t1
    refit = _refit(cfg, guest, inter) if cfg.ads.refit != "off" else None
    scored = None
    z_pairs = None
    if pairs is not None:  # before Done: scoring asks the host for the aligned users' partials
        raw, typed = pairs
        if refit is None:  # the messages of guest.predict; the guard blends after Done
            z_pairs = guest.decision_function(typed)
        else:
            z = guest.decision_function(typed)
            h = z - guest.local.party_terms(typed)["guest"].z
            scored = raw.assign(prediction=refit.predict_proba(typed["item_id"].to_numpy(), h),
                                prediction_fm=guest.local.finish(z))
    # Done first: the hosts stage their outputs while the guest stages its own (fedrec.protocols.commit)
    guest.close("training finished")
    guard, bank = guard_job.finish(guarding, guest)  # nothing is sent: post-processing at the guest
    if z_pairs is not None:
        raw, typed = pairs
        z = guard_job.blend(guard, bank, z_pairs, typed)
        scored = raw.assign(prediction=guest.local.finish(z))
        if guard.alpha < 1.0:
            scored["prediction_federated"] = guest.local.finish(z_pairs)
    run.excluded = set(guest.dropped_hosts)  # they left the run: no part in the commit
    run.exporting = True  # a write error from here on is a vote against the commit (told to the hosts)
    predictions: dict[str, Any] | None = None
    if scored is not None:
        path = run.export("predictions.csv", lambda tmp: scored.to_csv(tmp, index=False))
        predictions = {"file": str(path), "rows": len(scored), "fallbacks": dict(guest.last_fallbacks)}
        log.info("guest: %d pairs scored -> %s (fallbacks: %s)", len(scored), path,
                 guest.last_fallbacks or "none")
    refit_summary = None
    if refit is not None:
        import json

        doc = json.dumps(refit.to_dict(), indent=1)
        path = run.export("refit.json", lambda tmp: tmp.write_text(doc, encoding="utf-8"))
        refit_summary = {"file": str(path), "gamma": refit.gamma, "l2": refit.l2,
                         "l2_choice": refit.l2_choice, **refit.training}
    faults.reached("job/export/model")
    guest.save(run.output("model"))
    save_guard(run.output("model"), guard, bank)
    model_dir = cfg.output_dir / "model"
    multi: dict[str, Any] = {}
    if len(hosts) > 1:
        union = set().union(*(a.ids for a in als.values()))
        multi = {"hosts": hosts, "n_aligned_per_host": {h: len(a.rows) for h, a in als.items()},
                 "alignment_per_host": {h: a.how for h, a in als.items()},
                 "zero_partials_per_host": guest.zero_partials, "dropped_hosts": guest.dropped_hosts,
                 "privacy_epsilon_per_host": guest.privacy_by_host() if guest._label_dp is not None else None,
                 "privacy_epsilon_if_hosts_collude": guest.privacy_if_hosts_collude()}
    return {
        "role": "guest", "name": cfg.name, "peer": hosts[0] if len(hosts) == 1 else ",".join(hosts),
        "run_id": guest.run_id, "backend": mcfg.backend, "n_interactions": len(inter),
        "n_users": len(raw_users),
        "n_aligned": len(al.rows) if len(hosts) == 1 else len(union), **multi,
        "alignment": al.how, "psi_seconds": round(sum(a.seconds for a in als.values()), 3),
        "fit_seconds": round(t_fit, 3),
        "epoch_seconds_total": round(guest.timings["epoch_seconds"], 3),
        "epochs_run": len(guest.history.train_loss), "best_epoch": guest.history.best_epoch,
        "history": guest.history.to_json(), "clipped_values": guest.clipped_values,
        "privacy_epsilon": guest.privacy_spent(), "label_dp": guest.label_privacy(),
        "model_dir": str(model_dir), "predictions": predictions, "refit": refit_summary,
        "guard": guard_job.summary(guard, guarding),
    }


def _refit(cfg: PartyConfig, guest: Any, inter: pd.DataFrame) -> Any:
    """``[ads] refit``: the advertiser's campaign logit refitted beside the host's terms
    ``h = z - z_G`` of its training clicks (:mod:`fedrec.ads.refit`), asked of the host before Done, as
    ``[data] predict`` scoring is (the same partials the guest received every batch; the host learns
    nothing). Fitted on the training interactions only."""
    from fedrec.ads.refit import fit_campaign_logit

    t0 = time.perf_counter()
    z = guest.decision_function(inter)
    h = z - guest.local.party_terms(inter)["guest"].z
    refit = fit_campaign_logit(inter["item_id"].to_numpy(), inter["rating"].to_numpy(np.float64), h,
                               l2=cfg.ads.refit_l2, run_id=guest.run_id)
    log.info("guest: refit on %d training clicks in %.1fs: L2 %g, gamma %.3f", len(inter),
             time.perf_counter() - t0, refit.l2, refit.gamma)
    return refit


# ---------------------------------------------------------------------------------------------- host
def _read_host_table(cfg: PartyConfig) -> pd.DataFrame:
    from fedrec.data import read_side_table

    d = cfg.data
    assert d.user_features is not None
    table, _ = read_side_table(d.user_features, id_column=d.id_column, categorical=d.categorical)
    table.index.name = "user_id"
    log.info("host: %s: %d users, %d feature columns", d.user_features, len(table), table.shape[1])
    return table


def _export_host(run: PartyRun, host: HeteroFMHost, aligned: pd.DataFrame) -> dict[str, Any]:
    """The host half and the aligned users' partials (fingerprinted with the run id), written into the
    run's stage: put in place with ``aligned.csv`` and ``summary.json`` when the guest commits."""
    run.exporting = True
    summary = _write_host_outputs(run.output(""), run.cfg, host, aligned)
    out = run.cfg.output_dir
    return {**summary, "model_dir": str(out / "model"), "partials": str(out / PARTIALS)}


def _write_host_outputs(where: Path, cfg: PartyConfig, host: HeteroFMHost, aligned: pd.DataFrame
                        ) -> dict[str, Any]:
    from fedrec import faults
    from fedrec.models.vertical import write_host_partials

    faults.reached("job/export/model")
    model_dir = host.save(where / "model")
    partials = host.export_partials(aligned.index.tolist())
    partials.insert(0, "aligned_index", np.arange(len(partials), dtype=np.int64))
    partials["user_id"] = partials["user_id"].astype(str)
    if not host.run_id:
        raise RuntimeError("host: no run id from the guest; the partials cannot be fingerprinted")
    faults.reached("job/export/partials")
    path = write_host_partials(where / PARTIALS, partials, run_id=host.run_id)
    return {"run_id": host.run_id, "privacy_epsilon": host.privacy_spent(), "model_dir": str(model_dir),
            "partials": str(path)}


def run_host(run: PartyRun) -> dict[str, Any]:
    """Align, serve the guest's training, export the host half and the aligned users' partials."""
    from fedrec.protocols.hetero_fm import HeteroFMHost

    cfg = run.cfg
    mcfg = model_config(cfg)
    table = run.prepared if run.prepared is not None else prepare_host(cfg)
    al = align(run, table.index.to_numpy(), "host")
    if not len(al.rows):
        raise RuntimeError(f"host: PSI with {run.peer!r} found no common users; nothing to train on")
    aligned = table.iloc[al.rows]  # in the aligned order, so the partials export is indexed like aligned.csv
    host = HeteroFMHost(run.channel, guest=run.peer, config=mcfg, executor=run.executor)
    # the host's own bar, per batch as the guest's (it used to print nothing while training)
    host.progress = bar = BatchBar(f"HeteroFM[{mcfg.backend}] host", enabled=cfg.progress)
    t1 = time.perf_counter()
    try:
        host.serve(aligned, checkpoint=run.checkpoint)
    finally:
        bar.close()
    t_fit = time.perf_counter() - t1
    return {
        "role": "host", "name": cfg.name, "peer": run.peer, "backend": mcfg.backend,
        "n_users": len(table), "n_aligned": len(al.rows), "alignment": al.how,
        "psi_seconds": round(al.seconds, 3), "serve_seconds": round(t_fit, 3),
        "rejected_requests": host.rejected, **_export_host(run, host, aligned),
    }
