"""Cross-validation grouped by person: one config trained on every person fold, one table.

    .venv/bin/python tools/bx_cv.py results/bx_no_retrieval [--epochs E] [--jobs 2] [--folds 5] [--seed 42]
                                    [--splits data/splits] [--name bx] [--tag T] [--out DIR] [--set KEY=VALUE ...]
                                    [--decode GENERATION.KEY=VALUE ...] [--exclude PERSON|CLIP]

The folds are `<splits>/<name>_cv{k}_{train,val}.pkl` (`python -m dataloaders.splits … --folds K`; `make bx-cv`
makes them). Fold k trains into `<out>/cv{k}` for exactly E epochs (default: the config's OPTIMIZER.MAX_EPOCH; no
early stopping, one evaluation at the last epoch, training clips never retrieve their own person — `--exclude
CLIP`: never themselves, for the seen-person folds of `--fold-by clip`), `--jobs`
single-thread trainings at a time, each logging to `<out>/cv{k}.log`. A fold that has its last-epoch metrics
is not trained again; an interrupted one resumes. Then, per fold: the last-epoch metrics, the baselines of
`metrics/baselines.py` and the motion control of the last checkpoint (`metrics/motion_control.py`), cached
in `<out>/cv{k}/cv_eval.json`. The table (CIDEr per fold, mean ± std over folds, how many distinct captions
the model wrote per fold) and a JSON summary go to `<out>/cv_summary.{md,json}`. Default out:
results/bx_cv/<config name>[_<tag>].

`--decode GENERATION.KEY=VALUE …` scores the same trained folds decoded otherwise (the training is the one
without it, and is reused when finished): the model's row is then its real-motion captions re-generated with
those settings, cached in `cv{k}/cv_eval_<settings>.json`, and the table goes to `cv_summary_<settings>.{md,json}`
— a paired comparison of two decodings on the same checkpoints.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.errors import UserError, exits_on_user_error  # noqa: E402

# Keys each fold's command sets; a --set of one of them would silently break the protocol.
RUNNER_KEYS = ("LOGDIR", "DATA.TRAIN", "DATA.TEST", "OPTIMIZER.MAX_EPOCH", "EVAL.METRIC_PERIOD",
               "EVAL.EARLY_STOP_PATIENCE", "RETRIEVAL.EXCLUDE")
MODEL = "model, last epoch"
SWAPS = {"swap_technique": "model, motion swapped within technique",
         "swap_person_technique": "model, motion swapped within person+technique"}
SUMMARY_KEYS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("config", help="experiment folder holding config.yaml, e.g. results/bx_no_retrieval")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the config's OPTIMIZER.MAX_EPOCH)")
    p.add_argument("--jobs", type=int, default=2, help="folds trained at a time, one thread each")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42, help="SEED of every fold's training")
    p.add_argument("--splits", default="data/splits", help="folder of the fold files")
    p.add_argument("--name", default="bx", help="fold file prefix")
    p.add_argument("--tag", help="appended to the default output folder name")
    p.add_argument("--out", help="output folder (default: results/bx_cv/<config name>[_<tag>])")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for every fold")
    p.add_argument("--exclude", choices=("PERSON", "CLIP"), default="PERSON",
                   help="RETRIEVAL.EXCLUDE of every fold: PERSON for new-person folds, CLIP for seen-person folds")
    p.add_argument("--decode", nargs="*", default=[], metavar="GENERATION.KEY=VALUE",
                   help="score the trained folds decoded with these settings (the training is unchanged)")
    return p.parse_args(argv)


def decode_slug(decode: list[str]) -> str:
    """'' without decoding overrides, else '_GENERATION.GUIDANCE-0.5' (file-name safe, one per setting)."""
    return "".join("_" + s.replace("=", "-").replace("/", "-") for s in decode)


# ---- training ------------------------------------------------------------------------------------

def fold_files(splits: Path, name: str, k: int) -> tuple[Path, Path]:
    train, val = (splits / f"{name}_cv{k}_{part}.pkl" for part in ("train", "val"))
    for path in (train, val):
        if not path.is_file():
            raise UserError(f"{path}: fold file not found; make the folds with `python -m dataloaders.splits "
                            f"--data ../shared/data/bx/BX_train.pkl --out {splits} --name {name} --folds K`")
    return train, val


def fixed_epoch_overrides(epochs: int) -> list[str]:
    """Train exactly `epochs` epochs and score once, at the last: nothing is chosen on the clips scored."""
    return [f"OPTIMIZER.MAX_EPOCH={epochs}", f"EVAL.METRIC_PERIOD={epochs}", "EVAL.EARLY_STOP_PATIENCE=0",
            "TRAIN.SANITY_EVAL=false"]


def fold_overrides(out: Path, k: int, train: Path, val: Path, epochs: int, seed: int, extra: list[str],
                   exclude: str = "PERSON") -> list[str]:
    return [f"LOGDIR={out / f'cv{k}'}", f"DATA.TRAIN={train}", f"DATA.TEST={val}", *fixed_epoch_overrides(epochs),
            f"RETRIEVAL.EXCLUDE={exclude}", f"SEED={seed}", *extra]


def finished(run: Path, epochs: int) -> bool:
    return (run / "jsons" / f"metrics_epoch{epochs}.json").is_file()


def train_fold(cfg_file: Path, overrides: list[str], log: Path) -> int:
    cmd = [sys.executable, str(REPO / "train_t5_stagcn.py"), "--cfg_file", str(cfg_file), "--set", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ OMP_NUM_THREADS=1 " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def train_folds(cfg_file: Path, out: Path, folds: list[tuple[Path, Path]], epochs: int, seed: int,
                extra: list[str], jobs: int, exclude: str) -> None:
    todo = [k for k in range(len(folds)) if not finished(out / f"cv{k}", epochs)]
    for k in range(len(folds)):
        print(f"cv{k}: {'training, log ' + str(out / f'cv{k}.log') if k in todo else 'finished, not trained again'}",
              flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = dict(zip(todo, pool.map(lambda k: train_fold(
            cfg_file, fold_overrides(out, k, *folds[k], epochs, seed, extra, exclude), out / f"cv{k}.log"), todo)))
    failed = [k for k, code in codes.items() if code != 0 or not finished(out / f"cv{k}", epochs)]
    if failed:
        raise UserError("training failed for fold(s) " + ", ".join(f"cv{k} (see {out / f'cv{k}.log'})" for k in failed))


# ---- evaluation of one fold ----------------------------------------------------------------------

def distinct_captions(run: Path, epochs: int) -> list[int]:
    """[distinct captions, clips] of the model's last-epoch predictions: 1 of 34 is one caption for every clip."""
    preds = json.loads((run / "jsons" / f"results_epoch{epochs}.json").read_text())
    return [len(set(preds.values())), len(preds)]


def read_cache(path: Path, checkpoint: str, meteor: bool) -> dict:
    """A fold's cached evaluation when it is of `checkpoint`, scored with METEOR as asked; else {}."""
    cached = json.loads(path.read_text()) if path.is_file() else {}
    return cached if cached.get("checkpoint") == checkpoint and cached.get("meteor") == meteor else {}


def plain_baselines(run: Path, checkpoint: str, meteor: bool) -> tuple:
    """(baselines, note, nearest swaps) from the fold's plain evaluation of the same checkpoint, scored the same
    way; (None, None, None) when there is none."""
    plain = read_cache(run / "cv_eval.json", checkpoint, meteor)
    if "nearest_swaps" not in plain:
        return None, None, None
    return plain["baselines"], plain["note"], plain["nearest_swaps"]


def evaluate_fold(run: Path, epochs: int, decode: tuple[str, ...] = ()) -> dict:
    """{"model", "motion_control", "baselines", "note", ...} of a trained fold; cached in <run>/cv_eval.json
    for its last checkpoint. With `decode` (GENERATION.* overrides) the model's metrics and distinct captions
    are those of its real-motion captions decoded so, cached in <run>/cv_eval_<settings>.json."""
    from dataloaders.formats import load_clips
    from dataloaders.splits import person_of
    from engine import checkpoint as ckpt
    from engine.config_loader import load_config
    from engine.prediction import captions_of, default_device, load_inference_clips, load_standards_for
    from engine.weights import load_model
    from metrics.baselines import nearest_swap_rows, score_baselines
    from metrics.caption import CaptionScorer
    from metrics.motion_control import motion_control_json, run_motion_control
    from metrics.report import read_experiment_metrics, references_from_clips, write_json

    cfg = load_config(run / "config_resolved.yaml", list(decode))
    path = ckpt.newest_valid_checkpoint(cfg.checkpoint_dir)
    if path is None:
        raise UserError(f"{cfg.checkpoint_dir}: no valid checkpoint; train the fold first")
    cache = run / f"cv_eval{decode_slug(list(decode))}.json"
    cached = read_cache(cache, path.name, cfg.EVAL.METEOR)
    valid = bool(cached)
    if valid and not decode:
        cached["distinct_captions"] = distinct_captions(run, epochs)  # caches written before it
    if valid and "nearest_swaps" in cached:
        return cached
    scorer = CaptionScorer(meteor=cfg.EVAL.METEOR)
    train_path, test_path = cfg.path(cfg.DATA.TRAIN), cfg.path(cfg.DATA.TEST)
    train, test = load_clips(train_path), load_clips(test_path)
    refs = references_from_clips(test, test_path)
    if valid:  # caches written before the swapped-neighbour rows: those need no model
        cached["nearest_swaps"] = nearest_swap_rows(scorer, train, test, refs)
        write_json(cache, cached)
        return cached
    baselines, note, swaps = plain_baselines(run, path.name, cfg.EVAL.METEOR) if decode else (None, None, None)
    if baselines is None:  # decoding changes the model's captions only: the baselines of the plain run stand
        baselines, note = score_baselines(scorer, train, test, refs)
        swaps = nearest_swap_rows(scorer, train, test, refs)
    standards = load_standards_for(cfg)
    clips, segment = load_inference_clips(cfg, test_path, standards)
    device = default_device()
    model, _ = load_model(cfg, path, device, standards)
    control = run_motion_control(lambda inputs: captions_of(model, inputs, cfg, segment, cfg.DATA.EVAL_BATCH_SIZE,
                                                            device), clips, scorer)
    if decode:
        real = control["captions"]["real"]
        model_metrics, distinct = control["metrics"]["real"], [len(set(real.values())), len(real)]
    else:
        model_metrics, distinct = read_experiment_metrics(run)[epochs], distinct_captions(run, epochs)
    result = {"checkpoint": path.name, "meteor": cfg.EVAL.METEOR, "train": str(train_path), "test": str(test_path),
              "decode": list(decode),
              "val_persons": sorted({person_of(c["video_name"]) for c in test}, key=lambda p: (len(p), p)),
              "model": model_metrics, "distinct_captions": distinct,
              "motion_control": motion_control_json(control),
              "baselines": baselines, "nearest_swaps": swaps, "note": note}
    write_json(cache, result)
    return result


# ---- the table -----------------------------------------------------------------------------------

def fold_rows(fold: dict) -> dict[str, dict[str, float]]:
    """{row name: {metric: value}} of one fold: the model, its two swaps, each baseline (multi-draw rows:
    the mean over the draws), then each nearest-neighbour baseline with the motion swapped."""
    rows = {MODEL: fold["model"]}
    rows.update({label: fold["motion_control"][key] for key, label in SWAPS.items()})
    for name, draws in fold["baselines"].items():
        rows[name] = {k: statistics.mean(d[k] for d in draws) for k in draws[0]}
    rows.update(fold.get("nearest_swaps", {}))
    return rows


def cv_table(folds: list[dict]) -> tuple[str, dict]:
    """(markdown table + verdict lines, JSON summary) from the per-fold results of `evaluate_fold`."""
    from metrics.baselines import CONSTANT, SWAPPED
    from metrics.summary import mean_std

    per_fold = [fold_rows(f) for f in folds]
    names = list(per_fold[0])
    keys = [k for k in SUMMARY_KEYS if all(k in rows[MODEL] for rows in per_fold)]
    header = ["model / baseline"] + [f"cv{i} CIDEr" for i in range(len(folds))] + [f"{k} mean ± std" for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    summary_rows = {}
    for name in names:
        values = {k: [rows[name][k] for rows in per_fold if k in rows[name]] for k in keys}
        summary_rows[name] = {"CIDEr per fold": values.get("CIDEr", []),
                              **{k: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                                 for k, v in values.items() if v}}
        cells = [f"{v:.2f}" for v in values.get("CIDEr", [])] + [mean_std(values[k]) if values[k] else "–" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    model = [rows[MODEL]["CIDEr"] for rows in per_fold]
    swapped = [n for n in names if n.endswith(SWAPPED) and n not in SWAPS.values()]
    nearest = [n for n in names if n.startswith("nearest neighbour") and n not in swapped]
    baselines = [n for n in names if n != MODEL and n not in SWAPS.values() and n not in swapped]
    wins = {
        "the constant caption": sum(m > rows[CONSTANT]["CIDEr"] for m, rows in zip(model, per_fold)),
        "every nearest-neighbour baseline": sum(all(m > rows[n]["CIDEr"] for n in nearest)
                                                for m, rows in zip(model, per_fold)),
        "every baseline": sum(all(m > rows[n]["CIDEr"] for n in baselines) for m, rows in zip(model, per_fold)),
    }
    drops = {label: sum(rows[label]["CIDEr"] < m for m, rows in zip(model, per_fold)) for label in SWAPS.values()}
    strongest = max(baselines, key=lambda n: summary_rows[n]["CIDEr"]["mean"])
    n = len(folds)
    lines += ["", *(f"folds where the model beats {what} (CIDEr): {w}/{n}" for what, w in wins.items()),
              *(f"folds where {label.split(', ')[1]} lowers the model's CIDEr: {d}/{n}" for label, d in drops.items()),
              *(swap_line(n.removesuffix(SWAPPED), summary_rows, per_fold) for n in swapped),
              f"strongest baseline over the folds: {strongest} (CIDEr {summary_rows[strongest]['CIDEr']['mean']:.2f})",
              "distinct captions the model wrote, of its clips: "
              + ", ".join(f"cv{i} {f['distinct_captions'][0]}/{f['distinct_captions'][1]}" for i, f in enumerate(folds)),
              "(no motion): the row never reads the validation clip's motion.",
              *(f"cv{i} (val persons {', '.join(f['val_persons'])}): {f['note']}" for i, f in enumerate(folds))]
    summary = {"folds": folds, "rows": summary_rows, "wins_over": wins, "swap_lowers_cider": drops,
               "strongest_baseline": strongest, "n_folds": n}
    return "\n".join(lines), summary


def swap_line(row: str, summary_rows: dict, per_fold: list[dict]) -> str:
    """How much the within-technique swap costs a nearest-neighbour baseline: the motion's worth to retrieval."""
    from metrics.baselines import SWAPPED

    real, swap = summary_rows[row]["CIDEr"]["mean"], summary_rows[row + SWAPPED]["CIDEr"]["mean"]
    lower = sum(rows[row + SWAPPED]["CIDEr"] < rows[row]["CIDEr"] for rows in per_fold)
    change = f"{100 * (swap - real) / real:+.0f} %" if real else "–"
    return (f"{row}: within-technique swap {real:.2f} → {swap:.2f} CIDEr ({change}), lower in "
            f"{lower}/{len(per_fold)} folds")


@exits_on_user_error
def main(argv=None) -> int:
    a = parse_args(argv)
    from engine.config_loader import load_config
    from metrics.report import write_json

    cfg_dir = Path(a.config)
    cfg_file = cfg_dir / "config.yaml" if cfg_dir.is_dir() else cfg_dir
    if a.jobs < 1 or a.folds < 2:
        raise UserError(f"--jobs {a.jobs} / --folds {a.folds}: expected jobs >= 1 and folds >= 2")
    clash = [s for s in a.set if s.split("=", 1)[0] in RUNNER_KEYS]
    if clash:
        raise UserError(f"--set {' '.join(clash)}: set by the runner for each fold (use --out, --epochs, --exclude)")
    not_decoding = [s for s in a.decode if not s.startswith("GENERATION.")]
    if not_decoding:
        raise UserError(f"--decode {' '.join(not_decoding)}: only GENERATION.* keys change how trained folds are "
                        "scored; train with --set for the others")
    cfg = load_config(cfg_file, a.set + a.decode)  # checks the config and the extra keys before anything runs
    epochs = a.epochs or cfg.OPTIMIZER.MAX_EPOCH
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: expected >= 1")
    name = cfg_file.resolve().parent.name + (f"_{a.tag}" if a.tag else "")
    out = Path(a.out).resolve() if a.out else REPO / "results" / "bx_cv" / name
    folds = [tuple(p.resolve() for p in fold_files(Path(a.splits), a.name, k)) for k in range(a.folds)]
    out.mkdir(parents=True, exist_ok=True)
    train_folds(cfg_file.resolve(), out, folds, epochs, a.seed, a.set, a.jobs, a.exclude)
    results = []
    for k in range(a.folds):
        print(f"cv{k}: evaluating (baselines, motion control)", flush=True)
        results.append(evaluate_fold(out / f"cv{k}", epochs, tuple(a.decode)))
    table, summary = cv_table(results)
    kind = "person" if a.exclude == "PERSON" else "seen-person"
    title = (f"{name}: {a.folds} {kind} folds ({a.splits}/{a.name}_cv*), {epochs} epochs, seed {a.seed}"
             + (f", --set {' '.join(a.set)}" if a.set else "")
             + (f", scored decoding with {' '.join(a.decode)}" if a.decode else ""))
    md, js = (out / f"cv_summary{decode_slug(a.decode)}.{ext}" for ext in ("md", "json"))
    md.write_text(f"{title}\n\n{table}\n", encoding="utf-8")
    write_json(js, {"config": str(cfg_file), "epochs": epochs, "seed": a.seed, "set": a.set, "decode": a.decode,
                    **summary})
    print(f"{title}\n\n{table}\nwrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
