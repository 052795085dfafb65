"""Train Motion2Text: `torchrun --nproc_per_node N train_t5_stagcn.py --cfg_file results/<exp>/config.yaml`.

Pretraining (TASK.PRETRAIN: true) writes pretrain_checkpoints/; finetuning writes checkpoints/ and starts
from the newest pretrain checkpoint. Launching the same command again resumes exactly.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import yaml

from common.errors import UserError, exits_on_user_error, sample_names
from engine.run_lock import LOCK_NAME, lock_experiment_folder

log = logging.getLogger("motion2text")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg_file", required=True, help="results/<exp>/config.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set OPTIMIZER.LR=3e-4 DATA.BATCH_SIZE=8")
    p.add_argument("--dry-run", action="store_true",
                   help="build config, data and model; tell the optimizer steps, the warmup share, which weights "
                        "load, the device and the precision, then a JSON summary line; train nothing")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML: every key, defaults and --set applied) and exit")
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


# Warmup from this share of the run on: the learning rate ramps up for most of it and barely decays.
WARMUP_WARNING_FRACTION = 0.5


def dry_run_summary(exp, dist) -> dict:
    """What training would do, logged for a reader; returned for the JSON summary line."""
    import torch

    from engine.experiment import parameter_counts
    from engine.precision import autocast_dtype
    from engine.trainer import train_sampler

    cfg = exp.cfg
    opt = cfg.OPTIMIZER
    per_epoch = math.ceil(len(train_sampler(exp, dist)) / opt.GRAD_ACCUM_STEPS)
    steps = {"per_epoch": per_epoch, "epochs": opt.MAX_EPOCH, "total": per_epoch * opt.MAX_EPOCH,
             "done": exp.resume_state["global_step"] if exp.resume_state is not None else 0}
    warmup = {"steps": opt.WARMUP_STEPS, "fraction": round(opt.WARMUP_STEPS / steps["total"], 4)}
    weights = planned_weights(exp)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype(cfg, dist.device)]
    log.info("dry run: %d optimizer steps/epoch x %d epochs = %d optimizer steps%s; batch %d per rank x %d rank(s), "
             "%d micro-batch(es) per step", per_epoch, opt.MAX_EPOCH, steps["total"],
             f" ({steps['done']} done before this resume)" if steps["done"] else "", cfg.DATA.BATCH_SIZE,
             dist.world_size, opt.GRAD_ACCUM_STEPS)
    log.info("warmup: %d steps, %.0f%% of the run", warmup["steps"], 100 * warmup["fraction"])
    if warmup["fraction"] >= WARMUP_WARNING_FRACTION:
        log.warning("OPTIMIZER.WARMUP_STEPS=%d is %.0f%% of the run's %d optimizer steps: the learning rate ramps up "
                    "for most of the run%s; lower WARMUP_STEPS or train more epochs", opt.WARMUP_STEPS,
                    100 * warmup["fraction"], steps["total"],
                    " and never reaches OPTIMIZER.LR" if warmup["fraction"] >= 1 else " and barely decays")
    log.info("weights: %s", weights["summary"])
    log.info("device %s, precision %s, %d process(es)", dist.device, precision, dist.world_size)
    params = parameter_counts(exp.model)
    log.info("parameters: %d trainable of %d (%.2f%%)", params["trainable"], params["total"],
             100 * params["trainable"] / params["total"])
    return {"params": params,
            "data": {"train_samples": len(exp.train_set), "test_clips": len(exp.test_set)},
            "logdir": str(cfg.logdir), "world_size": dist.world_size, "optimizer_steps": steps, "warmup": warmup,
            "weights": weights, "device": str(dist.device), "precision": precision}


def planned_weights(exp) -> dict:
    """Where training's weights come from: {"load": "resume" | "finetune-init" | "fresh", "path": the checkpoint,
    "searched": what WEIGHT_PATH or pretrain_checkpoints/ resolved to, "summary": one line}."""
    from engine.checkpoint import checkpoint_name

    cfg = exp.cfg
    if exp.resume_state is not None:
        state = exp.resume_state
        path = cfg.checkpoint_dir / checkpoint_name(state["epoch"], state["batches_done"])
        return {"load": "resume", "path": str(path),
                "summary": f"resume from {path} (epoch {state['epoch']}, step {state['global_step']})"}
    pretrain_folder = cfg.logdir / "pretrain_checkpoints"
    if exp.init_source is not None:
        searched = cfg.path(cfg.WEIGHT_PATH) if cfg.WEIGHT_PATH else pretrain_folder
        where = f"WEIGHT_PATH {cfg.WEIGHT_PATH} resolved to" if cfg.WEIGHT_PATH else "newest valid checkpoint in"
        return {"load": "finetune-init", "path": str(exp.init_source), "searched": str(searched),
                "summary": f"finetune-init from {exp.init_source} ({where} {searched}; the projection starts fresh)"}
    t5 = f"; T5 from {cfg.T5.NAME}" if cfg.T5.NAME else ""
    if not cfg.TASK.PRETRAIN:  # WEIGHT_PATH is unset here: a set one that finds nothing is an error
        return {"load": "fresh", "path": None, "searched": str(pretrain_folder),
                "summary": f"fresh: no valid checkpoint in {pretrain_folder} and WEIGHT_PATH is not set (pretrain "
                           f"into this folder first, or set WEIGHT_PATH){t5}"}
    return {"load": "fresh", "path": None, "summary": f"fresh (random initialisation{t5})"}


@exits_on_user_error
def main(argv=None, callbacks: tuple = ()) -> int:
    """`callbacks`: extra engine.callbacks.Callback objects for the trainer (the benchmarks record timings)."""
    args = parse_args(argv)
    # The config is checked before the heavy imports (torch, transformers: seconds): `--help` and config
    # errors answer at once.
    from engine.config_loader import load_config

    cfg = load_config(args.cfg_file, args.set)
    if args.print_config:  # what config_resolved.yaml would hold; loads back with load_config
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0

    from engine.config_loader import save_config
    from engine.distributed import init_distributed, shutdown
    from engine.experiment import build_experiment
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
            if dist.is_main:  # one summary, whatever the number of processes
                print(json.dumps(dry_run_summary(exp, dist)), flush=True)
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
