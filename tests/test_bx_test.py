"""tools/bx_test.py: which situation a labelled test file is in, and its one-line errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bx_test import RECOMMENDED, situation

REPO = Path(__file__).resolve().parent.parent


def clips(*names):
    return [{"video_name": n} for n in names]


def test_situation_is_seen_new_or_mixed_by_person_id():
    train = clips("0_front_1", "0_back_2", "12_front_1", "3_back_4")
    assert situation(train, clips("0_front_9", "12_back_3"))[0] == "seen"
    assert situation(train, clips("1_front_1", "2_back_3"))[0] == "new"  # "1" is not "12"'s prefix
    where, seen, new = situation(train, clips("3_front_7", "5_front_1"))
    assert (where, seen, new) == ("mixed", {"3"}, {"5"})


def test_every_recommended_setting_exists():
    for cfg, epochs in RECOMMENDED.values():
        assert (REPO / cfg / "config.yaml").is_file() and epochs >= 1


@pytest.mark.slow
def test_missing_test_file_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "tools/bx_test.py", "--test", str(tmp_path / "nope.pkl")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--test" in r.stderr and "not found" in r.stderr
