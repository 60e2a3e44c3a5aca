"""Persistence of :class:`~fedrec.models.fm.FactorizationMachine`: its arrays and JSON state.

Arrays: ``param.bias`` (1,), ``param.<field>.w`` (size,), ``param.<field>.v`` (size, n_factors),
``table.<field>.{indptr,indices,values}`` (the CSR feature table of each user/item field) and
``item_first_seen``, ``item_events`` (with recent-popularity fields); JSON: field specs, table
encoders, ``age_norm``, ``context_windows``, ``reference_time``,
``rating_scale`` and the training history. Loading checks every shape (``expect_array``) and that
table indices lie inside their field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedrec.data.features_time import ItemEvents
from fedrec.models.base import ModelFormatError, expect_array
from fedrec.models.fields import Csr, FieldSpec, TableEncoder
from fedrec.models.fm_core import FMParams

if TYPE_CHECKING:
    from fedrec.models.fm import FactorizationMachine


def dump_state(model: FactorizationMachine) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON state ``Recommender.save`` writes for a fitted ``FactorizationMachine``."""
    assert model.params is not None
    arrays: dict[str, np.ndarray] = {"param.bias": model.params.bias.detach().numpy().reshape(1)}
    for spec in model.field_specs:
        arrays[f"param.{spec.name}.w"] = model.params.w[spec.name].detach().numpy()
        arrays[f"param.{spec.name}.v"] = model.params.v[spec.name].detach().numpy()
    for name, table in model.tables.items():
        arrays.update(table.arrays(f"table.{name}"))
    arrays["item_first_seen"] = model.item_first_seen
    if model.item_events is not None:
        arrays["item_events"] = model.item_events.keys
    state = {"fields": [s.to_json() for s in model.field_specs],
             "encoders": {k: v.to_json() for k, v in model.encoders.items()},
             "age_norm": list(model.age_norm), "reference_time": model.reference_time,
             "rating_scale": list(model.rating_scale), "history": model.history.to_json(),
             "context_windows": {k: list(v) for k, v in model.context_windows.items()}}
    return arrays, state

def load_state(model: FactorizationMachine, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    """Restore ``model`` from :func:`dump_state` output; raise :class:`ModelFormatError` naming the array."""
    assert model.user_map is not None and model.item_map is not None
    c = model.config
    model.field_specs = [FieldSpec.from_json(f) for f in state["fields"]]
    model.encoders = {k: TableEncoder.from_json(v) for k, v in state["encoders"].items()}
    model.age_norm = (float(state["age_norm"][0]), float(state["age_norm"][1]))
    model.reference_time = int(state["reference_time"])
    model.rating_scale = (float(state["rating_scale"][0]), float(state["rating_scale"][1]))
    n_of = {"user": len(model.user_map), "item": len(model.item_map)}
    l2 = {s.name: c.l2_per_field.get(s.name, c.l2_factors) for s in model.field_specs}
    model.params = FMParams(model.field_specs, c.n_factors, c.init_std, 0.0, l2, c.l2_linear,
                            generator=torch.Generator())  # every tensor is overwritten below
    bias = expect_array(arrays, "param.bias", (1,)).astype(np.float32)
    model.params.bias.data = torch.from_numpy(bias)[0]
    model.tables = {}
    for s in model.field_specs:
        model.params.w[s.name].data = torch.from_numpy(
            expect_array(arrays, f"param.{s.name}.w", (s.size,)).astype(np.float32))
        model.params.v[s.name].data = torch.from_numpy(
            expect_array(arrays, f"param.{s.name}.v", (s.size, c.n_factors)).astype(np.float32))
        if s.side == "context":
            continue
        n = n_of[s.side]
        ptr = expect_array(arrays, f"table.{s.name}.indptr", (n + 2,)).astype(np.int64)
        nnz = int(ptr[-1])
        idx = expect_array(arrays, f"table.{s.name}.indices", (nnz,)).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= s.size):
            raise ModelFormatError(f"array 'table.{s.name}.indices' has ids outside [0, {s.size})")
        vals = expect_array(arrays, f"table.{s.name}.values", (nnz,)).astype(np.float32)
        model.tables[s.name] = Csr(ptr, idx, vals)
    has_age = any(s.name == "item_age" for s in model.field_specs)
    model.item_first_seen = expect_array(arrays, "item_first_seen",
                                        (len(model.item_map) if has_age else 0,)).astype(np.int64)
    windows = state.get("context_windows", {})  # absent: a model saved before the time-aware fields
    model.context_windows = {str(k): (float(v[0]), float(v[1]), float(v[2])) for k, v in windows.items()}
    context = {s.name for s in model.field_specs if s.side == "context"} - {"item_age"}
    if context != set(model.context_windows):
        raise ModelFormatError(f"state 'context_windows' names {sorted(model.context_windows)}, the context "
                               f"fields are {sorted(context)}")
    model.item_events = None
    if context:
        if "item_events" not in arrays:
            raise ModelFormatError("array 'item_events' is missing (the model has recent-popularity fields)")
        try:
            model.item_events = ItemEvents(arrays["item_events"])
        except ValueError as exc:
            raise ModelFormatError(f"array 'item_events': {exc}") from exc
    model.params.eval()
    model._factor_cache = None
