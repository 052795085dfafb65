"""The README's BX grid: the recommended setting and the model without retrieval with 3 seeds each, and each
ablation of the latter (branch 0, SKELETON_POOL, synthetic pretraining) with seed 42, on both splits.

    .venv/bin/python tools/bx_grid.py [--jobs 2] [--splits data/splits] [--out results/bx_runs]

Each run trains `results/<experiment>/config.yaml` on `<splits>/bx_<split>_{train,val}.pkl` into
`<out>/<experiment>/<split>_s<seed>/` (log: `<out>/<experiment>.<split>_s<seed>.log`), `--jobs` single-thread
runs at a time; a re-run resumes or skips finished runs. On the person-disjoint split a training clip
retrieves no clip of its own person (RETRIEVAL.EXCLUDE PERSON), as validation clips cannot. Then one table of
mean ± std next to the baselines (`evaluate.py --summary … --baselines`).
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
from common.errors import UserError, exits_on_user_error  # noqa: E402
from tools.bx_cv import train_fold  # noqa: E402

SPLITS = ("random", "person")
SEEDED = ("bx_finetune", "bx_no_retrieval")  # 3 seeds each
ABLATIONS = ("bx_branch0", "bx_skeleton_pool", "bx_from_synthetic")  # seed 42
RUNS = [(exp, split, seed) for split in SPLITS for exp in SEEDED for seed in (42, 43, 44)] + \
       [(exp, split, 42) for split in SPLITS for exp in ABLATIONS]


def overrides(out: Path, splits: Path, exp: str, split: str, seed: int) -> list[str]:
    return [f"SEED={seed}", f"LOGDIR={out / exp / f'{split}_s{seed}'}",
            f"DATA.TRAIN={splits / f'bx_{split}_train.pkl'}", f"DATA.TEST={splits / f'bx_{split}_val.pkl'}",
            f"RETRIEVAL.EXCLUDE={'PERSON' if split == 'person' else 'CLIP'}"]


def run_grid(out: Path, splits: Path, jobs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def run(item: tuple[str, str, int]) -> int:
        exp, split, seed = item
        print(f"run {exp} {split} seed {seed}", flush=True)
        return train_fold(REPO / "results" / exp / "config.yaml", overrides(out, splits, exp, split, seed),
                          out / f"{exp}.{split}_s{seed}.log")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run, RUNS))
    failed = [f"{exp} {split} seed {seed} (see {out / f'{exp}.{split}_s{seed}.log'})"
              for (exp, split, seed), code in zip(RUNS, codes) if code != 0]
    if failed:
        raise UserError("training failed: " + "; ".join(failed))


@exits_on_user_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--splits", default="data/splits", help="folder of bx_{random,person}_{train,val}.pkl")
    p.add_argument("--out", default="results/bx_runs")
    a = p.parse_args(argv)
    if a.jobs < 1:
        raise UserError(f"--jobs {a.jobs}: expected at least 1")
    out, splits = (REPO / a.out).resolve(), (REPO / a.splits).resolve()
    run_grid(out, splits, a.jobs)
    return evaluate.main(["--summary", *sorted(str(r) for r in out.glob("*/*/")), "--baselines"])


if __name__ == "__main__":
    sys.exit(main())
