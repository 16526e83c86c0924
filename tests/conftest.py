"""Shared fixtures: where the read-only real data lives (../shared/data by default)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_runs import fake_output, tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shared-data",
        default=os.environ.get("LORASTUDY_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
        help="folder with the real offline data files (GSM8K, HumanEval, ...); env LORASTUDY_SHARED_DATA",
    )
    parser.addoption("--run-slow", action="store_true", help="also run the slow end-to-end tests")


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """The shared data folder; tests that need it skip with a clear reason when it is absent."""
    path = Path(request.config.getoption("--shared-data"))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found (set --shared-data or LORASTUDY_SHARED_DATA)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long end-to-end tests, run with --run-slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --run-slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# The analyses that open weights (tests of checkpoints, spectra, beyond) share one constructed world:
# a tiny tokenizer, a tiny Llama and a fake output tree of finished runs (tests/fake_runs.py).
@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return tiny_llama(tok)


@pytest.fixture(scope="module")
def fake(tmp_path_factory, base, tok):
    return fake_output(tmp_path_factory.mktemp("fake"), base, tok)
