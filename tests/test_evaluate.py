"""evaluate.py: --pred/--ann scoring, --exp epoch tables and metrics.json, --checkpoint inference on
labelled and unlabelled clips, attention pictures, exit code 2 for user errors.

Metric parity with direct pycocoevalcap calls lives in test_metrics.py. One tiny experiment (HIDDEN 4 / OUT 16,
1-layer d=32 T5, 16 train / 6 test clips, 1 epoch plus the sanity evaluation) is trained once per module;
evaluate.py runs through its main() in this process with one thread (tests.cli_helpers.evaluate_main), and as a
process where the exit code and the one error line are the point. METEOR is off wherever it is not the point.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.errors import EXIT_USER_ERROR, UserError
from tests.cli_helpers import evaluate_main

REPO = Path(__file__).resolve().parent.parent
EVALUATE = REPO / "evaluate.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer)")

REFS = {
    "c0": ["a person walks forward slowly", "someone walks slowly ahead"],
    "c1": ["a man jumps up and down twice", "the person jumps in place two times"],
    "c2": ["a person waves the right hand", "someone raises the right arm and waves"],
    "c3": ["a person sits down slowly on a chair", "someone takes a seat"],
    "c4": ["a person turns around to the left", "someone spins to the left"],
}
IDENTICAL = {k: v[0] for k, v in REFS.items()}


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT") and not k.startswith("M2T_TEST_")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return e


def run(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    """evaluate.py's main() in this process (tests.cli_helpers.evaluate_main); `timeout` is for `run_cli`'s
    signature."""
    return evaluate_main(*args)


def run_cli(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    """evaluate.py as a process: what the shell sees."""
    return subprocess.run([sys.executable, str(EVALUATE), *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---- a tiny trained experiment, once per module ----------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic finetuning corpus cut to 16 train / 6 test clips, plus the standards."""
    from dataloaders.formats import load_clips
    from dataloaders.synthetic import generate

    root = tmp_path_factory.mktemp("eval_data")
    full = generate(root / "full")
    out = {"standard": full["standard"]}
    for stem, n in (("train", 16), ("test", 6)):
        out[stem] = root / f"{stem}.pkl"
        with open(out[stem], "wb") as f:
            pickle.dump(load_clips(full[stem])[:n], f, protocol=4)
    return out


@pytest.fixture(scope="module")
def exp(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    cfg = {
        "HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16, "BRANCH": 0, "TASK": {"PRETRAIN": False},
        "DATA": {"TRAIN": str(data["train"]), "TEST": str(data["test"]), "BATCH_SIZE": 8, "EVAL_BATCH_SIZE": 64},
        "OPTIMIZER": {"LR": 1.0e-3, "MAX_EPOCH": 1, "WARMUP_STEPS": 5},
        "T5": {"D_MODEL": 32, "NUM_LAYERS": 1, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300},
        "EVAL": {"METEOR": False}, "GENERATION": {"MAX_LENGTH": 8},
        "TRAIN": {"SANITY_EVAL": True},  # results of epoch 0 (no checkpoint) and epoch 1 (checkpoint)
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run([sys.executable, str(REPO / "train_t5_stagcn.py"), "--cfg_file", str(folder / "config.yaml")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, explain(res)
    assert (folder / "checkpoints" / "epoch_0001.pt").is_file()
    for e in (0, 1):
        assert (folder / "jsons" / f"results_epoch{e}.json").is_file()
    return folder


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 600, img.shape
    assert float(img[..., :3].std()) > 0.05  # a picture, not a blank canvas


# ---- --pred / --ann --------------------------------------------------------------------------------

@needs_java
def test_identical_predictions_give_bleu4_100_via_cli(tmp_path):
    pred, ann = write_json(tmp_path / "p.json", IDENTICAL), write_json(tmp_path / "r.json", REFS)
    res = run("--pred", pred, "--ann", ann, "--no-meteor", "--json", tmp_path / "m.json")
    assert res.returncode == 0, explain(res)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert metrics["BLEU-4"] == pytest.approx(100.0, abs=1e-6)
    assert "BLEU-4" in res.stdout and "100.00" in res.stdout


@needs_java
def test_shuffled_predictions_score_lower(tmp_path, capsys):
    import evaluate

    ids = list(IDENTICAL)
    shuffled = {k: IDENTICAL[ids[(n + 1) % len(ids)]] for n, k in enumerate(ids)}
    ann = write_json(tmp_path / "r.json", REFS)
    scores = {}
    for name, preds in (("good", IDENTICAL), ("bad", shuffled)):
        out = tmp_path / f"{name}_m.json"
        assert evaluate.main(["--pred", str(write_json(tmp_path / f"{name}.json", preds)), "--ann", str(ann),
                              "--no-meteor", "--json", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
    assert scores["bad"]["BLEU-4"] < scores["good"]["BLEU-4"] - 20
    assert scores["bad"]["CIDEr"] < scores["good"]["CIDEr"] - 50


@needs_java
def test_mismatched_ids_exit_2_listing_them(tmp_path):
    preds = {k: v for k, v in IDENTICAL.items() if k != "c3"}
    preds["zz_extra"] = "a person walks"
    res = run("--pred", write_json(tmp_path / "p.json", preds), "--ann", write_json(tmp_path / "r.json", REFS),
              "--no-meteor")
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "'c3'" in err and "'zz_extra'" in err and "Traceback" not in res.stderr


@pytest.mark.slow
def test_missing_files_exit_2_with_one_clear_line(tmp_path):
    refs = write_json(tmp_path / "r.json", REFS)
    (tmp_path / "bad.json").write_text('{"c0": "a person')
    cases = [
        (["--pred", tmp_path / "nope.json", "--ann", refs], "nope.json: predictions file not found"),
        (["--pred", write_json(tmp_path / "p.json", IDENTICAL), "--ann", tmp_path / "gone.pkl"], "gone.pkl: file not found"),
        (["--exp", tmp_path / "no_such_exp"], "no_such_exp"),
        (["--pred", write_json(tmp_path / "p2.json", IDENTICAL)], "--pred needs --ann"),
        (["--pred", tmp_path / "bad.json", "--ann", refs], "bad.json: predictions file is not valid JSON"),
    ]
    for args, expected in cases:
        res = run_cli(*args, "--no-meteor") if "--exp" not in args else run_cli(*args)
        assert res.returncode == EXIT_USER_ERROR, explain(res)
        assert res.stderr.startswith("error: ") and expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, \
            explain(res)


# ---- experiment: --exp, --checkpoint, --plot-attention -----------------------------------------------

@needs_java
@pytest.mark.slow
def test_exp_scores_every_epoch_writes_metrics_json_and_plots(exp, data, tmp_path):
    plots = tmp_path / "plots"
    res = run("--exp", exp, "--plot-attention", plots, "--max-plots", 2)
    assert res.returncode == 0, explain(res)
    summary = json.loads((exp / "metrics.json").read_text())
    assert sorted(summary["epochs"]) == ["0", "1"]
    assert summary["best_by"] == "CIDEr" and summary["best_epoch"] in (0, 1)
    cider = {int(e): m["CIDEr"] for e, m in summary["epochs"].items()}
    assert cider[summary["best_epoch"]] == max(cider.values())
    assert "METEOR" not in summary["keys"]  # the config's EVAL.METEOR: false
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["epoch"] + summary["keys"]
    assert lines[1].split()[0].rstrip("*") == "0" and lines[2].split()[0].rstrip("*") == "1"
    assert f"best epoch by CIDEr: {summary['best_epoch']}" in res.stdout
    # The same numbers through --pred/--ann with the dataset pickle as references.
    res = run("--pred", exp / "jsons" / "results_epoch1.json", "--ann", data["test"], "--no-meteor",
              "--json", tmp_path / "m1.json")
    assert res.returncode == 0, explain(res)
    assert json.loads((tmp_path / "m1.json").read_text()) == pytest.approx(summary["epochs"]["1"], abs=1e-9)
    pngs = sorted(plots.glob("*.png"))
    assert len(pngs) == 2 and {p.stem for p in pngs} <= set(json.loads((exp / "jsons" / "results_epoch1.json").read_text()))
    for p in pngs:
        assert_png(p)


@needs_java
@pytest.mark.slow
def test_checkpoint_latest_on_labelled_test_data_reproduces_training_eval(exp, tmp_path):
    out = tmp_path / "preds.json"
    res = run("--exp", exp, "--checkpoint", "latest", "--out", out, "--json", tmp_path / "m.json")
    assert res.returncode == 0, explain(res)
    preds = json.loads(out.read_text())
    # Greedy decoding of the same weights on the same clips: what training wrote after epoch 1.
    assert preds == json.loads((exp / "jsons" / "results_epoch1.json").read_text())
    metrics = json.loads((tmp_path / "m.json").read_text())
    trained = json.loads((exp / "jsons" / "metrics_epoch1.json").read_text())
    assert metrics == pytest.approx(trained, abs=1e-9)
    assert "epoch_0001.pt" in res.stdout and "CIDEr" in res.stdout


@needs_java
@pytest.mark.slow
def test_motion_control_recaptions_with_swapped_motion_and_writes_json(exp, data, tmp_path):
    from dataloaders.formats import load_clips

    res = run("--exp", exp, "--checkpoint", "latest", "--motion-control", "--no-meteor", "--json", tmp_path / "mc.json")
    assert res.returncode == 0, explain(res)
    out = json.loads((tmp_path / "mc.json").read_text())
    assert {"real", "swap_technique", "swap_person_technique"} <= set(out) and out["clips"] == 6
    assert "METEOR" not in out["real"] and "CIDEr" in out["swap_technique"]
    real = json.loads((exp / "inference" / "epoch_0001_test_real.json").read_text())
    assert real == json.loads((exp / "jsons" / "results_epoch1.json").read_text())  # real = training's evaluation
    techniques = [c["motion_type"] for c in load_clips(data["test"])]
    alone = sum(techniques.count(t) == 1 for t in set(techniques))
    assert out["kept_own_motion"]["swap_technique"] == alone
    # synthetic names carry no person id: person+technique groups are the technique groups, same derangement
    assert out["swap_person_technique"] == out["swap_technique"]
    lines = res.stdout.splitlines()
    assert lines[0].split("  ")[0] == "motion control, epoch_0001.pt"
    assert [c.strip() for c in lines[0].split("  ") if c.strip()][1:] == ["BLEU-4", "ROUGE-L", "CIDEr", "CIDEr drop",
                                                                         "own motion", "changed"]
    assert [ln.split("  ")[0] for ln in lines[1:4]] == ["real motion", "swap within technique",
                                                         "swap within person+technique"]
    res = run("--exp", exp, "--motion-control")
    assert res.returncode == EXIT_USER_ERROR and "--motion-control needs" in res.stderr


@needs_java
@pytest.mark.slow
def test_exp_baselines_mark_the_rows_without_motion_and_name_the_strongest(exp):
    res = run("--exp", exp, "--baselines", "--no-meteor", timeout=300)
    assert res.returncode == 0, explain(res)
    names = [ln.split("  ")[0].strip() for ln in res.stdout.splitlines()]
    for name in ("untrained model", "constant caption (no motion)", "nearest neighbour, label 0",
                 "random same-person clip, label 0 (no motion)"):
        assert name in names, res.stdout
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("random same-person clip"))
    assert row.count(" ± ") == 6  # BLEU-1..4, ROUGE-L, CIDEr over 5 draws
    assert "strongest baseline: " in res.stdout and "6 of 6 test clip(s)" in res.stdout
    stored = json.loads((exp / "metrics.json").read_text())["baselines"]  # kept for the exported model's card
    assert set(stored) >= {"untrained model", "constant caption (no motion)", "nearest neighbour, label 0"}
    assert all(isinstance(v, float) for v in stored["random same-person clip, label 0 (no motion)"].values())
    from engine.config_loader import load_config
    from engine.export import baselines_section

    assert "constant caption (no motion)" in baselines_section(load_config(exp / "config.yaml"))


@needs_java
@pytest.mark.slow
def test_retrieval_model_checkpoint_retrieves_as_in_training(data, tmp_path):
    """RETRIEVAL.NEIGHBOURS: evaluate.py re-reads DATA.TRAIN and gives each clip the same neighbours'
    labels as training did, so the predictions of the checkpoint are the ones training wrote."""
    folder = tmp_path / "exp"
    folder.mkdir()
    cfg = {
        "HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16, "BRANCH": 0, "TASK": {"PRETRAIN": False},
        "DATA": {"TRAIN": str(data["train"]), "TEST": str(data["test"]), "BATCH_SIZE": 8},
        "RETRIEVAL": {"NEIGHBOURS": 2, "EXCLUDE": "PERSON"},
        "OPTIMIZER": {"LR": 1.0e-3, "MAX_EPOCH": 1, "WARMUP_STEPS": 5},
        "T5": {"D_MODEL": 32, "NUM_LAYERS": 1, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300},
        "EVAL": {"SCORE": False}, "TRAIN": {"SANITY_EVAL": False}, "GENERATION": {"MAX_LENGTH": 8},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run([sys.executable, str(REPO / "train_t5_stagcn.py"), "--cfg_file", str(folder / "config.yaml")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, explain(res)
    out = tmp_path / "preds.json"
    res = run("--exp", folder, "--checkpoint", "latest", "--out", out, "--no-meteor")
    assert res.returncode == 0, explain(res)
    assert json.loads(out.read_text()) == json.loads((folder / "jsons" / "results_epoch1.json").read_text())
    res = run("--exp", folder, "--checkpoint", "latest", "--out", out, "--no-meteor", "--set", "DATA.TRAIN=gone.pkl")
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    assert "DATA.TRAIN" in res.stderr and "RETRIEVAL.NEIGHBOURS" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_run_folder_without_config_yaml_is_read_through_its_resolved_config(exp, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exp, run_dir)
    (run_dir / "config.yaml").unlink()
    cfg = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    cfg["LOGDIR"] = str(run_dir)  # as a run launched with --set LOGDIR=<run_dir> records it
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "preds.json"
    res = run("--exp", run_dir, "--checkpoint", "latest", "--out", out, "--no-meteor")
    assert res.returncode == 0, explain(res)
    assert json.loads(out.read_text()) == json.loads((exp / "jsons" / "results_epoch1.json").read_text())
    assert str(run_dir / "checkpoints" / "epoch_0001.pt") in res.stderr  # its own checkpoint, logged


@pytest.mark.slow
def test_checkpoint_on_unlabelled_npy_clip_writes_predictions_and_plot(exp, data, tmp_path):
    from dataloaders.formats import load_clips

    clip = load_clips(data["test"])[2]["coordinates"].numpy()
    npy = tmp_path / "new_recording.npy"
    np.save(npy, clip)
    out, plots = tmp_path / "preds.json", tmp_path / "plots"
    # No Java needed: nothing to score. --checkpoint as a folder = its newest valid checkpoint.
    res = run("--exp", exp / "config.yaml", "--checkpoint", exp / "checkpoints", "--data", npy, "--out", out,
              "--plot-attention", plots)
    assert res.returncode == 0, explain(res)
    preds = json.loads(out.read_text())
    assert list(preds) == ["new_recording"] and isinstance(preds["new_recording"], str)
    assert "not scored" in res.stdout
    assert_png(plots / "new_recording.png")


def test_checkpoint_best_skips_epochs_without_checkpoint(tmp_path):
    """best = highest CIDEr in metrics.json whose checkpoint still exists and is intact; else a clear error."""
    import hashlib

    from engine.config_loader import config_from_dict
    from engine.weights import resolve_checkpoint

    cfg = config_from_dict({"TASK": {"PRETRAIN": False}, "DATA": {"TRAIN": "x.pkl", "TEST": "y.pkl"}}, tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch, intact in ((1, True), (2, True), (3, False)):
        payload = f"weights {epoch}".encode()
        (folder / f"epoch_{epoch:04d}.pt").write_bytes(payload)
        digest = hashlib.sha256(payload if intact else b"other").hexdigest()
        (folder / f"epoch_{epoch:04d}.pt.sha256").write_text(digest)
    epochs = {"0": {"CIDEr": 90.0}, "1": {"CIDEr": 10.0}, "2": {"CIDEr": 30.0}, "3": {"CIDEr": 50.0}}
    write_json(tmp_path / "metrics.json", {"best_by": "CIDEr", "best_epoch": 0, "epochs": epochs})
    # 0 has no checkpoint (sanity evaluation), 3's is corrupt: the best usable one is 2.
    assert resolve_checkpoint(cfg, "best") == folder / "epoch_0002.pt"
    assert resolve_checkpoint(cfg, "latest") == folder / "epoch_0002.pt"
    write_json(tmp_path / "metrics.json", {"epochs": {"0": {"CIDEr": 90.0}, "7": {"CIDEr": 1.0}}})
    with pytest.raises(UserError, match="none of the scored epochs.*epoch_0001.pt"):
        resolve_checkpoint(cfg, "best")
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(UserError, match="run `python evaluate.py --exp"):
        resolve_checkpoint(cfg, "best")


def test_branch1_inference_needs_a_motion_type_and_falls_back_to_window_search(data, tmp_path):
    """A bare .npy recording has no motion_type and no segment keys: --motion-type supplies the first, the
    standard window is searched instead of the second; the model captions it in one batch."""
    import torch

    from dataloaders.formats import load_clips, load_standards
    from engine.prediction import generate_captions, load_inference_clips
    from tests.helpers import tiny_config, tiny_model

    cfg = tiny_config(BRANCH=1, TASK={"PRETRAIN": False}, ALIGNMENT={"REFERENCE_SEGMENT": "ALIGNED"})
    standards = load_standards(data["standard"])
    npy = tmp_path / "rec.npy"
    np.save(npy, load_clips(data["test"])[0]["coordinates"].numpy())
    with pytest.raises(UserError, match=r"no 'motion_type'.*--motion-type \(one of Cross, Jab\)"):
        load_inference_clips(cfg, npy, standards)
    with pytest.raises(UserError, match="no standard motion"):
        load_inference_clips(cfg, npy, standards, motion_type="Hook")
    clips, segment = load_inference_clips(cfg, npy, standards, motion_type="Jab")
    assert segment == "NONE" and clips[0]["motion_type"] == "Jab"
    labelled, segment = load_inference_clips(cfg, data["test"], standards)
    assert segment == "ALIGNED" and len(labelled) == 6
    model = tiny_model(cfg, standards=standards).eval()
    preds = generate_captions(model, clips + labelled[:2], cfg, "NONE", 4, torch.device("cpu"))
    assert set(preds) == {"rec", *(c["video_name"] for c in labelled[:2])}
    assert len(preds["rec"]["att_node"]) == len(clips[0]["coordinates"])


def test_report_helpers():
    from metrics.report import best_epoch, format_table, ranked_epochs

    per = {0: {"CIDEr": 5.0, "BLEU-4": 1.0}, 4: {"CIDEr": 20.0, "BLEU-4": 3.0}, 8: {"CIDEr": 20.0, "BLEU-4": 2.5}}
    assert best_epoch(per) == 4 and ranked_epochs(per) == [4, 8, 0]
    assert best_epoch({}) is None
    table = format_table(per, ["BLEU-4", "CIDEr"], mark=4).splitlines()
    assert table[0].split() == ["epoch", "BLEU-4", "CIDEr"] and table[2].split() == ["4*", "3.00", "20.00"]


# ---- --summary: many runs, one table ---------------------------------------------------------------

def fake_run(folder: Path, data: dict, seed: int, cider_by_epoch: dict, patience: int = 0) -> Path:
    """A finished-run folder as training leaves it: config_resolved.yaml and jsons/metrics_epoch*.json."""
    from engine.config_loader import config_from_dict, save_config
    from metrics.caption import METRIC_KEYS

    cfg = config_from_dict({"SEED": seed, "DATA": {"TRAIN": str(data["train"]), "TEST": str(data["test"])},
                            "EVAL": {"EARLY_STOP_PATIENCE": patience}})
    (folder / "jsons").mkdir(parents=True)
    save_config(cfg, folder / "config_resolved.yaml")
    for epoch, cider in cider_by_epoch.items():
        metrics = {k: float(epoch) for k in METRIC_KEYS} | {"CIDEr": cider}
        (folder / "jsons" / f"metrics_epoch{epoch}.json").write_text(json.dumps(metrics))
    return folder


def test_summary_is_mean_and_std_over_seeds_of_the_selected_epochs(data, tmp_path, capsys):
    import evaluate

    runs = tmp_path / "runs"
    # Early stopping on: the best-CIDEr epoch is the model (2 and 4); off: the last epoch (3).
    fake_run(runs / "exp_a" / "person_s1", data, 1, {2: 10.0, 4: 8.0}, patience=2)
    fake_run(runs / "exp_a" / "person_s2", data, 2, {2: 5.0, 4: 14.0}, patience=2)
    fake_run(runs / "exp_b" / "person_s1", data, 1, {1: 30.0, 3: 20.0})
    assert evaluate.main(["--summary", *map(str, sorted(runs.glob("*/*")))]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| person")]
    assert rows[0].startswith("| person | exp_a | 2 (1, 2) | 2, 4 | 3.00 ± 1.41 |")  # BLEU-1 = epoch numbers
    assert rows[0].endswith("| 12.00 ± 2.83 | 11.00 ± 4.24 |")  # CIDEr of the selected epochs (10, 14), last (8, 14)
    assert rows[1].startswith("| person | exp_b | 1 (1) | 3 | 3.00 |") and rows[1].endswith("| 20.00 | 20.00 |")


@pytest.mark.slow
def test_summary_with_baselines_and_bad_folders(data, tmp_path, capsys):
    import evaluate

    run = fake_run(tmp_path / "exp" / "val_s7", data, 7, {1: 1.0})
    assert evaluate.main(["--summary", str(run), "--baselines", "--no-meteor"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split("|") for ln in out.splitlines() if ln.startswith("| val")]
    assert [r[2].strip() for r in rows] == ["constant caption (no motion)", "nearest neighbour, label 0",
                                            "nearest neighbour (facing forward), label 0",
                                            "random same-person clip, label 0 (no motion)", "exp"]
    assert " ± " in rows[3][5]  # 5 seeded draws: mean ± std
    strongest = max(rows[:4], key=lambda r: float(r[-3].split()[0]))[2].strip()
    assert f"val: strongest baseline: {strongest} (CIDEr " in out
    assert "6 of 6 test clip(s) have no training clip of their person" in out  # synthetic names: no person id
    assert evaluate.main(["--summary", str(tmp_path)]) == EXIT_USER_ERROR
    assert "no config_resolved.yaml" in capsys.readouterr().err


@pytest.mark.slow  # captions with a model three times
def test_own_learner_against_own_reference_is_the_standards_path_with_that_reference(data, tmp_path):
    """`--data learner --reference ref`: the learner ([T, 22, 3] accepted) is compared with the user's reference
    exactly as with a standards file holding it; the data's segment keys are never used for it."""
    import torch

    from dataloaders.formats import load_clips, load_standards
    from engine.prediction import generate_captions, load_inference_clips, load_learner_and_reference
    from tests.helpers import tiny_config, tiny_model

    cfg = tiny_config(BRANCH=1, TASK={"PRETRAIN": False})
    clip = load_clips(data["test"])[0]
    learner, reference = tmp_path / "me.npy", tmp_path / "coach.npy"
    np.save(learner, clip["coordinates"].numpy().reshape(-1, 22, 3))
    np.save(reference, load_standards(data["standard"])["Cross"].numpy())
    clips, segment, standards = load_learner_and_reference(cfg, learner, reference, "Jab")
    assert segment == "NONE" and clips[0]["motion_type"] == "Jab" and list(standards) == ["Jab"]
    assert torch.equal(clips[0]["coordinates"], clip["coordinates"])
    model = tiny_model(cfg, standards=standards).eval()
    own = generate_captions(model, clips, cfg, segment, 4, torch.device("cpu"))["me"]
    # the same through a standards file whose Jab is the user's reference
    as_standard = {"Jab": standards["Jab"]}
    model.set_standards(as_standard)
    same, _ = load_inference_clips(cfg, learner, as_standard, motion_type="Jab")
    again = generate_captions(model, same, cfg, "NONE", 4, torch.device("cpu"))["me"]
    assert again["caption"] == own["caption"] and np.array_equal(again["att_node"], own["att_node"])
    with torch.no_grad():  # and the reference is read: another one changes the decoder's input
        from dataloaders.datasets import collate, EvalDataset

        batch = collate([EvalDataset(clips)[0]])
        tokens = model.encode(batch)[0]
        model.set_standards({"Jab": load_standards(data["standard"])["Jab"]})
        assert not torch.allclose(model.encode(batch)[0], tokens)
    unnamed, _, standards = load_learner_and_reference(cfg, learner, reference)
    assert unnamed[0]["motion_type"] == "reference" and list(standards) == ["reference"]
    with pytest.raises(UserError, match=r"--reference: this experiment's model is BRANCH 0 pretraining"):
        load_learner_and_reference(tiny_config(), learner, reference)
    with pytest.raises(UserError, match=r"holds 6 clips, expected one reference motion"):
        load_learner_and_reference(cfg, learner, data["test"])


def test_reference_needs_a_checkpoint_and_a_learner(exp, tmp_path):
    res = run("--exp", exp, "--reference", tmp_path / "ref.npy")
    assert res.returncode == 2 and "--reference needs --checkpoint" in res.stderr, explain(res)
    res = run("--exp", exp, "--checkpoint", "latest", "--reference", tmp_path / "ref.npy")
    assert res.returncode == 2 and "--reference goes with --data LEARNER" in res.stderr, explain(res)
