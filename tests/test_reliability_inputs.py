"""Hostile or oversized inputs are refused (or cropped) where they enter, with one line naming the file,
the clip and the key: never a huge allocation, a numpy/torch traceback, or a silent truncation."""
import pickle

import pytest
import torch

from common.errors import UserError
from dataloaders.datasets import load_dataset
from dataloaders.validation import validate_clips


def clip(name="a", frames=5, labels=("keep your guard up",), **extra):
    g = torch.Generator().manual_seed(0)
    return {"video_name": name, "motion_type": "Jab", "coordinates": torch.randn(frames, 66, generator=g),
            "labels": list(labels), **extra}


def save_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path


# ----------------------------------------------------------------------------- labels as the scorer sees them

@pytest.mark.parametrize("label", ["|||", "\u200b", "\ufeff", "||| \u200b |||"])
def test_label_that_sanitises_to_nothing_is_refused_naming_file_clip_and_index(tmp_path, label):
    path = save_pickle(tmp_path / "test.pkl", [clip("fine"), clip("blank", labels=["keep your guard up", label])])
    with pytest.raises(UserError) as e:
        load_dataset(path, pretrain=True, branch=0)
    msg = str(e.value)
    assert msg.startswith(f"{path}: entry 1 (video_name 'blank'): key 'labels' item 1 is ")
    assert "sanitize_caption" in msg and "\n" not in msg


def test_augmented_label_that_sanitises_to_nothing_is_refused():
    with pytest.raises(UserError, match=r"x.pkl: entry 0 \(video_name 'a'\): key 'augmented_labels' item 0"):
        validate_clips([clip("a", augmented_labels=["\ufeff"])], "x.pkl")
