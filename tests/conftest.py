"""Fixtures shared by the test files."""
import pytest
import torch

from tests.cli_helpers import kept_logger


@pytest.fixture
def one_thread():
    """In-process training on a shared 2-core machine: one intra-op thread (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_logging():
    """The entry points reconfigure the `motion2text` logger; put it back after an in-process call."""
    with kept_logger():
        yield


@pytest.fixture(scope="session")
def bench_runs(tmp_path_factory):
    """Every benchmark smoke run, started at once on first use (tests/bench_runs.py)."""
    from tests.bench_runs import BenchRuns

    runs = BenchRuns(tmp_path_factory.mktemp("bench_runs"))
    yield runs
    runs.stop()
