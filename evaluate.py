"""Score captions offline, caption new clips with a trained checkpoint, draw attention pictures.

    python evaluate.py --exp results/<exp>                       # score every jsons/results_epoch*.json
    python evaluate.py --pred preds.json --ann refs.pkl|refs.json [--json out.json]
    python evaluate.py --exp results/<exp> --checkpoint latest|best|PATH [--data clips.pkl|clip.npy]
                       [--out preds.json] [--motion-type Jab]
    python evaluate.py --exp results/<exp> --checkpoint latest|best|PATH --data learner.npy --reference ref.npy
                       [--motion-type Jab]   # your own learner against your own reference (BRANCH 1)
    python evaluate.py --exp results/<exp> --checkpoint latest|best|PATH [--data clips.pkl] --motion-control
                       # real motion vs each clip's motion swapped within technique / person+technique
    python evaluate.py --exp results/<exp> --checkpoint latest|best|PATH --export DIR
                       # weights (safetensors), model config, tokenizer, decoding settings, model card
    python evaluate.py --exp results/<exp> --plot-curves curves.png   # losses, CIDEr and BLEU-4 per epoch
    python evaluate.py --exp results/<exp> [--checkpoint C] [--data F] --report DIR   # a coaching report page
    python evaluate.py --summary RUN_DIR [RUN_DIR ...] [--baselines]   # mean ± std over seeds, one table
    any of them: [--no-meteor] [--spice] [--bertscore]; with --exp: [--plot-attention DIR [--epoch N]]

Metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, PTB tokenizer, all references of a clip), on the
0-100 scale. With --exp, METEOR follows the config's EVAL.METEOR unless --meteor/--no-meteor says otherwise.
Exit status 0 on success, 2 on a problem with the input (one `error: ...` line on stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.errors import UserError, exits_on_user_error

log = logging.getLogger("motion2text")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    src = p.add_argument_group("what to score")
    src.add_argument("--exp", help="experiment folder results/<exp> (or its config.yaml; a run folder made with "
                                   "--set LOGDIR=... is read through its config_resolved.yaml)")
    src.add_argument("--pred", help="predictions JSON {video_name: caption}")
    src.add_argument("--ann", help="references: dataset file (.pkl/.pt/.pth, its 'labels') or JSON "
                                   "{video_name: [reference, ...]}")
    src.add_argument("--summary", nargs="+", metavar="RUN_DIR",
                     help="finished runs (e.g. results/bx_runs/*/*/): one markdown table, mean ± std over the seeds "
                          "of each <experiment>/<split>_s<seed>; with --baselines the baselines of each split too")
    src.add_argument("--json", metavar="METRICS_JSON", help="also write the metrics to this JSON file")
    inf = p.add_argument_group("inference (with --exp)")
    inf.add_argument("--checkpoint", metavar="latest|best|PATH",
                     help="generate captions with this checkpoint: latest valid, best CIDEr in metrics.json "
                          "that still has a checkpoint, or a checkpoint file/folder")
    inf.add_argument("--data", help="clips to caption: dataset file or one .npy clip [T, 66] "
                                    "(default: the config's DATA.TEST); scored when every clip has labels")
    inf.add_argument("--out", help="predictions JSON to write (default: <exp>/inference/<checkpoint>_<data>.json)")
    inf.add_argument("--reference", metavar="REF", help="with --data: caption the learner against this reference "
                     "motion (.npy [T, 66] or [T, 22, 3], or a one-clip dataset file) instead of the standards file "
                     "(BRANCH 1 finetuned models)")
    inf.add_argument("--motion-type", help="technique of clips that name none (BRANCH 1 finetuning needs it, "
                                           "e.g. Jab)")
    inf.add_argument("--motion-control", action="store_true",
                     help="also caption the clips with each clip's motion swapped for another clip's (seeded, "
                          "within technique / within person+technique; labels stay) and print the three scores")
    inf.add_argument("--export", metavar="DIR",
                     help="write the checkpoint's model into DIR (new or empty) to share: model.safetensors, "
                          "model_config.json, tokenizer/, generation_config.json, README.md; nothing is generated")
    inf.add_argument("--batch-size", type=int, help="clips per generation batch (default: DATA.EVAL_BATCH_SIZE)")
    inf.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="override config keys, e.g. --set GENERATION.NUM_BEAMS=3")
    met = p.add_argument_group("metrics")
    met.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=None,
                     help="compute METEOR (Java, ~15 s start-up; default on, with --exp: EVAL.METEOR)")
    met.add_argument("--spice", action="store_true", help="also SPICE (needs the Stanford CoreNLP jars)")
    met.add_argument("--bertscore", action="store_true", help="also BERTScore (needs bert_score and roberta-large)")
    src.add_argument("--baselines", action="store_true",
                     help="with --exp: also score an untrained model, the best constant caption per technique "
                          "and nearest-neighbour retrieval from the training file, side by side")
    plot = p.add_argument_group("attention pictures (with --exp)")
    plot.add_argument("--plot-attention", metavar="DIR", help="write one PNG per clip into DIR")
    plot.add_argument("--epoch", type=int, help="epoch whose attention to draw (default: best CIDEr, else the "
                                                "latest with attention files); not with --checkpoint")
    plot.add_argument("--max-plots", type=int, default=0, help="draw at most this many clips (0: all)")
    p.add_argument("--report", metavar="DIR", help="with --exp [--checkpoint C] [--data F]: a coaching report page "
                   "DIR/index.html (metrics, baselines, motion control, curves; per clip an animated skeleton with "
                   "its attention, the instruction, the references and which motion tokens each word read); "
                   "--max-plots N limits the clips shown")
    p.add_argument("--plot-curves", metavar="FILE.png",
                   help="with --exp alone: draw the training and validation loss and CIDEr/BLEU-4 per epoch from "
                        "the files training wrote into one new PNG; nothing is scored")
    return p.parse_args(argv)


def check_args(a: argparse.Namespace) -> None:
    if a.report is not None:
        check_report_args(a)
        return
    if a.plot_curves is not None:
        check_plot_curves_args(a)
    if a.summary:
        if a.exp or a.pred or a.checkpoint or a.plot_attention or a.motion_control or a.export:
            raise UserError("--summary takes run folders alone (with --baselines and the metric switches)")
        return
    if bool(a.exp) == bool(a.pred):
        raise UserError("give either --exp results/<exp> or --pred preds.json --ann refs (see --help)")
    if a.pred and not a.ann:
        raise UserError("--pred needs --ann (a dataset file or a JSON {video_name: [reference, ...]})")
    if a.ann and not a.pred:
        raise UserError("--ann goes with --pred; with --exp the references are the config's DATA.TEST")
    if a.baselines and (a.pred or a.checkpoint):
        raise UserError("--baselines goes with --exp alone (it compares the experiment's epochs with baselines)")
    if a.pred:
        for opt in ("checkpoint", "data", "out", "motion_type", "plot_attention", "epoch", "batch_size"):
            if getattr(a, opt) is not None:
                raise UserError(f"--{opt.replace('_', '-')} needs --exp (a predictions file has no model or "
                                "attention maps)")
        if a.set:
            raise UserError("--set needs --exp (config overrides)")
    if not a.checkpoint:
        if a.motion_control:
            raise UserError("--motion-control needs --exp results/<exp> --checkpoint latest|best|PATH")
        for opt in ("data", "out", "motion_type", "batch_size", "reference"):
            if getattr(a, opt) is not None:
                raise UserError(f"--{opt.replace('_', '-')} needs --checkpoint latest|best|PATH")
    elif a.reference is not None and (a.data is None or a.motion_control):
        raise UserError("--reference goes with --data LEARNER (the clips to compare with it), not with "
                        "--motion-control")
    elif a.motion_control and (a.out or a.plot_attention):
        raise UserError("--motion-control writes its three captionings to <exp>/inference/; not with --out "
                        "or --plot-attention")
    elif a.epoch is not None:
        raise UserError("--epoch picks the saved predictions of an epoch; with --checkpoint the attention of "
                        "the new predictions is drawn")
    if a.export is not None:
        check_export_args(a)
    if a.batch_size is not None and a.batch_size < 1:
        raise UserError(f"--batch-size {a.batch_size}: expected >= 1")
    if a.max_plots < 0:
        raise UserError(f"--max-plots {a.max_plots}: expected >= 0")
    check_output_paths(a)


def check_export_args(a: argparse.Namespace) -> None:
    from engine.export import check_export_dir

    if not (a.exp and a.checkpoint):
        raise UserError("--export needs --exp results/<exp> --checkpoint latest|best|PATH")
    for opt in ("data", "out", "json", "motion_type", "plot_attention", "batch_size", "reference"):
        if getattr(a, opt) is not None:
            raise UserError(f"--export writes the model only; --{opt.replace('_', '-')} goes with captioning")
    if a.motion_control:
        raise UserError("--export writes the model only; --motion-control goes with captioning")
    check_export_dir(Path(a.export))


def check_report_args(a: argparse.Namespace) -> None:
    if not a.exp:
        raise UserError("--report needs --exp results/<exp> (and optionally --checkpoint, --data)")
    for opt in ("pred", "summary", "json", "plot_attention", "baselines", "motion_control", "export", "out",
                "reference", "plot_curves"):
        if getattr(a, opt):
            raise UserError(f"--report writes one page; not with --{opt.replace('_', '-')}")
    from common.files import check_new_or_empty_folder

    check_new_or_empty_folder(Path(a.report), "--report", "a report never replaces files")


def check_plot_curves_args(a: argparse.Namespace) -> None:
    if not a.exp:
        raise UserError("--plot-curves needs --exp results/<exp> (the experiment whose curves to draw)")
    for opt in ("pred", "summary", "checkpoint", "json", "plot_attention", "baselines"):
        if getattr(a, opt):
            raise UserError(f"--plot-curves draws the files of --exp alone; not with --{opt.replace('_', '-')}")
    out = Path(a.plot_curves)
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot-curves {out}: expected a file name ending in .png")
    if out.exists() or out.is_symlink():
        raise UserError(f"--plot-curves {out}: exists; give a new file name (an existing file is never replaced)")


def check_output_paths(a: argparse.Namespace) -> None:
    """No output replaces an input or another output, and the picture folder is not a file: checked before
    anything is written (a late failure would leave metrics.json or predictions behind)."""
    paths = {"--data": a.data, "--pred": a.pred, "--ann": a.ann, "--out": a.out, "--json": a.json}
    for out_flag in ("--out", "--json"):
        out = paths[out_flag]
        for other_flag, other in paths.items():
            if out and other and other_flag != out_flag and same_file(out, other):
                raise UserError(f"{out_flag} {out}: is the same file as {other_flag} {other}; writing it would "
                                f"overwrite that file, give {out_flag} another path")
    plots = Path(a.plot_attention) if a.plot_attention else None
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UserError(f"--plot-attention {plots}: exists and is not a folder, expected the folder for the PNGs "
                        "(created if missing)")


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks, `..`), or hard links of one file."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def make_scorer(a, default_meteor: bool = True):
    from metrics.caption import CaptionScorer

    return CaptionScorer(meteor=default_meteor if a.meteor is None else a.meteor, spice=a.spice,
                         bertscore=a.bertscore)


def config_path(exp: str) -> Path:
    p = Path(exp)
    if p.is_dir():
        # A run launched with --set LOGDIR=... has no config.yaml of its own, only what training resolved.
        if not (p / "config.yaml").is_file() and (p / "config_resolved.yaml").is_file():
            return p / "config_resolved.yaml"
        return p / "config.yaml"
    if p.suffix in (".yaml", ".yml"):
        return p
    raise UserError(f"--exp {exp}: not found, expected an experiment folder results/<exp> or its config.yaml")


# ---- modes ---------------------------------------------------------------------------------------

def score_predictions_file(a) -> int:
    from metrics.report import format_table, load_predictions, load_references, write_json

    preds, refs = load_predictions(Path(a.pred)), load_references(Path(a.ann))
    scorer = make_scorer(a)
    try:
        metrics = scorer.score(preds, refs)
    except UserError as e:
        raise UserError(f"{a.pred} vs {a.ann}: {e}") from None
    print(format_table({Path(a.pred).name: metrics}, list(scorer.keys), label="predictions"))
    if a.json:
        print(f"wrote {write_json(Path(a.json), metrics)}")
    return 0


def score_experiment(a, cfg) -> int:
    from metrics.report import (METRICS_FILE, epoch_result_files, experiment_metrics, format_table,
                                load_references, score_epochs, write_json)

    jsons = cfg.logdir / "jsons"
    files = epoch_result_files(jsons)
    if not files:
        raise UserError(f"{jsons}: no results_epoch*.json (training writes them at each evaluation); "
                        "to caption with a checkpoint use --checkpoint latest")
    test = cfg.path(cfg.DATA.TEST)
    refs = load_references(test)
    scorer = make_scorer(a, cfg.EVAL.METEOR)
    per_epoch = score_epochs(scorer, files, refs)
    summary = experiment_metrics(per_epoch, list(scorer.keys), str(test))
    print(format_table(per_epoch, list(scorer.keys), mark=summary["best_epoch"]))
    print(f"best epoch by {summary['best_by']}: {summary['best_epoch']} (marked *)")
    if a.baselines:  # kept in metrics.json: an exported model's card lists them
        summary["baselines"] = compare_with_baselines(cfg, scorer, per_epoch, refs, summary["best_epoch"])
    print(f"wrote {write_json(cfg.logdir / METRICS_FILE, summary)}")
    if a.json:
        print(f"wrote {write_json(Path(a.json), summary)}")
    if a.plot_attention:
        plot_epoch(a, cfg, summary["best_epoch"])
    return 0


def compare_with_baselines(cfg, scorer, per_epoch: dict, refs: dict, best: int) -> dict:
    """The trained model next to what it must beat, all on the same test clips; returns the rows that are not
    the trained model ({row: {metric: value}}, the mean over draws for the motion-free rows)."""
    from engine.experiment import load_data
    from engine.prediction import default_device, untrained_model_captions
    from metrics.baselines import label_position_scores, mean_rows, score_baselines, strongest_line
    from metrics.report import format_table

    train_clips, test_clips, standards = load_data(cfg)
    rows = {"untrained model": scorer.score(untrained_model_captions(cfg, test_clips, standards, default_device()), refs)}
    baselines, note = score_baselines(scorer, train_clips, test_clips, refs)
    rows.update(draw_cells(baselines, scorer.keys))
    rows[f"trained, epoch {best} (best)"] = per_epoch[best]
    last = max(per_epoch)
    if last != best:
        rows[f"trained, epoch {last} (last)"] = per_epoch[last]
    print(format_table(rows, list(scorer.keys), label="model"))
    print(f"(no motion): the row never reads the test clip's motion; {note}")
    print(strongest_line(baselines))
    stored = {"untrained model": rows["untrained model"], **mean_rows(baselines, scorer.keys)}
    if cfg.RETRIEVAL.NEIGHBOURS:
        exclude = cfg.RETRIEVAL.EXCLUDE
        scores = label_position_scores(train_clips, exclude)
        print(f"leave-one-out retrieval CIDEr on the training file per label position (RETRIEVAL.LABEL_INDEX; "
              f"EXCLUDE {exclude}): " + ", ".join(f"{pos}: {v:.1f}" for pos, v in scores.items()))
    return stored


def draw_cells(rows: dict, keys) -> dict:
    """{name: [metrics per draw]} → {name: {metric: value, or "mean ± std" over several draws}}."""
    from metrics.summary import seed_cell

    return {name: draws[0] if len(draws) == 1 else {k: seed_cell(draws, k) for k in keys}
            for name, draws in rows.items()}


def plot_epoch(a, cfg, best) -> None:
    from dataloaders.formats import load_clips
    from engine.prediction import read_epoch_attention
    from metrics.attention_plot import plot_attention_set
    from metrics.report import epoch_result_files, read_json

    jsons = cfg.logdir / "jsons"
    with_att = [e for e in epoch_result_files(jsons) if read_epoch_attention(jsons, e) is not None]
    if a.epoch is not None:
        if a.epoch not in with_att:
            raise UserError(f"--epoch {a.epoch}: no results/attention files for it in {jsons} "
                            f"(epochs with attention: {', '.join(map(str, with_att)) or 'none'})")
        epoch = a.epoch
    elif best in with_att:
        epoch = best
    elif with_att:
        epoch = with_att[-1]
    else:
        raise UserError(f"{jsons}: no attention_epoch*.npz or att_node/att_A_results_epoch*.json to draw "
                        "(EVAL.SAVE_ATTENTION: NONE?)")
    captions = read_json(jsons / f"results_epoch{epoch}.json", "predictions")
    att_node, att_A = read_epoch_attention(jsons, epoch)
    clips = {c["video_name"]: c for c in load_clips(cfg.path(cfg.DATA.TEST)) if isinstance(c, dict)}
    names = [n for n in att_node if n in att_A and n in clips]
    if not names:
        raise UserError(f"{jsons}: the attention of epoch {epoch} names no clip of {cfg.path(cfg.DATA.TEST)}")
    items = ({"name": n, "coords": clips[n]["coordinates"].numpy(), "att_node": att_node[n], "att_A": att_A[n],
              "caption": captions.get(n), "reference": (clips[n].get("labels") or [None])[0]} for n in names)
    written = plot_attention_set(Path(a.plot_attention), items, subtitle=f"epoch {epoch}", limit=a.max_plots)
    print(f"wrote {len(written)} attention picture(s) of epoch {epoch} to {a.plot_attention}")


def plot_training_curves(a, cfg) -> int:
    from metrics.curves import plot_curves, read_curves

    curves = read_curves(cfg.logdir)
    if curves.empty():
        raise UserError(f"{cfg.logdir}: nothing to plot: no jsons/loss_history.json, jsons/val_loss.json, metrics.json "
                        "or jsons/metrics_epoch*.json (training writes them)")
    print(f"wrote {plot_curves(curves, Path(a.plot_curves), title=str(cfg.logdir))}: {curves.describe()}")
    return 0


def summarize_runs(a) -> int:
    from metrics.caption import METRIC_KEYS
    from metrics.summary import collect_runs, markdown_table

    from engine.config_loader import load_config

    groups = collect_runs([Path(r) for r in a.summary], load_config)
    print(markdown_table(groups, list(METRIC_KEYS), make_scorer(a) if a.baselines else None))
    return 0


def run_checkpoint(a, cfg) -> int:
    from engine.prediction import (default_device, generate_captions, labels_state, load_inference_clips,
                                   load_learner_and_reference, load_standards_for)
    from engine.weights import load_model, resolve_checkpoint
    from metrics.report import format_table, write_json

    path = resolve_checkpoint(cfg, a.checkpoint)
    data = Path(a.data) if a.data else cfg.path(cfg.DATA.TEST)
    if a.reference:  # the user's own learner and reference: no standards file
        clips, segment, standards = load_learner_and_reference(cfg, data, Path(a.reference), a.motion_type)
    else:
        standards = load_standards_for(cfg)
        clips, segment = load_inference_clips(cfg, data, standards, a.motion_type)
    labels = labels_state(clips)
    if a.motion_control and labels != "all":
        raise UserError(f"--motion-control scores against the clips' labels: {data} has clips without 'labels'")
    scorer = make_scorer(a, cfg.EVAL.METEOR) if labels == "all" else None  # fail fast (Java) before generating
    device = default_device()
    model, state = load_model(cfg, path, device, standards)
    if a.motion_control:
        return motion_control(a, cfg, model, clips, segment, scorer, device, path, data)
    log.info("captioning %d clip(s) of %s with %s on %s", len(clips), data, path, device)
    preds = generate_captions(model, clips, cfg, segment, a.batch_size or cfg.DATA.EVAL_BATCH_SIZE, device)
    captions = {k: v["caption"] for k, v in preds.items()}
    out = Path(a.out) if a.out else cfg.logdir / "inference" / f"{path.stem}_{data.stem}.json"
    print(f"wrote {len(captions)} caption(s) to {write_json(out, captions)}")
    if scorer is not None:
        refs = {c["video_name"]: list(c["labels"]) for c in clips}
        metrics = scorer.score(captions, refs)
        print(format_table({path.name: metrics}, list(scorer.keys), label="checkpoint"))
        if a.json:
            print(f"wrote {write_json(Path(a.json), metrics)}")
    elif labels == "some":
        print("not scored: only some clips have labels")
    else:
        print("not scored: the clips have no labels")
    if a.plot_attention:
        from metrics.attention_plot import plot_attention_set

        items = ({"name": c["video_name"], "coords": c["coordinates"].numpy(),
                  "att_node": preds[c["video_name"]]["att_node"], "att_A": preds[c["video_name"]]["att_A"],
                  "caption": captions[c["video_name"]], "reference": (c.get("labels") or [None])[0]} for c in clips)
        written = plot_attention_set(Path(a.plot_attention), items, subtitle=f"{path.name}", limit=a.max_plots)
        print(f"wrote {len(written)} attention picture(s) to {a.plot_attention}")
    return 0


def write_report(a, cfg) -> int:
    from dataloaders.formats import load_clips
    from engine.coaching_report import write_coaching_report
    from engine.prediction import default_device, labels_state, load_inference_clips, load_standards_for
    from engine.weights import load_model, resolve_checkpoint
    from metrics.report import read_experiment_metrics

    spec = a.checkpoint or ("best" if read_experiment_metrics(cfg.logdir) else "latest")
    path = resolve_checkpoint(cfg, spec)
    standards = load_standards_for(cfg)
    data = Path(a.data) if a.data else cfg.path(cfg.DATA.TEST)
    clips, segment = load_inference_clips(cfg, data, standards, a.motion_type)
    scorer = make_scorer(a, cfg.EVAL.METEOR) if labels_state(clips) == "all" else None
    train = cfg.path(cfg.DATA.TRAIN)
    train_clips = load_clips(train, cfg.DATA.MAX_FRAMES) if train is not None and train.is_file() else None
    device = default_device()
    model, _ = load_model(cfg, path, device, standards)
    page = write_coaching_report(Path(a.report), model, path, cfg, clips, segment, data, scorer,
                                 a.batch_size or cfg.DATA.EVAL_BATCH_SIZE, device, a.max_plots, train_clips)
    print(f"wrote {page} (open it in a browser; every asset is in {page.parent})")
    return 0


def export_model(a, cfg) -> int:
    from engine.export import export_checkpoint
    from engine.weights import resolve_checkpoint

    path = resolve_checkpoint(cfg, a.checkpoint)
    print(f"exported {path} to {export_checkpoint(cfg, path, Path(a.export))}")
    return 0


def motion_control(a, cfg, model, clips, segment, scorer, device, path: Path, data: Path) -> int:
    from engine.prediction import captions_of
    from metrics.motion_control import CONDITIONS, motion_control_json, motion_control_rows, run_motion_control
    from metrics.report import format_table, write_json

    log.info("motion control: captioning %d clip(s) of %s with %s three times on %s", len(clips), data, path, device)
    batch_size = a.batch_size or cfg.DATA.EVAL_BATCH_SIZE
    result = run_motion_control(lambda inputs: captions_of(model, inputs, cfg, segment, batch_size, device),
                                clips, scorer)
    for condition in CONDITIONS:
        write_json(cfg.logdir / "inference" / f"{path.stem}_{data.stem}_{condition}.json", result["captions"][condition])
    keys = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in scorer.keys]
    print(format_table(motion_control_rows(result, keys), keys + ["CIDEr drop", "own motion", "changed"],
                       label=f"motion control, {path.name}"))
    print("CIDEr drop: relative to the real motion; own motion: clips alone in their group, which keep their "
          "motion; changed: captions that differ from the real-motion caption")
    print(f"wrote the captions to {cfg.logdir / 'inference'}/{path.stem}_{data.stem}_{{{','.join(CONDITIONS)}}}.json")
    if a.json:
        print(f"wrote {write_json(Path(a.json), motion_control_json(result))}")
    return 0


@exits_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    check_args(args)
    mode = mode_of(args)
    if mode in WITHOUT_CONFIG:
        return WITHOUT_CONFIG[mode](args)
    from engine.config_loader import load_config  # heavy imports after parsing: --help answers at once

    return WITH_CONFIG[mode](args, load_config(config_path(args.exp), args.set))


def mode_of(a: argparse.Namespace) -> str:
    """Which of the modes in this file's docstring the (checked) arguments ask for."""
    if a.summary:
        return "summary"
    if a.pred:
        return "score-file"
    if a.report is not None:
        return "report"
    if a.plot_curves is not None:
        return "curves"
    if a.export is not None:
        return "export"
    return "caption" if a.checkpoint else "score-experiment"


# The modes: those that read files alone, and those that read an experiment's config first.
WITHOUT_CONFIG = {"summary": summarize_runs, "score-file": score_predictions_file}
WITH_CONFIG = {"curves": plot_training_curves, "export": export_model, "report": write_report,
               "caption": run_checkpoint,  # also --motion-control and --plot-attention on new captions
               "score-experiment": score_experiment}  # also --baselines and --plot-attention on saved ones


if __name__ == "__main__":
    sys.exit(main())
