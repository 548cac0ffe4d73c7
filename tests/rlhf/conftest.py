"""Fixtures for rlhf tests: one tiny random-weight checkpoint per session, the shared data folder."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    return Path(os.environ.get("SHARED_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present (set SHARED_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from rlhf.models import load_tokenizer

    return load_tokenizer(tiny_dir)
