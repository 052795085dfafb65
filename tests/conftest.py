"""Fixtures shared by the test files."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """In-process training on a shared 2-core machine: one intra-op thread (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
