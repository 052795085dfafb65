"""tools/bx_cv.py: person-fold cross-validation runner — the table from per-fold results, and one tiny run
(2 folds, 1 epoch, HIDDEN 4 / OUT 16 encoder, 1-layer d=32 T5) end to end."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.errors import EXIT_USER_ERROR
from tests.test_evaluate import env, explain

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tools" / "bx_cv.py"


def metrics(cider: float) -> dict:
    return {"BLEU-4": cider / 10, "ROUGE-L": 30.0, "CIDEr": cider}


def fake_fold(model: float, swap: float, constant: float, nn: tuple, draws: tuple, nn_swapped: tuple = ()) -> dict:
    return {"nearest_swaps": {f"nearest neighbour, label {i}, motion swapped within technique": metrics(v)
                              for i, v in enumerate(nn_swapped)},
            "val_persons": ["1", "2"], "note": "random same-person clip: 2 of 3 ...",
            "model": metrics(model), "distinct_captions": [1 + int(model) % 3, 3],
            "motion_control": {"real": metrics(model), "swap_technique": metrics(swap),
                               "swap_person_technique": metrics(model), "kept_own_motion": {}, "clips": 3},
            "baselines": {"constant caption (no motion)": [metrics(constant)],
                          **{f"nearest neighbour, label {i}": [metrics(v)] for i, v in enumerate(nn)},
                          "random same-person clip, label 0 (no motion)": [metrics(v) for v in draws]}}


def test_cv_table_reports_folds_means_and_how_often_the_model_wins():
    from tools.bx_cv import cv_table

    folds = [fake_fold(20, 10, 15, (12, 25), (18, 22), (6, 40)),   # beats the constant, not every NN
             fake_fold(30, 31, 15, (12, 25), (10, 14), (6, 10)),   # beats everything; the swap does not lower it
             fake_fold(10, 5, 15, (12, 5), (8, 12), (15, 1))]      # below the constant
    table, summary = cv_table(folds)
    lines = table.splitlines()
    assert lines[0] == ("| model / baseline | cv0 CIDEr | cv1 CIDEr | cv2 CIDEr | BLEU-4 mean ± std | "
                        "ROUGE-L mean ± std | CIDEr mean ± std |")
    assert lines[2] == "| model, last epoch | 20.00 | 30.00 | 10.00 | 2.00 ± 1.00 | 30.00 ± 0.00 | 20.00 ± 10.00 |"
    draws_row = next(ln for ln in lines if ln.startswith("| random same-person clip"))
    assert draws_row.startswith("| random same-person clip, label 0 (no motion) | 20.00 | 12.00 | 10.00 |")
    assert "folds where the model beats the constant caption (CIDEr): 2/3" in lines
    assert "folds where the model beats every nearest-neighbour baseline (CIDEr): 1/3" in lines
    assert "folds where the model beats every baseline (CIDEr): 1/3" in lines
    assert "folds where motion swapped within technique lowers the model's CIDEr: 2/3" in lines
    assert "folds where motion swapped within person+technique lowers the model's CIDEr: 0/3" in lines
    # the swapped neighbours are the motion's worth to retrieval, not baselines: label 1 swapped (mean 17) is
    # not counted although it beats the model in fold cv0
    assert "strongest baseline over the folds: nearest neighbour, label 1 (CIDEr 18.33)" in lines
    assert "nearest neighbour, label 0: within-technique swap 12.00 → 9.00 CIDEr (-25 %), lower in 2/3 folds" in lines
    assert "nearest neighbour, label 1: within-technique swap 18.33 → 17.00 CIDEr (-7 %), lower in 2/3 folds" in lines
    swapped_row = next(ln for ln in lines if ln.startswith("| nearest neighbour, label 0, motion swapped"))
    assert swapped_row.startswith("| nearest neighbour, label 0, motion swapped within technique | 6.00 | 6.00 | 15.00 |")
    assert "distinct captions the model wrote, of its clips: cv0 3/3, cv1 1/3, cv2 2/3" in lines
    assert summary["rows"]["model, last epoch"]["CIDEr per fold"] == [20, 30, 10]
    assert summary["wins_over"]["the constant caption"] == 2 and summary["n_folds"] == 3


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """24 synthetic finetuning clips renamed to 4 persons, dealt into 2 person folds."""
    from dataloaders.formats import load_clips
    from dataloaders.splits import write_folds
    from dataloaders.synthetic import generate

    root = tmp_path_factory.mktemp("cv")
    full = generate(root / "full")
    clips = load_clips(full["train"])[:24]
    for i, c in enumerate(clips):
        c["video_name"] = f"{i % 4}_view_{i}"
    write_folds(clips, root / "splits", "syn", 2, 0)
    cfg = {"HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16, "BRANCH": 1, "TASK": {"PRETRAIN": False},
           "ALIGNMENT": {"REFERENCE_SEGMENT": "ALIGNED"},
           "DATA": {"TRAIN": "unused.pkl", "TEST": "unused.pkl", "STANDARD": str(full["standard"]),
                    "BATCH_SIZE": 8, "EVAL_BATCH_SIZE": 64},
           "OPTIMIZER": {"LR": 1.0e-3, "MAX_EPOCH": 1, "WARMUP_STEPS": 5},
           "T5": {"D_MODEL": 32, "NUM_LAYERS": 1, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300},
           "EVAL": {"METEOR": False}, "GENERATION": {"MAX_LENGTH": 8}}
    (root / "exp").mkdir()
    (root / "exp" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def run_cv(folds: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(folds / "exp"), "--folds", "2", "--splits",
                           str(folds / "splits"), "--name", "syn", "--out", str(folds / "out"), *extra],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer)")
@pytest.mark.slow
def test_runner_trains_every_fold_and_writes_the_summary(folds):
    res = run_cv(folds)
    assert res.returncode == 0, explain(res)
    out = folds / "out"
    for k in (0, 1):
        resolved = yaml.safe_load((out / f"cv{k}" / "config_resolved.yaml").read_text())
        assert resolved["DATA"]["TEST"].endswith(f"syn_cv{k}_val.pkl") and resolved["RETRIEVAL"]["EXCLUDE"] == "PERSON"
        assert resolved["EVAL"]["EARLY_STOP_PATIENCE"] == 0 and resolved["OPTIMIZER"]["MAX_EPOCH"] == 1
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["n_folds"] == 2 and summary["epochs"] == 1
    assert set(summary["folds"][0]["motion_control"]) >= {"real", "swap_technique", "swap_person_technique"}
    assert summary["folds"][0]["val_persons"] == ["1", "2"]  # write_folds with seed 0
    for k, fold in enumerate(summary["folds"]):  # [distinct captions, clips] of that fold's predictions
        preds = json.loads((out / f"cv{k}" / "jsons" / "results_epoch1.json").read_text())
        assert fold["distinct_captions"] == [len(set(preds.values())), len(preds)]
    md = (out / "cv_summary.md").read_text()
    assert "| model, motion swapped within person+technique |" in md and "strongest baseline over the folds" in md
    rerun = run_cv(folds)  # finished folds are not trained again; their evaluation is cached
    assert rerun.returncode == 0, explain(rerun)
    assert rerun.stdout.count("finished, not trained again") == 2
    assert (out / "cv_summary.md").read_text() == md
    assert "nearest neighbour, label 0, motion swapped within technique" in summary["folds"][0]["nearest_swaps"]
    # the same checkpoints scored decoded otherwise: here as in training, so the model's numbers come out equal
    same = run_cv(folds, "--decode", "GENERATION.MAX_LENGTH=8")
    assert same.returncode == 0, explain(same)
    assert same.stdout.count("finished, not trained again") == 2
    decoded = json.loads((out / "cv_summary_GENERATION.MAX_LENGTH-8.json").read_text())
    assert decoded["decode"] == ["GENERATION.MAX_LENGTH=8"]
    for k in (0, 1):
        assert (out / f"cv{k}" / "cv_eval_GENERATION.MAX_LENGTH-8.json").is_file()
        assert decoded["folds"][k]["model"]["CIDEr"] == pytest.approx(summary["folds"][k]["model"]["CIDEr"], abs=1e-9)
        assert decoded["folds"][k]["distinct_captions"] == summary["folds"][k]["distinct_captions"]
        assert decoded["folds"][k]["baselines"] == summary["folds"][k]["baselines"]
    assert "scored decoding with GENERATION.MAX_LENGTH=8" in (out / "cv_summary_GENERATION.MAX_LENGTH-8.md").read_text()


def test_runner_refuses_overrides_of_the_keys_it_sets(folds):
    res = run_cv(folds, "--set", "OPTIMIZER.MAX_EPOCH=3")
    assert res.returncode == EXIT_USER_ERROR and "set by the runner" in res.stderr
    res = run_cv(folds, "--decode", "DATA.BATCH_SIZE=2")
    assert res.returncode == EXIT_USER_ERROR and "only GENERATION.* keys" in res.stderr
    res = run_cv(folds, "--set", "RETRIEVAL.EXCLUDE=CLIP")
    assert res.returncode == EXIT_USER_ERROR and "--exclude" in res.stderr
    res = subprocess.run([sys.executable, str(RUNNER), str(folds / "exp"), "--splits", str(folds / "nowhere")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == EXIT_USER_ERROR and "syn" not in res.stderr and "fold file not found" in res.stderr


def test_fold_overrides_exclude_the_person_by_default_and_the_clip_for_seen_person_folds():
    from tools.bx_cv import fold_overrides

    args = (Path("out"), 3, Path("t.pkl"), Path("v.pkl"), 8, 42, ["X.Y=1"])
    assert fold_overrides(*args) == ["LOGDIR=out/cv3", "DATA.TRAIN=t.pkl", "DATA.TEST=v.pkl", "OPTIMIZER.MAX_EPOCH=8",
                                     "EVAL.METRIC_PERIOD=8", "EVAL.EARLY_STOP_PATIENCE=0", "TRAIN.SANITY_EVAL=false",
                                     "RETRIEVAL.EXCLUDE=PERSON", "SEED=42", "X.Y=1"]
    assert "RETRIEVAL.EXCLUDE=CLIP" in fold_overrides(*args, "CLIP")


def test_the_bx_grid_is_every_experiment_split_and_seed_with_person_exclusion_on_the_person_split():
    from tools.bx_grid import RUNS, overrides

    assert len(RUNS) == len(set(RUNS)) == 2 * (2 * 3 + 3)
    assert {(e, s) for e, s, _ in RUNS if _ == 44} == {(e, s) for e in ("bx_finetune", "bx_no_retrieval")
                                                      for s in ("random", "person")}
    person = overrides(Path("out"), Path("splits"), "bx_no_retrieval", "person", 43)
    assert person == ["SEED=43", "LOGDIR=out/bx_no_retrieval/person_s43", "DATA.TRAIN=splits/bx_person_train.pkl",
                      "DATA.TEST=splits/bx_person_val.pkl", "RETRIEVAL.EXCLUDE=PERSON"]
    assert overrides(Path("out"), Path("splits"), "bx_finetune", "random", 42)[-1] == "RETRIEVAL.EXCLUDE=CLIP"
