"""The coaching report page: `evaluate.py --report DIR` on a trained BRANCH 1 model writes one static page whose
every asset is local; a real headless Chromium opens it from disk with no console errors and shows every clip
(a screenshot is kept in test-artifacts/). The pieces: per-clip CIDEr, the decoder's attention rows."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.cli_helpers import REPO, evaluate_main, explain, tiny_data, train_main, write_experiment

ARTIFACTS = REPO / "test-artifacts"
SHOWN = 4  # clips drawn (--max-plots): each GIF takes a second or two
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report folder, test clip names): a 1-epoch BRANCH 1 finetuning run, then its report."""
    from dataloaders.formats import load_clips

    root = tmp_path_factory.mktemp("report")
    data = tiny_data(root / "data")
    cfg = write_experiment(root / "exp", data, pretrain=False, OPTIMIZER={"MAX_EPOCH": 1},
                           TRAIN={"SANITY_EVAL": False})
    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    folder = root / "page"
    res = evaluate_main("--exp", cfg.parent, "--report", folder, "--no-meteor", "--max-plots", SHOWN)
    assert res.returncode == 0, explain(res)
    assert "wrote" in res.stdout and "index.html" in res.stdout
    names = [c["video_name"] for c in load_clips(data["test"])]
    assert len(names) > SHOWN
    return folder, names[:SHOWN]  # the clips shown; the tables score all of them


@pytest.mark.slow
def test_the_report_holds_the_tables_and_every_clip_with_local_assets(report):
    from PIL import Image

    folder, names = report
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "<h2>Metrics on test.pkl</h2>" in page and "constant caption (no motion)" in page
    assert "nearest neighbour (facing forward), label 0" in page and "strongest baseline" in page
    assert "Motion control" in page and "swap within technique" in page
    assert page.count('<section class="clip"') == len(names) and all(f">{n} · CIDEr" in page for n in names)
    sources = re.findall(r'src="([^"]+)"', page)
    assert not [s for s in sources if "://" in s or s.startswith("//")]  # nothing from a network
    assert all((folder / s).is_file() for s in sources), sources
    gifs = [s for s in sources if s.endswith(".gif")]
    assert len(gifs) == len(names)
    with Image.open(folder / gifs[0]) as gif:
        assert gif.n_frames > 1 and gif.size[0] > gif.size[1]  # animated; learner and standard side by side
    assert "curves.png" in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_headless_chromium_opens_the_page_without_console_errors(report, tmp_path):
    folder, names = report
    url = (folder / "index.html").resolve().as_uri()
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<section class="clip"') == len(names)
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or "net::ERR" in ln]
    assert not console, console
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_page.png"
    res = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2400", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert len(np.unique(np.asarray(image.convert("L").resize((64, 120))))) > 8  # drawn, not a blank page


def test_per_clip_cider_averages_to_the_corpus_cider():
    from metrics.caption import CaptionScorer

    scorer = CaptionScorer(meteor=False)
    preds = {"a": "keep your hand at the chin", "b": "turn the hip", "c": "step forward with the jab"}
    refs = {"a": ["keep your rear hand at the chin", "hand at chin"], "b": ["rotate the hip", "turn your hip"],
            "c": ["step in with the jab"]}
    per_clip = scorer.per_clip_cider(preds, refs)
    assert set(per_clip) == set(preds) and per_clip["a"] > per_clip["b"] > 0
    assert np.isclose(np.mean(list(per_clip.values())), scorer.score(preds, refs)["CIDEr"])


def test_cross_attention_rows_are_distributions_over_the_motion_tokens():
    from tests.helpers import make_batch, random_clip, tiny_config, tiny_model

    model = tiny_model(tiny_config()).eval()
    batch = make_batch([random_clip(9, seed=1), random_clip(6, seed=2)])
    labels, attention, starts = model.cross_attention(batch, ["punch", "keep your hand at chin"])
    assert attention.shape == (2, labels.shape[1], 22)  # TIME_POOL: one motion token per joint
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, labels.shape[1]))
    assert starts is None  # BRANCH 0 has no standard


@pytest.mark.parametrize("y_down", [True, False])
def test_the_skeleton_is_drawn_head_up_whichever_way_y_points(y_down):
    from metrics.report_page import _front_view

    joints = np.zeros((3, 22, 3))
    joints[:, 15, 1] = -0.7 if y_down else 0.7  # the head above the pelvis (camera y points down)
    joints[:, 7, 1] = 0.8 if y_down else -0.8  # an ankle below it
    view = _front_view(joints.reshape(3, 66))
    assert (view[:, 15, 1] > 0).all() and (view[:, 7, 1] < 0).all()
