"""docs/CONFIG.md is generated from the code that reads configs; it must match that code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training.config import SCHEMA
from training.config_doc import DOC, MODEL_CLASSES, render


def test_config_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/CONFIG.md is out of date: run `python -m training.config_doc --write`")


def test_every_key_and_model_field_is_documented() -> None:
    import importlib

    text = render()
    for table, spec in SCHEMA.items():
        for key in spec:
            assert f"| `{key}` |" in text, f"[{table}] {key} missing"
    for ref in MODEL_CLASSES.values():
        module, _, name = ref.partition(":")
        for f in dataclasses.fields(getattr(importlib.import_module(module), name)):
            assert f"| `{f.name}` |" in text
    assert "see `" not in text, "a [model] field without a description (MODEL_NOTES)"


def test_the_readme_points_at_it() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "docs/CONFIG.md" in readme
