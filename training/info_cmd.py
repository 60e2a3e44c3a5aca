"""Describe what a fedrec file or directory is: a run, a model, host partials, a key.

``fedrec info PATH`` reads only metadata (JSON documents, file sizes and digests), never the data:

* a run directory (``[output] dir`` of ``fedrec train``; its ``summary.json`` marks it complete):
  protocol, role, peer, when it finished, how many users were aligned and how, epochs, the best
  validation loss, label privacy, and every artifact with its size and SHA-256;
* what the two-phase commit of a run left unsettled there (:func:`fedrec.protocols.commit.unsettled`):
  outputs staged and awaiting the coordinator's verdict (in doubt), a commit decided but not all put in
  place, participants that have not confirmed; each with what re-running ``fedrec train`` with the
  same config does with it (a run directory holding only staged outputs is described too);
* a model directory (``meta.json``, plus ``hetero.json`` for the guest half of the vertical FM):
  its format, version, training run id and configuration;
* host partials (``partials.parquet`` with its ``.meta.json``): the run id they belong to (a guest model
  joins only partials of its own run) and the number of users;
* a CURVE key file (``NAME.key``): its fingerprint, to compare over the phone (docs/DEPLOY.md).

``--json`` prints the same as one JSON document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  fedrec info ~/fedrec-guest/out                 # a run: what, when, data, metrics, artifacts
  fedrec info ~/fedrec-guest/out/model           # a model directory
  fedrec info ~/fedrec-guest/partials.parquet    # host partials: the run they belong to
  fedrec info ~/fedrec-guest/keys/host.key       # a public key's fingerprint
  fedrec info ~/fedrec-guest/out --json
  fedrec info ~/fedrec-host/out                  # outputs in doubt after a crash: what, and what to run

Exit status: 0 described (a run left in doubt too: its kind says "not complete"), 1 not a fedrec file or
directory (the error says what was expected).
"""

HASHED_MAX = 512 * 1024 * 1024  # files above this are listed without a digest (reading them takes long)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="PATH",
                   help="a run directory, a model directory, a partials file or a key file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--no-digests", action="store_true", help="skip the SHA-256 of the artifacts (faster)")


def _when(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON document ({err})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _files(root: Path, digests: bool) -> list[dict[str, Any]]:
    from fedrec.artifacts import file_sha256

    out = []
    # hidden entries are working state (.work/, staged outputs, leftovers of atomic writes), not artifacts
    for p in sorted(x for x in root.rglob("*") if x.is_file()
                    and not any(part.startswith(".") for part in x.relative_to(root).parts)):
        size = p.stat().st_size
        entry: dict[str, Any] = {"file": str(p.relative_to(root)), "bytes": size}
        if digests and size <= HASHED_MAX:
            entry["sha256"] = file_sha256(p)
        out.append(entry)
    return out


def describe_key(path: Path) -> dict[str, Any]:
    from training.init_cmd import fingerprint

    return {"kind": "CURVE public key", "path": str(path), "fingerprint": fingerprint(path)}


def describe_model(path: Path) -> dict[str, Any]:
    meta = _read(path / "meta.json")
    info: dict[str, Any] = {"kind": "model", "path": str(path), "written": _when(path / "meta.json"),
                            "format": meta.get("format"), "format_version": meta.get("format_version")}
    hetero = path / "hetero.json"
    if hetero.is_file():
        h = _read(hetero)
        info["kind"] = "vertical FM, guest half (joins the host's partials of the same run)"
        info["run_id"] = h.get("run_id")
        info["label_dp"] = h.get("label_dp")
        info["config"] = h.get("config")
        if (path / "guard.json").is_file():  # the guest-side guard (fedrec.models.guard)
            g = _read(path / "guard.json")
            info["guard"] = {k: g.get(k) for k in ("mode", "alpha", "status", "source", "metric", "n_rows",
                                                   "bank_alone", "federated", "blended")}
    for key in ("n_users", "n_items", "config", "params"):
        if key in meta and key not in info:
            info[key] = meta[key]
    return info


def describe_partials(path: Path) -> dict[str, Any]:
    meta_path = path.with_name(path.name + ".meta.json")
    if not meta_path.is_file():
        raise ValueError(f"{path}: host partials come with {meta_path.name} beside them (it names the "
                         "training run); it is missing")
    meta = _read(meta_path)
    return {"kind": "host partials (per-user model terms of the host, no raw features)", "path": str(path),
            "written": _when(path), "run_id": meta.get("run_id"),
            **{k: v for k, v in meta.items() if k not in ("run_id",)}}


def _staged_summaries(path: Path) -> list[dict[str, Any]]:
    from fedrec.protocols.commit import LAST, STAGE_PREFIX

    found = []
    for p in sorted(path.glob(f"{STAGE_PREFIX}*/{LAST}")):
        try:
            found.append(_read(p))
        except ValueError:
            continue  # a stage torn while it was written: fedrec.protocols.commit.unsettled says so
    return found


def _commit_role(summaries: list[dict[str, Any]]) -> str | None:
    """The commit role (coordinator / participant) of the role a run summary names, from the job registry."""
    from training.jobs import PROTOCOLS

    for summary in summaries:
        spec = PROTOCOLS.get(str(summary.get("protocol")))
        role = spec.roles.get(str(summary.get("role"))) if spec is not None else None
        if role is not None:
            return role.commit
    return None


def unsettled(path: Path, summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """What the two-phase commit left unsettled in the run directory ``path`` (empty: nothing)."""
    from fedrec.protocols import commit

    if not (path / commit.RECORD).is_file() and not any(path.glob(commit.STAGE_PREFIX + "*")):
        return []
    return commit.unsettled(path, _commit_role([*([summary] if summary else []), *_staged_summaries(path)]))


def describe_staged(path: Path, found: list[dict[str, Any]]) -> dict[str, Any]:
    """A run directory without ``summary.json`` whose outputs are staged by the commit."""
    staged = _staged_summaries(path)
    summary = staged[-1] if staged else {}
    return {"kind": f"{summary.get('protocol', '?')} run, role {summary.get('role', '?')} (NOT complete: its "
                    "outputs are staged by the two-phase commit; re-run `fedrec train` with the same config "
                    "to settle them)",
            "path": str(path),
            **{k: summary[k] for k in ("protocol", "role", "name", "peer", "run_id") if k in summary},
            "unsettled": found}


def describe_run(path: Path, digests: bool) -> dict[str, Any]:
    summary = _read(path / "summary.json")
    history = summary.get("history") or {}
    val = history.get("val_loss") if isinstance(history, dict) else None
    info: dict[str, Any] = {
        "kind": f"{summary.get('protocol', '?')} run, role {summary.get('role', '?')} (complete)",
        "path": str(path), "finished": _when(path / "summary.json"),
        **{k: summary[k] for k in ("protocol", "role", "name", "peer", "backend", "n_users", "n_interactions",
                                   "n_aligned", "alignment", "epochs_run", "best_epoch", "fit_seconds",
                                   "privacy_epsilon", "label_dp", "guard") if k in summary}}
    if isinstance(val, list) and val:
        info["best_validation_loss"] = min(v for v in val if v is not None) if any(
            v is not None for v in val) else None
    if (path / "model" / "meta.json").is_file():
        info["model"] = describe_model(path / "model")
    if (path / "partials.parquet").is_file():
        try:
            info["partials"] = describe_partials(path / "partials.parquet")
        except ValueError as err:
            info["partials"] = {"error": str(err)}
    found = unsettled(path, summary)
    if found:
        info["kind"] += "; the two-phase commit is not settled (see unsettled)"
        info["unsettled"] = found
    info["artifacts"] = _files(path, digests)
    return info


def describe(path: Path, digests: bool = True) -> dict[str, Any]:
    """What ``path`` is (module docstring); ``ValueError`` when it is none of those."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_dir():
        if (path / "summary.json").is_file():
            return describe_run(path, digests)
        if (path / "meta.json").is_file():
            return describe_model(path)
        found = unsettled(path)
        if found:
            return describe_staged(path, found)
        if (path / "checkpoints").is_dir() or (path / "aligned.csv").is_file():
            raise ValueError(f"{path}: a run directory without summary.json: the run is not complete "
                             "(`fedrec train` again resumes it)")
        raise ValueError(f"{path}: not a fedrec run (summary.json) or model (meta.json) directory")
    if path.suffix == ".key":
        return describe_key(path)
    if path.suffix == ".key_secret":
        raise ValueError(f"{path} is a SECRET key: never show or copy it; `fedrec info` the .key beside it")
    if path.name.endswith(".parquet") and path.with_name(path.name + ".meta.json").is_file():
        return describe_partials(path)
    raise ValueError(f"{path}: not a run or model directory, host partials (.parquet + .meta.json) or a "
                     ".key file")


def _text(info: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in info.items():
        if key == "artifacts":
            lines.append(f"{indent}artifacts:")
            for a in value:
                digest = f"  sha256 {a['sha256'][:16]}..." if "sha256" in a else ""
                lines.append(f"{indent}  {a['file']:<40} {a['bytes']:>12,} B{digest}")
        elif key == "unsettled":
            lines.append(f"{indent}unsettled (two-phase commit):")
            for u in value:
                what = f"participant {u['participant']!r}" if "participant" in u else \
                    f"commit of attempt {u.get('attempt', '?')}" if "coordinator" in u else \
                    f"staged attempt {u.get('attempt', '?')}"
                lines.append(f"{indent}  {what}: {u['state']}")
                lines += [f"{indent}    {k.replace('_', ' ')}: {u[k]}"
                          for k in ("run_id", "path", "detail", "next") if u.get(k)]
        elif isinstance(value, dict) and key in ("model", "partials"):
            lines.append(f"{indent}{key}:")
            lines += _text(value, indent + "  ")
        elif isinstance(value, (dict, list)):
            lines.append(f"{indent}{key}: {json.dumps(value, default=str)}")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        info = describe(args.path, digests=not args.no_digests)
    except (ValueError, OSError) as err:
        print(f"fedrec info: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print("\n".join(_text(info)))
    return 0
