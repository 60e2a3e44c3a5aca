"""docs/CONFIG.md, generated from the code that reads the config: every key, its type, default and
what it is (``python -m training.config_doc --write``; tests/test_docs_config.py fails when the file
and the code disagree).

Sources: :data:`training.config.SCHEMA` (tables, keys, types, required), the dataclasses of
:mod:`training.config` (defaults), the commented example in its module docstring and
:data:`~training.config.NETWORK_KEYS` (descriptions), :data:`training.jobs.PROTOCOLS` (the ``[data]``
keys of each role) and each protocol's config dataclass (the ``[model]`` fields, their types and
defaults; descriptions from the docstrings of the class and its module).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"

#: the ``[model]`` dataclass of each protocol (what training/<protocol>_job.py builds)
MODEL_CLASSES = {"hetero_fm": "fedrec.protocols.hetero_fm.config:HeteroFMConfig",
                 "fedmf": "fedrec.protocols.fedmf.config:FedMFConfig"}

#: short descriptions of the [model] fields, per protocol (the docstrings give the details and the math)
_FM_NOTES = {
    "objective": "regression (ratings), logistic (0/1 labels) or ranking (implicit positives + sampled "
                 "negatives)",
    "loss": "ranking objective's loss: bce or bpr",
    "n_factors": "latent factors per feature",
    "use_user_id": "a factor per user id (guest field)",
    "use_item_id": "a factor per item id (guest field)",
    "use_history": "the user's rated items as a field (guest)",
    "use_history_length": "the length of the user's history as a field (guest)",
    "use_user_features": "the host's user features (must stay true: the host's field)",
    "use_item_features": "the guest's item side table as a field",
    "layout": "the encrypted per-user packing: `compact` (default), `hiding` (the host never learns "
              "per-column sample counts; ~2x the CKKS work) or `static` (every aligned user in every "
              "batch, the host's plaintexts encoded once per run: faster when batches cover most "
              "aligned users, as for ratings; docs/SECURITY.md)",
    "use_item_age": "item age at the interaction as a field",
    "user_feature_columns": "host: the side-table columns used (default: all)",
    "item_feature_columns": "guest: the item-table columns used (default: all)",
    "l2_factors": "L2 penalty on the factors",
    "l2_per_field": "per-field L2 on the factors, e.g. {user_features = 0.2}",
    "l2_linear": "L2 penalty on the linear weights",
    "lr": "learning rate",
    "optimizer": "adam or sgd",
    "host_optimizer": "the host field's update, adam or sgd (default: optimizer; docs/SECURITY.md)",
    "batch_size": "rows per mini-batch (with label DP use 2048-4096: the noise per release is fixed)",
    "epochs": "maximum training epochs (early stopping may stop sooner)",
    "patience": "epochs without validation improvement before stopping",
    "init_std": "standard deviation of the initial factors",
    "n_negatives": "ranking: sampled negatives per positive",
    "validation": "early-stopping rows: random, cold, last or none",
    "validation_fraction": "validation = random: the share of rows held out",
    "cold_user_fraction": "validation = cold: the share of users made new",
    "cold_keep_first": "validation = cold: training rows kept per such user",
    "clip": "clip predictions to the training ratings' range",
    "seed": "seed of initialisation, batches and validation split",
    "show_progress": "progress bar of the training loop ([output] progress sets it for fedrec train)",
    "negatives": "ranking: uniform or popularity negatives",
    "negative_alpha": "negatives = popularity: sampling proportional to count^alpha",
    "early_stopping": "loss, or hr / ndcg at ranking_k (ranking only)",
    "ranking_k": "K of the HR/NDCG early-stopping metric",
    "refit": "retrain on all rows for the selected number of epochs",
    "row_order": "input, or canonical (results independent of the row order)",
    "weight_column": "a per-row weight column of the interactions (implicit feedback: docs/DATA.md)",
    "use_recent_popularity": "item popularity in recent windows as a guest field",
    "recent_windows_days": "the windows of use_recent_popularity, in days",
    "use_recent_items": "the user's last items, recency-weighted, as a guest field",
    "recent_items_n": "how many last items",
    "recency_half_life_days": "half-life of the recency weights, in days",
}
MODEL_NOTES: dict[str, dict[str, str]] = {
    "hetero_fm": {
        **_FM_NOTES,
        "backend": "ckks (default), paillier (about 100x slower), plain (NO encryption: tests only)",
        "ckks_preset": "CKKS parameter set",
        "paillier_key_bits": "Paillier modulus size",
        "label_dp": "on (default: label DP on what the host receives) or off (logged as a warning)",
        "dp_host_noise_multiplier": "host DP on its partials (0: off)",
        "dp_host_clip": "host DP: L2 clip of each user's partial",
        "dp_guest_noise_multiplier": "label DP given as a fixed noise multiplier (else dp_guest_epsilon)",
        "dp_guest_epsilon": "label DP budget for the whole training (unset: 2; at most 50)",
        "dp_guest_clip": "label DP: per-sample clip",
        "dp_guest_clip_part": "label DP: clip each residual (default) or, logistic only, scale each "
                              "sample by a label-free factor (half the noise for the same epsilon)",
        "dp_delta": "delta of the (epsilon, delta) guarantees",
        "timeout": "seconds either party waits for the other at any step",
    },
    "fedmf": {
        "n_factors": "latent factors k", "init_std": "standard deviation of the initial factors",
        "l2": "L2 penalty on the factors", "l2_bias": "L2 penalty on the biases",
        "rounds": "federated rounds", "local_epochs": "client epochs per round",
        "lr": "the item step, applied by the server on ciphertexts",
        "user_lr": "the clients' local user step",
        "item_damping": "an item's step is divided by its rating count + this",
        "clients_per_round": "clients asked per round (0: all)",
        "seed": "initial item factors and client selection",
        "min_ok": "uploads a round needs, else it is retried", "retries": "retries of a failed round",
        "timeout": "seconds the server waits for one client at one step",
        "backend": "ckks, or plain (NO encryption: tests only)", "ckks_preset": "CKKS parameter set",
        "value_bound": "uploads are clipped to this absolute value (counted)",
        "model_bound": "a decrypted model beyond this is refused as corrupt",
        "masks": "secure aggregation inside the encrypted uploads (on by default)",
        "mask_threshold": "Shamir threshold (0: a majority of the round's clients)",
        "mask_scale_bits": "masks within +-2^bits per term (0: from the number of clients)",
        "mask_group": "a secure sum is masked within groups of at most this many clients",
        "roster_sha256": "clients' pin of the roster the server relays (unset: trust the server's)",
        "show_progress": "progress bar", "idle_timeout": "how long a client waits for the server's next "
                                                         "request",
    },
}
#: descriptions of the table keys the commented example leaves without one
TABLE_NOTES = {("psi", "chunk_size"): "ids per PSI message (at most 65536)",
               ("psi", "buckets"): "0: one PSI session; N > 0: bucketed PSI in N buckets, one session each, "
                                   "memory one bucket's (both parties the same N; docs/SCALE.md)",
               ("checkpoint", "dir"): "where checkpoints are kept (a directory of its own)",
               ("ads", "refit"): "the advertiser (hetero_fm guest, logistic objective): `campaign` refits "
                                 "its campaign logistic regression beside the host's terms after training "
                                 "(refit.json: the scores of `fedrec ads predict` / `card`; docs/ADS.md), "
                                 "`off` keeps the FM as trained; `fedrec ads prepare` writes `campaign`",
               ("guard", "mode"): "the vertical FM guest: `blend` serves (1 - alpha) * bank alone + alpha * "
                                  "federated with alpha in [0, 1] chosen on the validation rows, `choose` "
                                  "the better of the two, `off` the federated model as trained; the host is "
                                  "unaffected (README: the guard)"}


def _description_from_docs(name: str, *objs: Any) -> str:
    for obj in objs:
        doc = getattr(obj, "__doc__", None) or ""
        m = re.search(rf"``{re.escape(name)}``(?: \([^)]*\))?: ([^;\n]+(?:\n  [^;\n*]+)*)", doc)
        if m:
            return " ".join(m.group(1).split()).rstrip(",.").replace("``", "`")
    return ""


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    text = text or str(hint).replace("typing.", "")
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(text, text)


def _toml(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _example_comments() -> dict[tuple[str, str], tuple[str, str]]:
    """``(table, key) -> (example value, comment)`` from training.config's commented example."""
    from training import config

    out: dict[tuple[str, str], tuple[str, str]] = {}
    table = ""
    for line in (config.__doc__ or "").splitlines():
        s = line.strip()
        m = re.match(r"^\[([\w.]+)\]", s)
        if m:
            table = "peers" if m.group(1).startswith("peers.") else m.group(1)
            continue
        m = re.match(r"^(\w+) = (.+?)\s+# (.*)$", s) or re.match(r"^(\w+) = (.+)$", s)
        if m and table:
            value = m.group(2).strip()
            out.setdefault((table, m.group(1)), (value, m.group(3) if m.lastindex == 3 else ""))
    return out


def _defaults() -> dict[str, dict[str, Any]]:
    from fedrec.compute.executor import ComputeConfig
    from training.config import (
        AdsConfig,
        CheckpointConfig,
        DataConfig,
        GuardConfig,
        NetworkConfig,
        PeerConfig,
        PsiConfig,
    )

    out: dict[str, dict[str, Any]] = {}
    for table, cls in (("network", NetworkConfig), ("peers", PeerConfig), ("data", DataConfig),
                       ("psi", PsiConfig), ("compute", ComputeConfig), ("checkpoint", CheckpointConfig),
                       ("ads", AdsConfig), ("guard", GuardConfig)):
        out[table] = {f.name: f.default for f in dataclasses.fields(cls)
                      if f.default is not dataclasses.MISSING}
    out["party"] = {"name": "the role"}
    out["checkpoint"]["dir"] = "<output dir>/checkpoints"
    out["output"] = {"progress": True}
    return out


def _row(key: str, type_: str, required: bool, default: Any, example: str, what: str) -> str:
    shown = "**required**" if required else (default if isinstance(default, str) and default.startswith(
        ("the ", "<")) else _toml(default))
    cells = [f"`{key}`", type_, shown, f"`{example}`" if example else "", what]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render() -> str:
    """The whole of docs/CONFIG.md."""
    from training.config import NETWORK_KEYS, PEER_KEYS, SCHEMA
    from training.jobs import GENERIC_DATA, PROTOCOLS

    examples, defaults = _example_comments(), _defaults()
    descriptions = {**{("network", k): d for k, (_, d) in NETWORK_KEYS.items()},
                    **{("peers", k): d for k, (_, d) in PEER_KEYS.items()}}
    lines = [
        "# Configuration reference (`fedrec train --config FILE.toml`)",
        "",
        "<!-- generated by `python -m training.config_doc --write` from training/config.py, training/jobs.py",
        "     and the protocols' config classes; tests/test_docs_config.py checks it is current -->",
        "",
        "One TOML file per party. `fedrec init --role guest|host` writes a complete one (docs/DEPLOY.md);",
        "`training/configs/*.toml` are commented examples. Relative paths are relative to the config file's",
        "folder. Unknown tables or keys, missing required keys and wrong types are refused before anything",
        "runs, with the file, the table and the key (and a suggestion for a misspelt key).",
        "",
    ]
    header = ["| key | type | default | example | what it is |", "|---|---|---|---|---|"]
    for table, spec in SCHEMA.items():
        if table in ("model", "data"):
            continue
        title = "[peers.NAME]" if table == "peers" else f"[{table}]"
        lines += [f"## `{title}`", ""]
        if table == "peers":
            lines += ["One table per peer, named by the peer's party name (e.g. `[peers.host]`).", ""]
            spec = {k: t for k, (t, _) in PEER_KEYS.items()}
        lines += header
        for key, (_, what, required) in spec.items():
            example, comment = examples.get((table, key), ("", ""))
            text = descriptions.get((table, key)) or TABLE_NOTES.get((table, key)) or comment
            if (table, key) == ("job", "protocol"):
                text = "the job: " + ", ".join(f"`{n}` ({p.description.split(':')[0]})"
                                               for n, p in PROTOCOLS.items())
            lines.append(_row(key, what.removeprefix("a ").removeprefix("an "), required,
                              defaults.get(table, {}).get(key), example, text))
        lines.append("")
    lines += ["## `[data]`", "", "Which keys a party may set depends on its protocol and role; any role may "
              "also set " + ", ".join(f"`{k}`" for k in GENERIC_DATA) + ". Formats: docs/DATA.md.", ""]
    lines += ["| protocol | role | key | required | what it is |", "|---|---|---|---|---|"]
    for pname, proto in PROTOCOLS.items():
        for rname, role in proto.roles.items():
            for key, what in role.required.items():
                lines.append(f"| {pname} | {rname} | `{key}` | yes | {what} |")
            for key, what in role.optional.items():
                lines.append(f"| {pname} | {rname} | `{key}` | no | {what} |")
    for key, what in GENERIC_DATA.items():
        example, _ = examples.get(("data", key), ("", ""))
        lines.append(f"| any | any | `{key}` | no (default {_toml(defaults['data'].get(key))}) | {what} |")
    lines.append("")
    lines += ["## `[model]`", "", "The protocol's configuration class; the *agreed* fields must be equal "
              "on every party (checked when the parties meet, naming the field and both values).", ""]
    for pname, ref in MODEL_CLASSES.items():
        module_name, _, cls_name = ref.partition(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
        agreed = set(getattr(module, "AGREED_FIELDS", ()))
        hints = typing.get_type_hints(cls)
        docs = [cls, module, *(importlib.import_module(b.__module__) for b in cls.__mro__[1:-1]),
                *(b for b in cls.__mro__[1:-1])]
        lines += [f"### `{pname}`: `{cls_name}` (`{module_name}`)", "",
                  "| key | type | default | agreed | what it is |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = _toml(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = _toml(f.default_factory())
            else:
                default = "**required**"
            what = (MODEL_NOTES[pname].get(f.name) or _description_from_docs(f.name, *docs)
                    or f"see `{module_name}`")
            mark = "yes" if f.name in agreed else ""
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in (
                f"`{f.name}`", _type_name(hints[f.name]), default, mark, what)) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="print (or --write) docs/CONFIG.md from the config code")
    p.add_argument("--write", action="store_true", help=f"write {DOC} instead of printing it")
    args = p.parse_args(argv)
    text = render()
    if args.write:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
