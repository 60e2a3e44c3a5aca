"""Run one party of a federated job as its own process (``fedrec train --role R --config FILE``).

The party reads its TOML configuration (:mod:`training.config`), looks its protocol and role up in
the job registry (:mod:`training.jobs`), opens the authenticated channel to its peers
(:func:`fedrec.transport.open_channel`, registering the protocol's messages first) and runs the
role's runner (for ``hetero_fm``: :mod:`training.hetero_fm_job`).

The run directory (``[output] dir``) has a lifecycle. Every output is written atomically, and
``summary.json`` last: its presence means the run is complete, and ``fedrec train`` on a complete run
says so and does nothing (exit 0). ``--restart`` deletes what the job writes there (the role's outputs
in :data:`training.jobs.PROTOCOLS`, leftovers of interrupted atomic writes) and the checkpoints, and
trains again. An incomplete run (a party was killed) is simply run again: the alignment both parties
still hold is reused (:mod:`training.alignment`) and training resumes from the newest checkpoint both
hold (``[checkpoint]``, :mod:`fedrec.protocols.checkpoint`). Restart or resume both parties together.

Both parties agree on success before either puts its outputs in place (a role with ``commit`` in the
registry; :mod:`fedrec.protocols.commit`): the runner writes its final outputs into a stage, the
alignment and ``summary.json`` join them, and they are put in place only on the coordinator's durable
verdict. After a crash, the next ``fedrec train`` carries out a decided commit before anything else, a
participant holding outputs in doubt asks the coordinator first, and a complete coordinator that has
not heard a participant confirm answers it (it opens the channel to that participant only).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import ConfigError, PartyConfig, load_config, transport_config
from training.jobs import SUMMARY, PartyRun, all_roles, export

if TYPE_CHECKING:
    from fedrec.compute import Executor
    from fedrec.protocols.checkpoint import Checkpointer
    from fedrec.protocols.commit import Ledger, Stage
    from fedrec.transport import Channel

log = logging.getLogger(__name__)

EPILOG = """examples (keys made once per party with `fedrec keys --out keys --name guest|host`):
  host$  fedrec train --role host  --config training/configs/host.toml
  guest$ fedrec train --role guest --config training/configs/guest.toml
  # again on a complete run: says so and exits 0; to train again from scratch (both parties):
  host$  fedrec train --role host  --config training/configs/host.toml --restart

The example configs read the files that `fedrec demo --out artifacts/demo` writes under
artifacts/demo/run/ (data, keys). Exit status: 0 done (or already complete), 1 error (the party, peer
and step on stderr), 2 invalid configuration.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", choices=all_roles(),
                   help="this party's role (default: [party] role of the config; when given, it must match)")
    p.add_argument("--config", required=True, type=Path, metavar="FILE.toml",
                   help="the party's TOML configuration (see training/configs/*.toml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (overrides [output])")
    p.add_argument("--restart", action="store_true",
                   help="train again from scratch: delete what an earlier run wrote in [output] dir and "
                        "its checkpoints first (without it, a complete run is left as it is and an "
                        "incomplete one resumes)")


# ---------------------------------------------------------------------------------------------- run dir
def checkpointer(cfg: PartyConfig) -> Checkpointer:
    from fedrec.protocols.checkpoint import Checkpointer

    c = cfg.checkpoint
    return Checkpointer(c.dir, every_batches=c.every_batches, keep=c.keep)


def is_complete(cfg: PartyConfig) -> bool:
    return (cfg.output_dir / SUMMARY).is_file()


def clear_run(cfg: PartyConfig) -> list[Path]:
    """Delete what the job writes into ``[output] dir`` (the completion marker first) and the
    checkpoints; nothing else there is touched. Returns what was deleted."""
    out = cfg.output_dir
    gone: list[Path] = []
    for name in cfg.role_spec.all_outputs:
        path = out / name
        stem, suffix = Path(name).stem, Path(name).suffix
        # the leftovers of atomic writes a kill interrupted (fedrec.artifacts: .NAME.tmp-*, .NAME.old-*)
        leftovers = [*out.glob(f".{stem}.tmp-*{suffix}"), *out.glob(f".{name}.tmp-*"),
                     *out.glob(f".{name}.old-*")] if out.is_dir() else []
        for p in [path, *leftovers]:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            else:
                continue
            gone.append(p)
    from fedrec.protocols.commit import STAGE_PREFIX

    for p in (out.glob(STAGE_PREFIX + "*") if out.is_dir() else []):  # outputs the parties never agreed on
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    if cfg.checkpoint.dir.exists():
        checkpointer(cfg).clear()
        gone.append(cfg.checkpoint.dir)
    return gone


# ---------------------------------------------------------------------------------------------- run
def open_party_channel(cfg: PartyConfig) -> Channel:
    """The channel to ``cfg``'s peers, with the protocol's messages registered, once they connected."""
    from fedrec.transport import PeerAddress, open_channel

    net = cfg.network
    peers = {name: PeerAddress(p.endpoint, p.public_key) for name, p in cfg.peers.items()}
    return open_channel(cfg.name, peers, key=net.key, listen=net.listen, config=transport_config(net),
                        messages=cfg.job.message_types(), connect_timeout=net.connect_timeout)


def ledger(cfg: PartyConfig) -> Ledger | None:
    """The role's commit state in ``[output] dir`` (``None``: its outputs are written in place)."""
    from fedrec.protocols.commit import Ledger

    role = cfg.role_spec.commit
    return None if role is None else Ledger(cfg.output_dir, role)


def run_party(cfg: PartyConfig, in_doubt: Stage | None = None) -> dict[str, Any]:
    """Open the channel, run the role's runner, write ``summary.json`` (last; with a commit role: stage
    the outputs and put them in place on the coordinator's verdict); the channel is closed whatever
    happens, telling the peers why when this party abandons the run. ``in_doubt``: this participant's
    staged outputs of an earlier run awaiting the coordinator's verdict (:meth:`Ledger.recover`). The
    ``[compute]`` executor is started once, before the network opens, and closed at the end."""
    import torch

    # the parties take turns (one computes while the other waits); one torch thread each avoids
    # oversubscribing the cores they share with the peer and with CKKS
    torch.set_num_threads(1)
    spec = cfg.role_spec
    runner, prepare = spec.load_runner(), spec.load_prepare()
    ckpt = checkpointer(cfg)
    # everything local first (issue #9, defect 6; issue #13, item 6): [model], the output locations and
    # the role's files, so a typo, a read-only [output] dir or a bad file fails before a peer waits on us
    cfg.job.check_model(cfg)  # [model]: key names, types and values (ConfigError: exit 2)
    preflight(cfg)
    prepared = prepare(cfg) if prepare is not None else None
    executor = start_executor(cfg)  # [compute]: before the network opens (a missing Ray: exit 2)
    try:
        return _run_party(cfg, in_doubt, runner, ckpt, prepared, executor)
    finally:
        if executor is not None:
            executor.close()


def start_executor(cfg: PartyConfig) -> Executor | None:
    """The executor of ``[compute]`` for a role whose loops use one (``None``: the ``local`` engine, or a
    role without heavy loops, which is told); :class:`ConfigError` when the engine cannot start."""
    from fedrec.compute import ExecutorError, make_executor

    if cfg.compute.engine == "local":
        return None
    if not cfg.role_spec.compute:
        log.warning("%s: [compute] engine = %r: the %s role of %s has no heavy loop to run on it; it runs "
                    "in this process", cfg.name, cfg.compute.engine, cfg.role, cfg.protocol)
        return None
    try:
        executor = make_executor(cfg.compute)
    except ExecutorError as err:
        raise ConfigError(f"{cfg.source}: [compute]: {err}") from err
    log.info("%s: [compute] engine %s with %d worker(s): the CKKS batches run there", cfg.name,
             executor.engine, executor.workers)
    return executor


def _run_party(cfg: PartyConfig, in_doubt: Stage | None, runner: Any, ckpt: Checkpointer, prepared: Any,
               executor: Executor | None) -> dict[str, Any]:
    from fedrec.protocols.commit import CommitError
    from fedrec.transport import PeerTimeoutError

    try:
        channel = open_party_channel(cfg)
    except PeerTimeoutError as err:
        if in_doubt is None:
            raise
        raise CommitError(err.peer, err.step or "connect", f"{err}; this party's outputs of an earlier "
                          f"run stay staged in {in_doubt.path}, awaiting its verdict: run `fedrec train` on "
                          "it (a complete run answers) and on this party again", in_doubt=True) from err
    reason = "closed"
    try:
        run = PartyRun(cfg, channel, ckpt, prepared, executor=executor)
        return _run_on(cfg, channel, runner, run, in_doubt)
    except BaseException as err:  # the peer hears why this party abandoned the run (issue #13, item 6)
        reason = abandon_reason(cfg, err)
        raise
    finally:
        channel.close(reason)


def _run_on(cfg: PartyConfig, channel: Channel, runner: Any, run: PartyRun, in_doubt: Stage | None
            ) -> dict[str, Any]:
    from fedrec.protocols.commit import (
        COORDINATOR,
        Stage,
        coordinator_commit,
        coordinator_open,
        participant_commit,
        participant_open,
    )

    book = ledger(cfg)
    if book is None:
        return _write_summary(cfg, runner(run))
    timeout = cfg.network.recv_timeout
    coordinator = book.role == COORDINATOR
    if coordinator:
        coordinator_open(channel, list(cfg.peers), book, complete=False, timeout=timeout)
    elif participant_open(channel, run.peer, book, in_doubt, timeout=timeout):
        return _read_summary(cfg)  # the coordinator had committed the staged outputs: now in place
    stage = Stage.create(cfg.output_dir)
    run.stage = stage.path
    failure: str | None = None
    summary: dict[str, Any] = {}
    try:
        try:
            summary = {"protocol": cfg.protocol, **runner(run)}
        except OSError as err:
            if not run.exporting:
                raise
            failure = f"{cfg.name}: {type(err).__name__}: {err}"
        if failure is None:
            try:
                _stage_rest(cfg, stage, summary)
            except OSError as err:
                failure = f"{cfg.name}: {type(err).__name__}: {err}"
        if failure is not None:
            log.error("%s: could not write the outputs of this run: %s", cfg.name, failure)
        run_id = str(summary.get("run_id") or "")
        if coordinator:
            peers = [p for p in cfg.peers if p not in run.excluded]
            late = coordinator_commit(channel, peers, book, stage, run_id, failure=failure, timeout=timeout)
            if late:
                log.warning("%s: outputs in place; %s did not confirm theirs (they are told on their next "
                            "run, or when `fedrec train` runs here again)", cfg.name,
                            ", ".join(map(repr, late)))
        else:
            participant_commit(channel, run.peer, book, stage, run_id, failure=failure, timeout=timeout)
    finally:
        if stage.path.exists() and stage.prepared() is None:
            stage.discard()  # never voted for: nothing there can be committed
    return summary


def _stage_rest(cfg: PartyConfig, stage: Stage, summary: dict[str, Any]) -> None:
    """The alignment and the completion marker join the runner's outputs; all on the disk, then marked
    prepared (fault point ``job/commit/staged`` after)."""
    from fedrec import faults
    from training.alignment import publish
    from training.jobs import write_atomic

    publish(cfg, stage.path)
    write_atomic(stage.path / SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=str),
                                                                  encoding="utf-8"), "job/export/summary")
    stage.prepare(str(summary.get("run_id") or ""))
    faults.reached("job/commit/staged")


def _read_summary(cfg: PartyConfig) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((cfg.output_dir / SUMMARY).read_text(encoding="utf-8"))
    return summary


def resolve_complete(cfg: PartyConfig, book: Ledger, pending: list[str]) -> None:
    """A complete coordinator whose last commit some participants have not confirmed: open the channel
    to those only and answer their question (:func:`fedrec.protocols.commit.coordinator_open`). A
    participant that does not come within ``connect_timeout`` is warned about, not an error: this
    party's outputs are in place."""
    from fedrec.protocols.commit import coordinator_open
    from fedrec.transport import PeerTimeoutError

    sub = replace(cfg, peers={p: cfg.peers[p] for p in pending})
    log.warning("%s: the run is complete; %s did not confirm putting their outputs in place: answering them",
                cfg.name, ", ".join(map(repr, pending)))
    try:
        channel = open_party_channel(sub)
    except PeerTimeoutError as err:
        log.warning("%s: %s; if it holds staged outputs, run `fedrec train` on it and here again",
                    cfg.name, err)
        return
    try:
        told = coordinator_open(channel, pending, book, complete=True, timeout=cfg.network.recv_timeout)
        log.warning("%s: told %s", cfg.name, ", ".join(f"{p}: {v}" for p, v in told.items()))
    finally:
        channel.close("the run is complete")


def confirm_complete(cfg: PartyConfig, book: Ledger, coordinator: str) -> None:
    """A complete participant that was stopped before telling the coordinator its outputs were in place
    (the coordinator then answers it on each of its runs): tell it now
    (:func:`fedrec.protocols.commit.participant_confirm`). A coordinator that does not come within
    ``connect_timeout`` is warned about, not an error: this party's outputs are in place."""
    from fedrec.protocols.commit import participant_confirm
    from fedrec.transport import PeerTimeoutError, TransportError

    log.warning("%s: the run is complete; %r has not heard so: telling it", cfg.name, coordinator)
    try:
        channel = open_party_channel(cfg)
    except PeerTimeoutError as err:
        log.warning("%s: %s; run `fedrec train` on %r and here again to record it (nothing is missing here)",
                    cfg.name, err, coordinator)
        return
    try:
        if participant_confirm(channel, coordinator, book, timeout=cfg.network.recv_timeout):
            log.warning("%s: %r recorded that this party's outputs are in place", cfg.name, coordinator)
        else:
            log.warning("%s: %r is training a new run, this party's is complete: `fedrec train --restart` on "
                        "every party trains again", cfg.name, coordinator)
    except TransportError as err:
        log.warning("%s: could not tell %r (%s); run `fedrec train` on both again", cfg.name, coordinator,
                    err)
    finally:
        channel.close("the run is complete")


def abandon_reason(cfg: PartyConfig, err: BaseException) -> str:
    """What the peers are told when this party abandons the run (the transport's goodbye carries it;
    the peer's error then reads ``closed its channel (<this>)`` instead of a bare "closed")."""
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
    return f"{cfg.name} ({cfg.role}) abandoned the run: {what}"[:1000]


def preflight(cfg: PartyConfig) -> None:
    """``[output] dir`` and every output file of the role can be written (probed by creating a file):
    :class:`~fedrec.data.DataValidationError` naming the path otherwise."""
    from fedrec.data.tables import check_output_file

    names = [n for n in cfg.role_spec.all_outputs if Path(n).suffix]  # files; directories are staged
    for name in names:
        check_output_file(cfg.output_dir / name)
    log.debug("%s: output locations in %s are writable", cfg.name, cfg.output_dir)


def _write_summary(cfg: PartyConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The completion marker, written last."""
    summary = {"protocol": cfg.protocol, **summary}
    export(cfg, SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=str),
                                                    encoding="utf-8"))
    return summary


def run(args: argparse.Namespace) -> int:
    from fedrec.data import DataValidationError
    from fedrec.protocols.hetero_fm.messages import HeteroFMError
    from fedrec.psi import IdError
    from fedrec.transport import TransportError

    prefix = f"fedrec train ({args.role or args.config})"
    try:
        cfg = load_config(args.config)
        if args.role is not None and cfg.role != args.role:
            raise ConfigError(f"{args.config}: [party] role is {cfg.role!r} but --role is {args.role!r}")
    except ConfigError as err:
        print(f"{prefix}: invalid configuration: {err}", file=sys.stderr)
        return 2
    prefix = f"fedrec train ({cfg.role})"
    from training.progress import bars_wanted

    if not bars_wanted(cfg.progress, args.no_progress):
        cfg = replace(cfg, progress=False)
    if args.restart:
        gone = clear_run(cfg)
        log.info("%s: --restart: deleted %s", cfg.name, ", ".join(map(str, gone)) or "nothing")
    t0 = time.perf_counter()
    try:
        book = ledger(cfg)
        in_doubt = book.recover() if book is not None else None  # carry out what was decided
        if is_complete(cfg):
            pending = book.unacked() if book is not None else []
            coordinator = book.unconfirmed() if book is not None else None
            if pending:
                resolve_complete(cfg, book, pending)  # type: ignore[arg-type]
            elif coordinator is not None:
                confirm_complete(cfg, book, coordinator)  # type: ignore[arg-type]
            print(f"{cfg.name}: the run in {cfg.output_dir} is complete ({SUMMARY} is there); nothing to do "
                  "(--restart trains again)")
            return 0
        summary = run_party(cfg, in_doubt)
    except ConfigError as err:
        print(f"{prefix}: invalid configuration: {err}", file=sys.stderr)
        return 2
    except (TransportError, HeteroFMError) as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        return 1
    except (DataValidationError, IdError, FileNotFoundError, OSError, ValueError, RuntimeError) as err:
        print(f"{prefix}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{cfg.name}: done in {time.perf_counter() - t0:.1f}s: {summary['n_aligned']} aligned users "
          f"({summary['alignment']}), artifacts in {cfg.output_dir}")
    if summary.get("role") == "guest":
        eps = summary.get("privacy_epsilon")
        print(f"{cfg.name}: label privacy: " + ("OFF (no label DP: the host can read labels from its "
                                                "aggregated gradients, docs/SECURITY.md)" if eps is None else
                                                f"label DP, epsilon {eps:.3g} for the whole training"))
    return 0

