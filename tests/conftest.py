"""Fixtures shared by the test files."""
import logging

import pytest
import torch


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
    logger = logging.getLogger("motion2text")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()  # e.g. the train.log FileHandler of an in-process run
    logger.handlers[:], logger.level, logger.propagate = saved
