"""The host's half of a trained vertical FM as an artifact (:mod:`fedrec.artifacts`).

``arrays.npz``: ``w[n]``, ``v[n, k]`` of the user-feature field (and ``w0 = 0``: the bias is the
guest's); ``meta.json``: the field, its table encoder, the host's config and the run id (the run both
halves and the exported partials share, checked by the scorer). Format ``fedrec.hetero_fm.host``,
version 2 (version 1, written before artifacts carried digests, is read too).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from fedrec.artifacts import ArtifactError, read_artifact, write_artifact
from fedrec.models.fields import FieldSpec, TableEncoder
from fedrec.models.fm_core import FMParams
from fedrec.protocols.hetero_fm.config import HOST_FIELD, HeteroFMConfig

HOST_FORMAT = "fedrec.hetero_fm.host"
HOST_VERSION = 2


def save_host_half(directory: str | Path, params: FMParams, spec: FieldSpec, encoder: TableEncoder,
                   config: HeteroFMConfig, run_id: str | None) -> Path:
    arrays = {"w": params.w[HOST_FIELD].detach().numpy(), "v": params.v[HOST_FIELD].detach().numpy()}
    meta = {"field": spec.to_json(), "encoder": encoder.to_json(), "config": asdict(config), "run_id": run_id}
    write_artifact(directory, HOST_FORMAT, HOST_VERSION, arrays, meta)
    return Path(directory)


def load_host_half(directory: str | Path) -> tuple[FMParams, TableEncoder, HeteroFMConfig, str | None]:
    """``(params, encoder, config, run_id)``; :class:`ArtifactError` naming the file and field."""
    art = read_artifact(directory, HOST_FORMAT, [1, HOST_VERSION], required=("field", "encoder", "config"),
                        require_digest=False)
    meta_path = Path(directory) / "meta.json"
    try:
        raw: dict[str, Any] = dict(art.meta["config"])
        known = {f.name for f in fields(HeteroFMConfig)}
        config = HeteroFMConfig(**{k: v for k, v in raw.items() if k in known})
        encoder = TableEncoder.from_json(art.meta["encoder"])
        spec = FieldSpec.from_json(art.meta["field"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{meta_path}: fields 'config'/'encoder'/'field' are invalid: {exc}") from exc
    if spec.name != HOST_FIELD or spec.size != encoder.size:
        raise ArtifactError(f"{meta_path}: field 'field' is {spec.to_json()}, expected {HOST_FIELD!r} of the "
                            f"encoder's {encoder.size} columns")
    w, v = art.arrays.get("w"), art.arrays.get("v")
    if w is None or v is None or w.shape != (spec.size,) or v.shape != (spec.size, config.n_factors):
        raise ArtifactError(f"{Path(directory) / 'arrays.npz'}: arrays 'w'/'v' must have shapes "
                            f"({spec.size},)/({spec.size}, {config.n_factors})")
    params = FMParams([spec], config.n_factors, config.init_std, 0.0, {HOST_FIELD: config.l2_host_factors},
                      config.l2_linear, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        params.w[HOST_FIELD].copy_(torch.from_numpy(w.astype("float32")))
        params.v[HOST_FIELD].copy_(torch.from_numpy(v.astype("float32")))
    run_id = art.meta.get("run_id")
    return params, encoder, config, run_id if isinstance(run_id, str) else None
