"""Notebooks are stored without outputs, open with a title, and have one papermill `parameters` cell whose
every assignment papermill can parse (a line it cannot parse is silently not overridable)."""
from __future__ import annotations

import logging
from pathlib import Path

import nbformat
import pytest
from papermill.translators import PythonTranslator

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_base_model", "01_finetune", "02_evaluate", "10_learning_forgetting"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_titled_and_parameterised(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "stored with outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assigned = [ln for ln in params[0].source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    with caplog.at_level(logging.WARNING):
        parsed = PythonTranslator.inspect(params[0])
    assert "Unable to parse" not in caplog.text
    assert len(parsed) == len(assigned), f"papermill parsed {len(parsed)} of {len(assigned)} parameters"
