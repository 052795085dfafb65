"""Config schema: every original key accepted, typos and wrong types rejected with the promised message."""
from pathlib import Path

import pytest
import yaml

from engine.config import REPO_ROOT
from engine.config_loader import load_config, parse_overrides
from common.errors import UserError

ORIGINAL = {  # every key of the original research config
    "HIDDEN_CHANNEL": 32, "OUT_CHANNEL": 128, "BRANCH": 1, "LOGDIR": None, "WEIGHT_PATH": None,
    "TRANSFORMATION": {"REDUCTION_POLICY": "SKELETON_POOL"}, "TASK": {"PRETRAIN": False},
    "DATA": {"TRAIN": "train.pkl", "TEST": "test.pkl", "BATCH_SIZE": 4},
    "OPTIMIZER": {"LR": "1e-4", "MAX_EPOCH": 50, "WARMUP_STEPS": 5000},
    "ALIGNMENT": {"REFERENCE_SEGMENT": "ALIGNED"},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_original_key_is_accepted_and_logdir_defaults_to_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL))
    assert cfg.OPTIMIZER.LR == 1e-4  # YAML reads "1e-4" as a string; we accept it as a float
    assert cfg.TRANSFORMATION.REDUCTION_POLICY == "SKELETON_POOL"
    assert cfg.logdir == tmp_path / "exp"
    assert cfg.checkpoint_dir == tmp_path / "exp" / "checkpoints"
    assert cfg.prompt == "Motion Instruction : "


def test_relative_paths_resolve_against_the_config_folder_then_the_repo_root(tmp_path):
    path = write(tmp_path, ORIGINAL)
    (path.parent / "train.pkl").write_bytes(b"")
    cfg = load_config(path)
    assert cfg.path(cfg.DATA.TRAIN) == path.parent / "train.pkl"
    assert cfg.path(cfg.DATA.TEST) == REPO_ROOT / "test.pkl"


def test_a_typo_names_the_key_and_the_closest_valid_one(tmp_path):
    bad = {**ORIGINAL, "OPTIMIZER": {"LR": 1e-4, "MAX_EPOCHS": 3}}
    with pytest.raises(UserError, match=r"unknown config key OPTIMIZER.MAX_EPOCHS; did you mean OPTIMIZER.MAX_EPOCH\?"):
        load_config(write(tmp_path, bad))


def test_a_wrong_type_names_key_value_and_expected_type(tmp_path):
    bad = {**ORIGINAL, "DATA": {**ORIGINAL["DATA"], "BATCH_SIZE": "four"}}
    with pytest.raises(UserError, match=r"DATA.BATCH_SIZE: got 'four' \(str\), expected int"):
        load_config(write(tmp_path, bad))


@pytest.mark.parametrize("override, message", [
    ("DATA.BATCH_SIZE=-1", r"DATA.BATCH_SIZE: got -1, expected a finite value in \[1, 65536\]"),
    ("BRANCH=3", r"BRANCH: got 3 \(int\), expected one of 0, 1, 2"),
    ("TRANSFORMATION.REDUCTION_POLICY=MAX", r"expected one of 'TIME_POOL', 'SKELETON_POOL', 'ORIGIN'"),
    ("OUT_CHANNEL=100", r"OUT_CHANNEL must equal 4 × HIDDEN_CHANNEL"),
    ("DROPOUT=1.5", r"DROPOUT: got 1.5, expected a finite value in \[0.0, 1.0\)"),
    ("T5.WORD_BAG=0.5 T5.MOTION_MARGIN=0.2", r"T5.WORD_BAG=0.5, T5.MOTION_MARGIN=0.2: the motion margin's paired"),
    ("T5.CONTRASTIVE=1 T5.MOTION_MARGIN=0.2", r"T5.CONTRASTIVE=1.0, T5.MOTION_MARGIN=0.2: the motion margin"),
    ("TRANSFORMATION.PERSON_ADVERSARY=0.1 T5.MOTION_MARGIN=0.2",
     r"TRANSFORMATION.PERSON_ADVERSARY=0.1, T5.MOTION_MARGIN=0.2: the motion margin's paired"),
    ("DATA.AUGMENT_TURN_DEG=30 TRANSFORMATION.CANONICAL_FACING=true",
     r"DATA.AUGMENT_TURN_DEG=30.0, TRANSFORMATION.CANONICAL_FACING=true: facing every clip forward undoes"),
    ("DATA.AUGMENT_TURN_DEG=200", r"AUGMENT_TURN_DEG: got 200.0, expected a finite value in \[0.0, 180.0\]"),
    ("DATA.AUGMENT_SPEED=0.6", r"AUGMENT_SPEED: got 0.6, expected a finite value in \[0.0, 0.5\]"),
])
def test_bad_values_are_rejected(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        load_config(write(tmp_path, ORIGINAL), override.split())


def test_overrides_use_dotted_keys_and_yaml_scalars(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL), ["OPTIMIZER.LR=3e-4", "DATA.BATCH_SIZE=8", "TASK.PRETRAIN=true"])
    assert (cfg.OPTIMIZER.LR, cfg.DATA.BATCH_SIZE, cfg.TASK.PRETRAIN) == (3e-4, 8, True)
    assert parse_overrides(["A.B.C=x"]) == {"A": {"B": {"C": "x"}}}
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_overrides(["OPTIMIZER.LR"])


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


SHIPPED = sorted(REPO_ROOT.glob("results/*/config.yaml")) + sorted(REPO_ROOT.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_loads(path):
    # A tracked config that no longer matches the schema would fail only when a user launches it.
    cfg = load_config(path)
    assert cfg.OPTIMIZER.LR > 0 and cfg.OPTIMIZER.MAX_EPOCH >= 1


def test_the_shipped_configs_are_found():
    names = {p.parent.name for p in SHIPPED}
    assert {"bx_finetune", "bx_no_retrieval", "demo_pretrain", "demo_finetune"} <= names


@pytest.mark.parametrize("override", ["OPTIMIZER.LR=.nan", "OPTIMIZER.LR=.inf", "OPTIMIZER.WEIGHT_DECAY=.nan",
                                      "OPTIMIZER.GRAD_CLIP=.inf", "GENERATION.LENGTH_PENALTY=-.inf", "OPTIMIZER.LR=1e6"])
def test_non_finite_or_absurd_floats_are_rejected(tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"{key}: got .*, expected a finite value in"):
        load_config(write(tmp_path, ORIGINAL), [override])


@pytest.mark.parametrize("override", ["SEED=99999999999999999999999", "T5.VOCAB_SIZE=100000000000",
                                      "DATA.BATCH_SIZE=10000000", "GENERATION.MAX_LENGTH=1000000"])
def test_huge_integers_are_rejected(tmp_path, override):
    with pytest.raises(UserError, match=rf"{override.split('=')[0]}: got \d+, expected a finite value in"):
        load_config(write(tmp_path, ORIGINAL), [override])


def test_every_numeric_key_has_a_range():
    import dataclasses

    from engine.config import Config

    def numeric_fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                yield from numeric_fields(type(default), f"{prefix}{f.name}.")
            elif f.type in ("int", "float", int, float):
                yield f"{prefix}{f.name}", f

    fields = dict(numeric_fields(Config))
    assert len(fields) > 30
    assert [k for k, f in fields.items() if "range" not in f.metadata] == []
    assert all(f.default in f.metadata["range"] for f in fields.values())  # every default is allowed


@pytest.mark.timeout(20)
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 5)]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines + ["OPTIMIZER: {LR: *a4}"]) + "\n")
    assert path.stat().st_size < 1000
    with pytest.raises(UserError, match="more than 10000 values"):
        load_config(path)


@pytest.mark.timeout(20)
def test_a_device_a_huge_file_and_deep_nesting_are_refused(tmp_path):
    with pytest.raises(UserError, match="/dev/zero: not a regular file"):
        load_config("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(UserError, match=r"big.yaml: larger than 1048576 bytes"):
        load_config(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("A: " + "{B: " * 20 + "1" + "}" * 20 + "\n")
    with pytest.raises(UserError, match="nested deeper than 8 levels"):
        load_config(deep)
