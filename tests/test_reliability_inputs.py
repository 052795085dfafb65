"""Hostile or oversized inputs are refused (or cropped) where they enter, with one line naming the file,
the clip and the key: never a huge allocation, a numpy/torch traceback, or a silent truncation."""
import logging
import pickle

import numpy as np
import pytest
import torch

from common.errors import UserError
from dataloaders.datasets import TrainDataset, collate, load_dataset
from dataloaders.formats import load_clips, load_standards
from dataloaders.humanml3d import convert
from dataloaders.validation import validate_clips
from models.tokenizer import train_caption_tokenizer


def clip(name="a", frames=5, labels=("keep your guard up",), **extra):
    g = torch.Generator().manual_seed(0)
    return {"video_name": name, "motion_type": "Jab", "coordinates": torch.randn(frames, 66, generator=g),
            "labels": list(labels), **extra}


def save_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path


# ----------------------------------------------------------------------------- declared vs stored size

BROADCASTS = {
    "expand": lambda: torch.zeros(1).expand(10**9, 66),
    "as_strided": lambda: torch.zeros(66).as_strided((10**9, 66), (0, 1)),
}


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
@pytest.mark.parametrize("make", BROADCASTS.values(), ids=BROADCASTS.keys())
def test_broadcast_tensor_declaring_264_gb_is_refused_before_it_is_copied(tmp_path, suffix, make):
    clips = [clip("ok"), clip("bomb", coordinates=make())]
    path = tmp_path / f"bomb{suffix}"
    if suffix == ".pkl":
        save_pickle(path, clips)  # plain pickle: the embedded storage holds 1 (or 66) floats
    else:
        torch.save(clips, path)  # torch's own format: read through the weights_only loader
    assert path.stat().st_size < 1_000_000
    with pytest.raises(UserError) as e:
        load_clips(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: entry 1 (video_name 'bomb'): key 'coordinates' declares shape [1000000000, 66]")
    assert "stride-0" in msg and "\n" not in msg


def test_a_view_into_a_larger_stored_tensor_still_loads(tmp_path):
    whole = torch.randn(10, 66)
    path = save_pickle(tmp_path / "view.pkl", [clip("v", coordinates=whole[2:5])])  # offset 132, storage 660
    (c,) = load_clips(path)
    assert torch.equal(c["coordinates"], whole[2:5])


def npy_header_only(path, shape, dtype="<f4"):
    """A .npy file whose header declares `shape` but which holds only 66 values."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(66, np.float32).tobytes())
    return path


def test_npy_header_declaring_more_data_than_the_file_holds_is_refused_unread(tmp_path):
    path = npy_header_only(tmp_path / "bomb.npy", (10**9, 66))
    with pytest.raises(UserError, match=r"bomb.npy: .npy header declares shape \[1000000000, 66\] \(264000000000 "
                                        r"bytes\) but the file holds 264 bytes"):
        load_clips(path)
    with pytest.raises(UserError, match=r"bomb.npy: key 'coordinates' has 1000000000 frames, more than "
                                        r"DATA.MAX_FRAMES=1000"):
        load_clips(path, max_frames=1000)


# ----------------------------------------------------------------------------- DATA.MAX_FRAMES

def test_clip_longer_than_max_frames_is_refused_naming_clip_limit_and_key(tmp_path):
    path = save_pickle(tmp_path / "train.pkl", [clip("short", 50), clip("long", 51)])
    assert len(load_dataset(path, pretrain=True, branch=0, max_frames=51)) == 2
    with pytest.raises(UserError) as e:
        load_dataset(path, pretrain=True, branch=0, max_frames=50)
    assert str(e.value) == (f"{path}: entry 1 (video_name 'long'): key 'coordinates' has 51 frames, more than "
                            "DATA.MAX_FRAMES=50 (memory grows with the frames); crop or split the clip, or raise "
                            "DATA.MAX_FRAMES in the config")


def test_max_frames_covers_standards_subtraction_and_npy(tmp_path):
    std = save_pickle(tmp_path / "std.pkl", [{"video_name": "Jab", "coordinates": torch.zeros(60, 66)}])
    with pytest.raises(UserError, match=r"std.pkl: entry 0 \(video_name 'Jab'\): key 'coordinates' has 60 frames"):
        load_standards(std, max_frames=50)
    sub = save_pickle(tmp_path / "sub.pkl", [clip("a", 5, subtraction=torch.zeros(60, 8))])
    with pytest.raises(UserError, match=r"entry 0 \(video_name 'a'\): key 'subtraction' has 60 frames"):
        load_clips(sub, max_frames=50)
    np.save(tmp_path / "Jab.npy", np.zeros((60, 66), np.float32))
    with pytest.raises(UserError, match=r"Jab.npy: key 'coordinates' has 60 frames, more than DATA.MAX_FRAMES=50"):
        load_clips(tmp_path / "Jab.npy", max_frames=50)


def test_config_max_frames_reaches_training_test_standard_and_checkpoint_data(tmp_path):
    from engine.experiment import load_data
    from tests.helpers import tiny_config

    from engine.prediction import load_inference_clips, load_standards_for, retrieved_for

    train = save_pickle(tmp_path / "train.pkl", [clip("t0", 30), clip("t1", 30)])
    test = save_pickle(tmp_path / "test.pkl", [clip("long_test", 40)])
    std = save_pickle(tmp_path / "std.pkl", [{"video_name": "Jab", "coordinates": torch.zeros(45, 66)}])
    data = {"TRAIN": str(train), "TEST": str(test), "STANDARD": str(std), "MAX_FRAMES": 35}
    cfg = tiny_config(DATA=data, TASK={"PRETRAIN": True}, BRANCH=0)
    with pytest.raises(UserError, match=r"test.pkl: entry 0 \(video_name 'long_test'\).*DATA.MAX_FRAMES=35"):
        load_data(cfg)
    with pytest.raises(UserError, match=r"test.pkl: entry 0 \(video_name 'long_test'\).*DATA.MAX_FRAMES=35"):
        load_inference_clips(cfg, test)  # evaluate.py --checkpoint
    finetune = tiny_config(DATA=data, TASK={"PRETRAIN": False}, BRANCH=1)
    with pytest.raises(UserError, match=r"std.pkl: entry 0 \(video_name 'Jab'\).*DATA.MAX_FRAMES=35"):
        load_data(finetune)
    with pytest.raises(UserError, match=r"std.pkl: entry 0 \(video_name 'Jab'\).*DATA.MAX_FRAMES=35"):
        load_standards_for(finetune)
    long_train = save_pickle(tmp_path / "long_train.pkl", [clip("long_train", 40)])
    retrieval = tiny_config(DATA={**data, "TRAIN": str(long_train)}, RETRIEVAL={"NEIGHBOURS": 1})
    with pytest.raises(UserError, match=r"long_train.pkl: entry 0 .*DATA.MAX_FRAMES=35"):
        retrieved_for(retrieval, [clip("x", 5)])


# ----------------------------------------------------------------------------- DATA.MAX_LABEL_TOKENS

def test_long_training_label_is_cropped_with_one_warning_naming_the_clip(caplog):
    tok = train_caption_tokenizer(["keep your guard up", "keep your hand at chin", "punch"], 300)
    huge = " ".join(["keep your hand at chin"] * 6000)  # 30,000 words
    clips = [clip("a", labels=["keep your guard up"]), clip("huge", labels=[huge, "punch"]),
             clip("b", labels=[huge])]
    with caplog.at_level(logging.WARNING, logger="motion2text"):
        ds = TrainDataset(clips, tokenizer=tok, max_label_tokens=16)
    texts = [t for _, t in ds.index]
    assert texts[0] == "keep your guard up" and texts[2] == "punch"  # short labels untouched
    for cropped in (texts[1], texts[3]):
        assert huge.startswith(cropped)
        assert 0 < len(tok(cropped, add_special_tokens=False).input_ids) <= 16
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DATA.MAX_LABEL_TOKENS=16: cropped 2 of 4 training labels" in warnings[0] and "'huge'" in warnings[0]
    assert collate([ds[1]])["texts"] == [texts[1]]


def test_build_experiment_crops_training_labels_to_the_config_limit(tmp_path, caplog, one_thread):
    from engine.experiment import build_experiment
    from tests.cli_helpers import one_cpu_process
    from tests.helpers import tiny_config

    words = "a person walks forward raises the left arm".split()
    huge = " ".join(words * 400)
    train = save_pickle(tmp_path / "train.pkl", [clip(f"t{i}", 8, labels=[" ".join(words[i:]), huge])
                                                 for i in range(3)])
    test = save_pickle(tmp_path / "test.pkl", [clip("e0", 8, labels=[huge])])
    cfg = tiny_config(DATA={"TRAIN": str(train), "TEST": str(test), "MAX_LABEL_TOKENS": 20}, BRANCH=0,
                      LOGDIR=str(tmp_path / "exp"))
    with caplog.at_level(logging.WARNING, logger="motion2text"):
        exp = build_experiment(cfg, one_cpu_process())
    labels = exp.model.codec.encode_targets([t for _, t in exp.train_set.index])
    assert labels.shape[1] <= len(exp.model.codec.prompt_ids) + 20 + 1  # prompt + cropped caption + eos
    assert any("MAX_LABEL_TOKENS=20: cropped 3 of 6 training labels" in r.getMessage() for r in caplog.records)
    assert exp.test_set[0]["references"] == [huge]  # references are scored whole, never cropped


# ----------------------------------------------------------------------------- labels as the scorer sees them

@pytest.mark.parametrize("label", ["|||", "\u200b", "\ufeff", "||| \u200b |||"])
def test_label_that_sanitises_to_nothing_is_refused_naming_file_clip_and_index(tmp_path, label):
    path = save_pickle(tmp_path / "test.pkl", [clip("fine"), clip("blank", labels=["keep your guard up", label])])
    with pytest.raises(UserError) as e:
        load_dataset(path, pretrain=True, branch=0)
    msg = str(e.value)
    assert msg.startswith(f"{path}: entry 1 (video_name 'blank'): key 'labels' item 1 is ")
    assert "sanitize_caption" in msg and "\n" not in msg


@pytest.mark.parametrize("label", ["...", "?!", "- -", "«»"])
def test_punctuation_only_label_is_refused_naming_file_clip_and_index(tmp_path, label):
    path = save_pickle(tmp_path / "test.pkl", [clip("fine"), clip("dots", labels=["keep your guard up", label])])
    with pytest.raises(UserError, match=r"entry 1 \(video_name 'dots'\): key 'labels' item 1 is .*punctuation only"):
        load_dataset(path, pretrain=True, branch=0)
    validate_clips([clip("ok", labels=["3", "é", "ok."])], "x.pkl")  # one letter or digit is enough


def test_augmented_label_that_sanitises_to_nothing_is_refused():
    with pytest.raises(UserError, match=r"x.pkl: entry 0 \(video_name 'a'\): key 'augmented_labels' item 0"):
        validate_clips([clip("a", augmented_labels=["\ufeff"])], "x.pkl")


# ----------------------------------------------------------------------------- dtypes and disguised files

@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U3"])
def test_npy_that_is_not_real_numbers_is_refused_naming_the_file(tmp_path, dtype):
    np.save(tmp_path / "odd.npy", np.ones((4, 66), dtype=dtype))
    with pytest.raises(UserError, match=rf"odd.npy: .npy array has dtype {np.dtype(dtype)}, expected a float "
                                        r"array \[frames, 66\] of real numbers"):
        load_clips(tmp_path / "odd.npy")


@pytest.mark.parametrize("value", [torch.ones(4, 66, dtype=torch.complex64), torch.ones(4, 66, dtype=torch.bool),
                                   np.ones((4, 66), np.complex128)], ids=["torch-complex", "torch-bool", "np-complex"])
def test_pickled_coordinates_that_are_not_real_numbers_are_refused(tmp_path, value):
    path = save_pickle(tmp_path / "odd.pkl", [clip("c", coordinates=value)])
    with pytest.raises(UserError, match=r"odd.pkl: entry 0 \(video_name 'c'\): key 'coordinates' has dtype .*"
                                        r"expected a float array \[frames, 66\] of real numbers"):
        load_clips(path)


@pytest.mark.parametrize("key", ["coordinates", "extra"])
def test_sparse_tensor_is_refused_naming_clip_and_key(tmp_path, key):
    path = tmp_path / "sparse.pt"
    torch.save([clip("s", **{key: torch.zeros(4, 66).to_sparse()})], path)
    with pytest.raises(UserError, match=rf"sparse.pt: entry 0 \(video_name 's'\): key '{key}' is a torch.sparse_coo "
                                        r"tensor, expected a float array \[frames, .*\] \(a dense tensor\)"):
        load_clips(path)


def test_pickle_renamed_npy_gets_our_message_not_numpys_allow_pickle_advice(tmp_path):
    path = save_pickle(tmp_path / "clip.npy", {"video_name": "x", "coordinates": np.zeros((4, 66))})
    with pytest.raises(UserError) as e:
        load_clips(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a plain .npy array") and "never unpickled" in msg
    assert "allow_pickle" not in msg


# ----------------------------------------------------------------------------- HumanML3D captions

def hml3d_release(root, caption_bytes: bytes):
    (root / "new_joints").mkdir(parents=True)
    (root / "texts").mkdir()
    np.save(root / "new_joints" / "000001.npy", np.zeros((30, 22, 3), np.float32))
    (root / "texts" / "000001.txt").write_bytes(caption_bytes)
    (root / "train.txt").write_text("000001\n")
    return root


def test_humanml3d_non_utf8_caption_file_is_one_line_error_naming_it(tmp_path):
    root = hml3d_release(tmp_path / "H", "a person waves.#a/DET#0.0#0.0\n".encode("latin-1") + b"caf\xe9#x#0.0#0.0\n")
    with pytest.raises(UserError) as e:
        convert(root, "train", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{root / 'texts' / '000001.txt'}: not UTF-8 text") and "\n" not in msg


def test_humanml3d_captions_split_on_newline_only(tmp_path):
    text = ("a person waves\u2028slowly.#a/DET#0.0#0.0\r\n"
            "then bows\u0085deeply.#then/ADV#0.0#0.0\r\n"
            "and leaves.#and/CCONJ#0.0#0.0")
    root = hml3d_release(tmp_path / "H", text.encode("utf-8"))
    clips, summary = convert(root, "train", progress=False)
    assert clips[0]["labels"] == ["a person waves\u2028slowly.", "then bows\u0085deeply.", "and leaves."]
    assert (summary["caption_lines"], summary["malformed_caption_lines"], summary["empty_caption_lines"]) == (3, 0, 0)
