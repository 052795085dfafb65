"""Train Motion2Text: `torchrun --nproc_per_node N train_t5_stagcn.py --cfg_file results/<exp>/config.yaml`.

Pretraining (TASK.PRETRAIN: true) writes pretrain_checkpoints/; finetuning writes checkpoints/ and starts
from the newest pretrain checkpoint. Launching the same command again resumes exactly.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from common.errors import UserError, exits_on_user_error, sample_names
from engine.run_lock import LOCK_NAME, lock_experiment_folder

log = logging.getLogger("motion2text")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg_file", required=True, help="results/<exp>/config.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set OPTIMIZER.LR=3e-4 DATA.BATCH_SIZE=8")
    p.add_argument("--dry-run", action="store_true", help="build config, data and model, print a JSON summary, exit")
    return p.parse_args(argv)


# The trainer (and DDP's reducer inside it) lives until the process ends: freeing the reducer after the
# process group was destroyed runs gloo's destructor, which joins a worker thread that may be waiting for
# the GIL held by the joining thread — a rare hang at exit (seen ~1 run in 15). `__main__` exits with
# os._exit after flushing, so that teardown never runs.
_KEEP_ALIVE: list = []


# Any of these in LOGDIR makes it an experiment folder that training may write into (and resume from).
EXPERIMENT_ENTRIES = frozenset({"config.yaml", "config_resolved.yaml", "train.log", "checkpoints",
                                "pretrain_checkpoints"})


def check_logdir(logdir: Path) -> None:
    """The experiment folder: new, empty, or an experiment's. Checked before anything is built or written, so a
    mistyped LOGDIR never overwrites a user's files with tokenizer/, jsons/ or train.log."""
    resolved = logdir.resolve()
    if resolved == resolved.parent or resolved == Path.home().resolve():
        what = "a file system root" if resolved == resolved.parent else "your home folder"
        raise UserError(f"LOGDIR {logdir}: is {what}, expected an experiment folder such as results/<exp>")
    if not logdir.exists():
        return
    if not logdir.is_dir():
        raise UserError(f"LOGDIR {logdir}: exists and is not a folder, expected the experiment folder "
                        "(default: the folder holding config.yaml)")
    try:
        entries = {p.name for p in logdir.iterdir()} - {LOCK_NAME}
    except OSError as e:
        raise UserError(f"LOGDIR {logdir}: cannot read the folder ({e.strerror or e})") from None
    if entries and not entries & EXPERIMENT_ENTRIES:
        raise UserError(f"LOGDIR {logdir}: holds files that are not an experiment's ({sample_names(entries)}) and "
                        f"none of {', '.join(sorted(EXPERIMENT_ENTRIES))}; give a new or empty folder")


@exits_on_user_error
def main(argv=None, callbacks: tuple = ()) -> int:
    """`callbacks`: extra engine.callbacks.Callback objects for the trainer (the benchmarks record timings)."""
    args = parse_args(argv)
    # The config is checked before the heavy imports (torch, transformers: seconds): `--help` and config
    # errors answer at once.
    from engine.config_loader import load_config

    cfg = load_config(args.cfg_file, args.set)

    from engine.config_loader import save_config
    from engine.distributed import init_distributed, shutdown
    from engine.experiment import build_experiment, parameter_counts
    from engine.logs import attach_log_file, setup_logging
    from engine.trainer import StopRequested, Trainer, TrainingAborted
    from metrics.caption import CaptionScorer
    from models.tokenizer import save_tokenizer

    lock = None
    try:
        dist = init_distributed(cfg.TRAIN.PG_TIMEOUT_S)
        logdir = cfg.logdir
        check_logdir(logdir)
        if not args.dry_run:  # a dry run writes nothing: it may look at a folder while a run trains there
            lock = lock_experiment_folder(logdir, dist)
        # Only the lock file is written before the config, the data, the weights and Java have been checked: a
        # rejected run removes it and leaves the experiment folder as it was (the log is kept in memory until then).
        setup_logging(None, dist.rank, defer_file=dist.is_main and not args.dry_run)
        exp = build_experiment(cfg, dist)
        if args.dry_run:
            summary = {"params": parameter_counts(exp.model),
                       "data": {"train_samples": len(exp.train_set), "test_clips": len(exp.test_set)},
                       "logdir": str(logdir), "world_size": dist.world_size}
            if dist.is_main:  # one summary, whatever the number of processes
                print(json.dumps(summary), flush=True)
            return 0
        # Fails here without Java, not after an epoch. EVAL.SCORE false: predictions only, scored later.
        scorer = CaptionScorer(meteor=cfg.EVAL.METEOR) if cfg.EVAL.SCORE else None
        if dist.is_main:  # the lock created the folder
            attach_log_file(logdir / "train.log", dist.rank)
            save_config(cfg, logdir / "config_resolved.yaml")
            save_tokenizer(exp.model.codec.tokenizer, logdir / "tokenizer")
        trainer = Trainer(exp, dist, callbacks)
        _KEEP_ALIVE.append(trainer)
        trainer.fit(scorer if dist.is_main else None)
        log.info("done: checkpoints in %s, predictions in %s", cfg.checkpoint_dir, logdir / "jsons")
        return 0
    except StopRequested as e:
        log.warning("%s", e)
        return 1
    except TrainingAborted as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
        shutdown()


if __name__ == "__main__":
    code = main()
    if "metrics.caption" in sys.modules:  # os._exit skips atexit: stop the METEOR JVM here
        sys.modules["metrics.caption"].close_meteor()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
