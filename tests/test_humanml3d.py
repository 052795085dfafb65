"""HumanML3D converter on a tiny fabricated release folder."""

import collections
import io
import pickle

import numpy as np
import pytest
import torch

from dataloaders import humanml3d
from dataloaders.formats import dumps_clips
from dataloaders.humanml3d import convert, main
from common.errors import UserError


def motion(frames, offset=0.0):
    return (np.arange(frames * 66, dtype=np.float32).reshape(frames, 22, 3) * 0.01 + offset).astype(np.float32)


TEXTS = {
    "000001": "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n"
              "\n"
              "the person turns around.#the/DET person/NOUN turn/VERB around/ADV#1.0#1.5\n"
              "a person turns.#a/DET person/NOUN turn/VERB#1.0#1.5\n"
              "a tiny twitch.#a/DET tiny/ADJ twitch/NOUN#0.5#0.55\n"   # frames 10:11 -> 1 frame, too short
              "someone walks.#someone/PRON walk/VERB#nan#nan\n"        # NaN times = whole clip
              "   \n",
    "000002": "a person jumps.#a/DET person/NOUN jump/VERB#0.0#0.0\n"     # whole clip has a NaN frame
              "then lands.#then/ADV land/VERB#1.0#1.25\n",                # frames 20:25 are finite
    "000004": "a long motion.#a/DET long/ADJ motion/NOUN#0.0#0.0\n"       # 50 frames
              "part of it.#part/NOUN of/ADP it/PRON#0.0#2.0\n",           # frames 0:40 (only one tag is 0)
    "000005": "no hash here\n"
              "a person waves.#a/DET person/NOUN wave/VERB#0.0#0.0\n"
              "bad time#bad/ADJ time/NOUN#abc#1.0\n",
    "000006": "\n\n",
    "M000001": "a person walks forward mirrored.#a/DET person/NOUN#0.0#0.0\n",
    "M000005": "a person waves with the other hand.#a/DET person/NOUN#0.0#0.0\n",
}
FRAMES = {"000001": 40, "000002": 30, "000004": 50, "000005": 10, "000006": 12, "M000001": 40, "M000005": 10}


@pytest.fixture()
def release(tmp_path):
    root = tmp_path / "HumanML3D"
    (root / "new_joints").mkdir(parents=True)
    (root / "texts").mkdir()
    for k, (name, frames) in enumerate(sorted(FRAMES.items())):
        joints = motion(frames, offset=k)
        if name == "000002":
            joints[5, 3, 1] = np.nan
        np.save(root / "new_joints" / f"{name}.npy", joints)
        (root / "texts" / f"{name}.txt").write_text(TEXTS[name])
    # 000003 is listed but has no files; 000001 is listed twice; M000005 is listed explicitly
    (root / "train.txt").write_text("000001\n000002\n000003\n000004\n000005\n000006\nM000005\n000001\n")
    (root / "val.txt").write_text("000004\n")
    (root / "test.txt").write_text("000005\n")
    return root


def joints_of(root, name):
    return np.load(root / "new_joints" / f"{name}.npy").reshape(-1, 66)


def check_clips(root, clips, expected):
    assert [c["video_name"] for c in clips] == [e[0] for e in expected]
    for clip, (name, src, lo, hi, labels) in zip(clips, expected):
        assert set(clip) == {"video_name", "coordinates", "labels"}
        coords = clip["coordinates"]
        assert isinstance(coords, torch.Tensor) and coords.dtype == torch.float32 and coords.is_contiguous()
        np.testing.assert_array_equal(coords.numpy(), joints_of(root, src)[lo:hi])
        assert coords.shape == (hi - lo, 66)
        assert clip["labels"] == labels, name


def test_convert_train_without_mirrors(release):
    clips, summary = convert(release, "train", max_frames=45, progress=False)
    check_clips(release, clips, [
        ("000001", "000001", 0, 40, ["a person walks forward.", "someone walks."]),
        ("000001_1.0_1.5", "000001", 20, 30, ["the person turns around.", "a person turns."]),
        ("000002_1.0_1.25", "000002", 20, 25, ["then lands."]),
        ("000004_0.0_2.0", "000004", 0, 40, ["part of it."]),
        ("000005", "000005", 0, 10, ["a person waves."]),
    ])
    counts = {k: v for k, v in summary.items() if k != "examples"}
    assert counts == {
        "ids_listed": 7, "mirror_ids_excluded": 1, "mirrors_added": 0, "mirrors_missing": 0,
        "ids_missing_files": 1, "ids_converted": 5, "ids_without_captions": 1,
        "caption_lines": 10, "empty_caption_lines": 4, "malformed_caption_lines": 2,
        "clips_too_short": 1, "clips_too_long": 1, "clips_nonfinite": 1, "captions_in_skipped_clips": 3,
        "clips_written": 5, "whole_clips": 2, "ranged_clips": 3, "labels_written": 7,
    }
    assert counts["caption_lines"] == counts["labels_written"] + counts["captions_in_skipped_clips"]
    assert any("000003" in e for e in summary["examples"])
    assert any("000005.txt:1" in e for e in summary["examples"])


def test_convert_train_with_mirrors(release):
    clips, summary = convert(release, "train", mirrors=True, progress=False)
    check_clips(release, clips, [
        ("000001", "000001", 0, 40, ["a person walks forward.", "someone walks."]),
        ("000001_1.0_1.5", "000001", 20, 30, ["the person turns around.", "a person turns."]),
        ("000002_1.0_1.25", "000002", 20, 25, ["then lands."]),
        ("000004", "000004", 0, 50, ["a long motion."]),
        ("000004_0.0_2.0", "000004", 0, 40, ["part of it."]),
        ("000005", "000005", 0, 10, ["a person waves."]),
        ("M000001", "M000001", 0, 40, ["a person walks forward mirrored."]),
        ("M000005", "M000005", 0, 10, ["a person waves with the other hand."]),
    ])
    assert (summary["mirror_ids_excluded"], summary["mirrors_added"], summary["mirrors_missing"]) == (0, 1, 4)
    assert (summary["ids_converted"], summary["clips_too_long"], summary["clips_written"]) == (7, 0, 8)


def test_other_splits(release):
    clips, _ = convert(release, "test", progress=False)
    assert [c["video_name"] for c in clips] == ["000005"]
    clips, _ = convert(release, "val", min_frames=41, progress=False)
    assert [c["video_name"] for c in clips] == ["000004"]  # the 40-frame crop is below --min-frames 41


class WhitelistUnpickler(pickle.Unpickler):
    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes"),
               ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} not allowed")
        if name == "_load_from_bytes":
            return lambda b: torch.load(io.BytesIO(b), weights_only=True)
        return {"_rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                "OrderedDict": collections.OrderedDict}[name]


def test_cli_output_is_deterministic_and_whitelist_loadable(release, tmp_path, capsys):
    out1, out2 = tmp_path / "a" / "train.pkl", tmp_path / "b.pkl"
    assert main(["--root", str(release), "--split", "train", "--out", str(out1), "--mirrors"]) == 0
    printed = capsys.readouterr().out
    assert "clips_nonfinite" not in printed and "NaN/inf" in printed and "wrote 8 clips" in printed
    assert main(["--root", str(release), "--split", "train", "--out", str(out2), "--mirrors"]) == 0
    data = out1.read_bytes()
    assert data == out2.read_bytes()
    assert data[:2] == b"\x80\x04"  # protocol 4
    loaded = WhitelistUnpickler(io.BytesIO(data)).load()
    clips, _ = convert(release, "train", mirrors=True, progress=False)
    assert dumps_clips(clips) == data
    assert [c["video_name"] for c in loaded] == [c["video_name"] for c in clips]
    for a, b in zip(loaded, clips):
        assert torch.equal(a["coordinates"], b["coordinates"]) and a["labels"] == b["labels"]
    # plain pickle.dump of a tensor uses the same three globals (nothing more is needed to load ours)
    WhitelistUnpickler(io.BytesIO(pickle.dumps([{"c": torch.ones(2, 66)}], protocol=4))).load()


def test_user_errors(release, tmp_path, capsys):
    with pytest.raises(UserError, match="val.txt"):
        (release / "val.txt").unlink()
        convert(release, "val", progress=False)
    np.save(release / "new_joints" / "000005.npy", np.zeros((10, 263), np.float32))
    with pytest.raises(UserError, match=r"000005\.npy.*\[T, 22, 3\]"):
        convert(release, "test", progress=False)
    with pytest.raises(UserError, match="new_joints"):
        convert(tmp_path, "train", progress=False)
    assert main(["--root", str(release), "--split", "test", "--out", str(tmp_path / "x.pkl")]) == 2
    assert "000005.npy" in capsys.readouterr().err
    assert not (tmp_path / "x.pkl").exists()


def test_module_docstring_documents_choices():
    doc = humanml3d.__doc__
    assert "--max-frames" in doc and "skip" in doc and "<id>_<start>_<end>" in doc
