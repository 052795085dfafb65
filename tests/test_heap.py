"""Freed heap memory goes back to the system after every optimizer step (TRAIN.MALLOC_TRIM)."""
import ctypes
import sys

import pytest

from tests.cli_helpers import build_in_process, one_cpu_process, tiny_data, write_experiment

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")


@linux
def test_heap_trimmer_returns_free_heap_pages_to_the_system():
    from common.heap import heap_trimmer

    trim = heap_trimmer()
    assert trim is not None
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KiB blocks stay under glibc's mmap threshold: they come from the heap. Keep every 8th so the
    # freed ones sit in the middle, where only malloc_trim can give them back.
    blocks = [libc.malloc(64 * 1024) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for i, b in enumerate(blocks):
        if i % 8:
            libc.free(b)
    assert trim(0) == 1  # something was released
    for i, b in enumerate(blocks):
        if not i % 8:
            libc.free(b)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = tiny_data(tmp_path_factory.mktemp("data"))
    return lambda every: write_experiment(tmp_path_factory.mktemp("exp"), data, OPTIMIZER={"MAX_EPOCH": 1},
                                          TRAIN={"MALLOC_TRIM": every}, EVAL={"SCORE": False})


@pytest.mark.slow
def test_the_trainer_trims_the_heap_every_n_optimizer_steps(tiny_run, monkeypatch):
    import engine.callbacks
    from engine.trainer import Trainer

    calls = []
    monkeypatch.setattr(engine.callbacks, "heap_trimmer", lambda: lambda pad: calls.append((trainer.global_step, pad)))
    trainer = Trainer(build_in_process(tiny_run(2)), one_cpu_process())
    trainer.fit(None)
    assert trainer.global_step == 3
    assert calls == [(2, 0)]  # after step 2 of 3: every 2nd step, not after the others


def test_malloc_trim_0_adds_no_trim_and_1_trims_after_every_step(tiny_run):
    from engine.callbacks import HeapTrim
    from engine.trainer import Trainer

    exp = build_in_process(tiny_run(0))
    assert not any(isinstance(cb, HeapTrim) for cb in Trainer(exp, one_cpu_process()).callbacks)
    exp = build_in_process(tiny_run(1))
    (trim,) = [cb for cb in Trainer(exp, one_cpu_process()).callbacks if isinstance(cb, HeapTrim)]
    assert trim.every == 1
