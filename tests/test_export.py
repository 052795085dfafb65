"""A run started from a local T5 folder needs that folder only to start: evaluation and resume work after it is
moved, a copy of it in another folder is the same T5, a T5 of other sizes is refused. `evaluate.py --export`
writes a folder from which `engine.export.load_exported` rebuilds the same model.

One tiny pretraining run (HIDDEN 4 / OUT 16, a 1-layer d=32 T5 saved with save_pretrained, 1 epoch) is trained
once per module; its T5 folder is moved away before any test runs. Training runs in a subprocess, evaluate.py
through its main() in this process (tests.cli_helpers.evaluate_main), both with one thread.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from common.errors import EXIT_USER_ERROR, UserError
from tests.cli_helpers import (build_in_process, checkpoint_files, explain, max_param_diff, evaluate_main, train_main,
                               tiny_data, write_experiment)

pytestmark = pytest.mark.slow  # training runs
T5_SIZES = dict(d_model=32, num_layers=1, num_heads=4, d_kv=8, d_ff=64, dropout=0.1)


def save_local_t5(folder: Path, captions: list[str], **sizes) -> Path:
    """A T5 folder as `save_pretrained` writes it, built offline: a BPE tokenizer trained on `captions` and a
    random T5 over exactly its vocabulary."""
    from models.text_model import t5_config_dict, t5_from_config
    from models.tokenizer import train_caption_tokenizer

    tokenizer = train_caption_tokenizer(captions, 300)
    t5_from_config(t5_config_dict(tokenizer, **{**T5_SIZES, **sizes})).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def captions_of(clips: list[dict]) -> list[str]:
    from common.text import PRETRAIN_PROMPT

    return [PRETRAIN_PROMPT] + [label for c in clips for label in c["labels"]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("export_data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """(config.yaml of a 1-epoch run started from a local T5 folder, where that folder was moved to)."""
    from dataloaders.formats import load_clips

    root = tmp_path_factory.mktemp("export_run")
    t5_dir = save_local_t5(root / "t5dir", captions_of(load_clips(data["pretrain_train"])))
    cfg = write_experiment(root / "exp", data, T5={"NAME": str(t5_dir)}, OPTIMIZER={"MAX_EPOCH": 1},
                           TRAIN={"SANITY_EVAL": False})
    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    assert checkpoint_files(root / "exp" / "pretrain_checkpoints") == ["epoch_0001.pt"]
    moved = root / "t5dir_moved"
    shutil.move(str(t5_dir), str(moved))  # from here on T5.NAME names a folder that is not there
    return cfg, moved


# ---- a local T5 folder is needed only to start -----------------------------------------------------

def test_checkpoint_evaluates_after_its_t5_folder_is_moved(trained, tmp_path):
    cfg, _ = trained
    out = tmp_path / "preds.json"
    res = evaluate_main("--exp", cfg.parent, "--checkpoint", "latest", "--out", out)
    assert res.returncode == 0, explain(res)
    assert out.is_file() and "wrote" in res.stdout


def test_run_resumes_after_its_t5_folder_is_moved(trained, tmp_path):
    cfg, _ = trained
    copy = tmp_path / "exp"
    shutil.copytree(cfg.parent, copy)  # the other tests keep the 1-epoch run
    res = train_main(copy / "config.yaml", "--set", "OPTIMIZER.MAX_EPOCH=2")
    assert res.returncode == 0, explain(res)
    assert "resuming from" in res.stdout + res.stderr, explain(res)
    assert checkpoint_files(copy / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0002.pt"]


def test_the_same_t5_in_another_folder_is_accepted(trained):
    cfg, moved = trained
    exp = build_in_process(cfg, [f"T5.NAME={moved}"])
    assert exp.resume_state is not None and exp.resume_state["epoch"] == 1


def test_a_t5_folder_of_other_sizes_is_refused_naming_the_size(trained, data, tmp_path):
    from dataloaders.formats import load_clips

    cfg, _ = trained
    wider = save_local_t5(tmp_path / "wider", captions_of(load_clips(data["pretrain_train"])), d_ff=128)
    with pytest.raises(UserError, match=r"trained with a T5 of d_ff=64, the T5 of T5\.NAME=.*wider.* has d_ff=128"):
        build_in_process(cfg, [f"T5.NAME={wider}"])


def test_a_config_built_t5_of_other_sizes_is_refused_naming_the_key(trained):
    cfg, _ = trained
    with pytest.raises(UserError, match=r"trained with T5\.NUM_LAYERS=1, this config has T5\.NUM_LAYERS=2"):
        build_in_process(cfg, ["T5.NAME=null", "T5.NUM_LAYERS=2"])  # the other T5.* keys are the trained sizes


# ---- export ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    cfg, _ = trained
    folder = tmp_path_factory.mktemp("exported") / "model"
    res = evaluate_main("--exp", cfg.parent, "--checkpoint", "latest", "--export", folder)
    assert res.returncode == 0, explain(res)
    return folder


def test_export_writes_weights_config_tokenizer_generation_and_card(exported):
    for name in ("model.safetensors", "model_config.json", "tokenizer/tokenizer.json", "generation_config.json",
                 "README.md"):
        assert (exported / name).is_file(), name
    card = (exported / "README.md").read_text()
    assert "epoch 1" in card and "## Metrics at epoch 1" in card and "DATA.TRAIN" in card
    assert "CIDEr" in card  # training scored epoch 1 (jsons/metrics_epoch1.json)
    assert "```yaml" in card and "evaluate.py --exp" in card  # no stored baselines: how to get them


def test_exported_model_captions_like_the_checkpoint(trained, exported):
    from engine.config_loader import load_config
    from engine.export import load_exported
    from engine.prediction import captions_of, load_inference_clips
    from engine.weights import load_model, resolve_checkpoint

    cfg = load_config(trained[0])
    original, _ = load_model(cfg, resolve_checkpoint(cfg, "latest"), torch.device("cpu"))
    loaded = load_exported(exported)
    assert not loaded.training
    assert max_param_diff(original.state_dict(), loaded.state_dict()) == 0.0
    assert loaded.config.generation == cfg.generation
    clips, segment = load_inference_clips(cfg, cfg.path(cfg.DATA.TEST))
    clips = clips[:4]
    expected = captions_of(original, clips, cfg, segment, 4, torch.device("cpu"))
    assert captions_of(loaded, clips, cfg, segment, 4, torch.device("cpu")) == expected
    assert len(expected) == 4


def test_export_refuses_a_folder_that_is_not_empty(trained, tmp_path):
    cfg, _ = trained
    (tmp_path / "keep.txt").write_text("mine")
    res = evaluate_main("--exp", cfg.parent, "--checkpoint", "latest", "--export", tmp_path)
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, explain(res)
    assert str(tmp_path) in res.stderr and "not empty" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_export_without_a_checkpoint_is_one_line(trained, tmp_path):
    cfg, _ = trained
    res = evaluate_main("--exp", cfg.parent, "--export", tmp_path / "model")
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    assert "--export needs" in res.stderr and len(res.stderr.strip().splitlines()) == 1, explain(res)


def test_load_exported_refuses_missing_or_mismatched_files(exported, tmp_path):
    import json

    from engine.export import load_exported

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    config = json.loads((broken / "model_config.json").read_text())
    config["t5"]["d_ff"] = 128
    (broken / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"model\.safetensors: the weights do not fit .*model_config\.json"):
        load_exported(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors: not found, expected the weights"):
        load_exported(broken)
