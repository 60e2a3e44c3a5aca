"""The registry of federated jobs: ``{protocol: {role: runner}}``, and what each role reads and writes.

``fedrec train`` reads ``[job] protocol`` and ``[party] role`` and runs
``PROTOCOLS[protocol].roles[role]``'s runner; nothing in the launcher knows a protocol by name. A
protocol entry also declares the message modules it speaks (registered by
:func:`fedrec.transport.open_channel` before the first message can arrive), and each role the
``[data]`` keys it needs or accepts, how many peers it talks to, and the files it writes into
``[output] dir`` (what ``fedrec train --restart`` deletes).

A runner is ``runner(run: PartyRun) -> dict`` (the run summary); it is named ``"module:function"`` and
imported only when its role runs, so this module stays cheap to import (the config parser and
``fedrec --help`` read it). Adding a protocol is one entry here plus its runner module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.compute import Executor
    from fedrec.protocols.checkpoint import Checkpointer
    from fedrec.transport import Channel, Message
    from training.config import PartyConfig

#: files every role writes: the alignment (PSI output + its record) and, last, the completion marker
COMMON_OUTPUTS = ("aligned.csv", "alignment.json")
SUMMARY = "summary.json"
#: a run's working state in ``[output] dir``: the alignment being used (published with the outputs at
#: the end, :mod:`training.alignment`) and the commit record (:mod:`fedrec.protocols.commit`)
WORK = ".work"
STATE = (WORK, ".commit.json")


@dataclass(frozen=True)
class RoleSpec:
    """One role of a protocol. ``data``: ``[data]`` key -> what it is (``required`` ones must be set);
    ``peers``: how many peers the role talks to (min, max); ``outputs``: what it writes besides
    :data:`COMMON_OUTPUTS` and :data:`SUMMARY` (files or directories under ``[output] dir``).
    ``commit``: ``"coordinator"`` / ``"participant"`` when the role's outputs are put in place only
    when every party's are written (:mod:`fedrec.protocols.commit`; the runner then writes them into
    :attr:`PartyRun.stage`), ``None`` to write them in place directly. ``prepare``: ``fn(cfg) -> object``,
    run BEFORE the network opens: reads the role's files and checks that its outputs can be written (a
    bad file or a read-only ``[output] dir`` fails before any peer waits); the runner finds its result
    in :attr:`PartyRun.prepared` (issue #9, defect 6)."""

    runner: str
    required: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)
    peers: tuple[int, int] = (1, 1)
    outputs: tuple[str, ...] = ()
    description: str = ""
    prepare: str | None = None
    commit: str | None = None
    #: whether the role's heavy loops run on the ``[compute]`` executor (:attr:`PartyRun.executor`)
    compute: bool = False

    def load_prepare(self) -> Callable[[PartyConfig], Any] | None:
        return None if self.prepare is None else _load(self.prepare)

    def load_runner(self) -> Callable[[PartyRun], dict[str, Any]]:
        fn: Callable[[PartyRun], dict[str, Any]] = _load(self.runner)
        return fn

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return (SUMMARY, *COMMON_OUTPUTS, *self.outputs, *STATE)


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ProtocolSpec:
    """A federated protocol: its roles and the messages modules whose types it sends and receives."""

    name: str
    description: str
    roles: Mapping[str, RoleSpec]
    messages: tuple[str, ...]
    #: ``"module:function"``, ``fn(cfg) -> the protocol's config``: builds (checks) ``[model]`` BEFORE the
    #: network opens, so a typo or a wrong type fails at once with exit 2 (issue #13, item 6)
    model: str | None = None

    def check_model(self, cfg: PartyConfig) -> Any:
        return None if self.model is None else _load(self.model)(cfg)

    def message_types(self) -> tuple[type[Message], ...]:
        from fedrec.transport import protocol_messages

        return protocol_messages(*self.messages)


#: ``[data]`` keys that any role may set (how to read the files of its own keys)
GENERIC_DATA = {"id_column": "the user id column of the files", "categorical":
                "side-table columns that are categorical even if numeric-looking"}

PROTOCOLS: dict[str, ProtocolSpec] = {
    "hetero_fm": ProtocolSpec(
        name="hetero_fm",
        description="vertical factorization machine: the guest holds ratings, items and the only CKKS "
                    "key; the host holds user features (fedrec.protocols.hetero_fm)",
        roles={
            "guest": RoleSpec(
                runner="training.hetero_fm_job:run_guest",
                prepare="training.hetero_fm_job:prepare_guest",
                commit="coordinator",
                required={"interactions": "the guest's rating table"},
                optional={"item_features": "the guest's item side table",
                          "validation": "early-stopping rows",
                          "predict": "pairs scored after training -> predictions.csv",
                          "item_id_column": "the item id column",
                          "rating_column": "the rating column of interactions (default rating)",
                          "timestamp_column": "the time column of interactions (default timestamp)",
                          "feedback": "explicit (rated interactions) or implicit (events without a "
                                      "rating; needs [model] objective = \"ranking\")",
                          "rating_scale": "[min, max] the ratings lie in (default [1, 5]; a logistic "
                                          "objective's labels: [0, 1])",
                          "event_weighting": "implicit feedback: none (each pair counts 1), count (1 + "
                                             "log n_events) or recency (half-life decays)",
                          "event_half_life_days": "the half-life of recency weighting (default 30)"},
                peers=(1, 64),
                compute=True,
                outputs=("model", "predictions.csv", "alignments"),
                description="ratings (labels), item features, the CKKS secret key; drives the training "
                            "with one or more hosts (one [peers.NAME] table each; several: it listens)"),
            "host": RoleSpec(
                runner="training.hetero_fm_job:run_host",
                prepare="training.hetero_fm_job:prepare_host",
                commit="participant",
                compute=True,
                required={"user_features": "the host's user table"},
                outputs=("model", "partials.parquet", "partials.parquet.meta.json"),
                description="user features; answers the guest"),
        },
        messages=("fedrec.psi.messages", "fedrec.protocols.hetero_fm.messages"),
        model="training.hetero_fm_job:model_config",
    ),
    "fedmf": ProtocolSpec(
        name="fedmf",
        description="horizontal federated MF: clients (devices or silos) hold rating rows and the shared "
                    "CKKS key; the server holds the item model encrypted (fedrec.protocols.fedmf)",
        roles={
            "server": RoleSpec(
                runner="training.fedmf_job:run_server",
                required={"catalogue": "the agreed item catalogue (item_id column, in the agreed order)"},
                optional={"item_id_column": "the item id column of the catalogue"},
                peers=(1, 100_000),
                compute=True,
                description="drives the rounds; holds only ciphertexts and the public context; listens"),
            "client": RoleSpec(
                runner="training.fedmf_job:run_client",
                required={"interactions": "this client's ratings (user_id, item_id, rating)",
                          "catalogue": "the agreed item catalogue (item_id column, in the agreed order)"},
                optional={"item_id_column": "the item id column",
                          "rating_column": "the rating column of interactions (default rating)"},
                outputs=("bundle",),
                description="its users' ratings and factors; exports a serving bundle of its users"),
        },
        messages=("fedrec.protocols.fedmf.messages",),
        model="training.fedmf_job:model_config",
    ),
}


def all_roles() -> tuple[str, ...]:
    """Every role of every protocol (``fedrec train --role`` choices)."""
    return tuple(sorted({r for p in PROTOCOLS.values() for r in p.roles}))


@dataclass
class PartyRun:
    """What a runner gets: its configuration, the open channel, the checkpointer (``None``: the
    protocol keeps none), what its role's ``prepare`` hook returned (``None``: no hook), the stage its
    final outputs are written into (``None``: they are written in place) and the export helper every
    output goes through. A coordinator's runner puts the peers that left the run (e.g. hosts dropped
    with ``host_failure = "continue"``) in ``excluded``: they take no part in the commit."""

    cfg: PartyConfig
    channel: Channel
    checkpoint: Checkpointer | None
    prepared: Any = None
    stage: Path | None = None
    excluded: set[str] = field(default_factory=set)
    #: set by the runner when it starts writing its final outputs: a write error from then on is this
    #: party's vote against the commit (told to the peers), not a protocol failure
    exporting: bool = False
    #: where the role's heavy loops run (``[compute]``; ``None``: in this process), started once per run
    #: before the network opens and closed at its end (:func:`training.party.run_party`)
    executor: Executor | None = None

    @property
    def peer(self) -> str:
        """The one peer of a two-party role."""
        (peer,) = self.cfg.peers
        return peer

    def output(self, name: str) -> Path:
        """Where the final output ``name`` is written: in the stage when there is one."""
        return (self.stage if self.stage is not None else self.cfg.output_dir) / name

    def export(self, name: str, write: Callable[[Path], object]) -> Path:
        """Write the final output ``name`` atomically (into the stage when there is one); returns the
        path it has once in place."""
        write_atomic(self.output(name), write, f"job/export/{Path(name).stem}")
        return self.cfg.output_dir / name


def export(cfg: PartyConfig, name: str, write: Callable[[Path], object]) -> Path:
    """Write ``[output] dir / name`` atomically through ``write(tmp_path)``; fault point
    ``job/export/<stem>`` first (a crash test can kill the party right before any export)."""
    return write_atomic(cfg.output_dir / name, write, f"job/export/{Path(name).stem}")


def write_atomic(path: Path, write: Callable[[Path], object], fault: str | None = None) -> Path:
    """``write(tmp)`` then rename onto ``path`` (fsynced); fault point ``fault`` first."""
    from fedrec import faults
    from fedrec.artifacts import atomic_file

    if fault is not None:
        faults.reached(fault)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write(tmp)
    return path
