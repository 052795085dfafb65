"""A trained checkpoint as a folder to share, and the model back from that folder alone.

    DIR/model.safetensors        every weight (no optimizer, no pickle: safe to load from anyone)
    DIR/model_config.json        MotionToTextConfig: the network, its T5 architecture, prompt, decoding
    DIR/tokenizer/               the caption tokenizer (save_pretrained format)
    DIR/generation_config.json   the experiment's decoding settings (load_exported applies them)
    DIR/README.md                model card: data, resolved config, epoch, metrics

`load_exported(DIR)` needs neither the job config nor the checkpoint nor the T5.NAME folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch
import yaml
from safetensors import SafetensorError

from common.errors import UserError
from common.files import atomic_write_json, atomic_write_text, check_new_or_empty_folder
from engine.config import Config
from engine.weights import load_model
from metrics.report import METRICS_FILE, format_table, read_experiment_metrics, read_json
from models.lora import merge_adapters
from models.config import Generation, MotionToTextConfig
from models.motion2text import MotionToText
from models.tokenizer import save_tokenizer, tokenizer_from_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
GENERATION_FILE = "generation_config.json"
CARD_FILE = "README.md"


# ---- writing -------------------------------------------------------------------------------------

def check_export_dir(out_dir: Path) -> None:
    """An export never mixes with other files: DIR must be new or an empty folder."""
    check_new_or_empty_folder(out_dir, "--export", "an export never replaces files")


def export_checkpoint(cfg: Config, checkpoint_path: Path, out_dir: Path) -> Path:
    """Write the model of `checkpoint_path` (trained with job config `cfg`) into `out_dir`; returns it."""
    out_dir = Path(out_dir)
    check_export_dir(out_dir)
    model, state = load_model(cfg, checkpoint_path, torch.device("cpu"))
    # LoRA adapters are folded into the weights: the export is a plain model, loadable without peft's names.
    model = merge_adapters(model)
    config = dataclasses.replace(model.config, generation=cfg.generation, lora={})
    card = model_card(cfg, checkpoint_path, state)  # reads metrics.json: fails before anything is written
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a crashed export of a process with our pid
        staging.mkdir(parents=True)
        write_export(staging, model, config, card)
        os.replace(staging, out_dir)  # all files appear at once; an empty out_dir is replaced
    except OSError as e:
        raise UserError(f"--export {out_dir}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def write_export(folder: Path, model: MotionToText, config: MotionToTextConfig, card: str) -> None:
    # save_model, not save_file: T5's tied embeddings share one storage, which save_file refuses.
    safetensors.torch.save_model(model, str(folder / WEIGHTS_FILE))
    atomic_write_json(folder / CONFIG_FILE, config.to_dict())
    save_tokenizer(model.codec.tokenizer, folder / TOKENIZER_DIR)
    atomic_write_json(folder / GENERATION_FILE, dataclasses.asdict(config.generation))
    atomic_write_text(folder / CARD_FILE, card)


# ---- the model card ------------------------------------------------------------------------------

def model_card(cfg: Config, checkpoint_path: Path, state: dict) -> str:
    epoch = state.get("epoch")
    sections = [
        "# Motion2Text: STA-GCN skeleton encoder → projection → T5",
        f"Exported from `{checkpoint_path}`, epoch {epoch} (optimizer step {state.get('global_step')}), "
        f"of the experiment `{cfg.logdir}`.",
        "## Training data\n\n"
        f"- DATA.TRAIN: `{cfg.path(cfg.DATA.TRAIN)}`\n- DATA.TEST (validation): `{cfg.path(cfg.DATA.TEST)}`",
        f"## Metrics at epoch {epoch}\n\n{metrics_section(cfg, epoch)}",
        f"## Baselines\n\n{baselines_section(cfg)}",
        "## Files\n\n"
        f"- `{WEIGHTS_FILE}`: the weights (safetensors)\n"
        f"- `{CONFIG_FILE}`: the network (encoder sizes, branch, T5 architecture, prompt, decoding)\n"
        f"- `{TOKENIZER_DIR}/`: the caption tokenizer\n"
        f"- `{GENERATION_FILE}`: decoding settings, applied when loading",
        "## Loading\n\nWith the Motion2Text repository on the Python path:\n\n```python\nfrom engine.export import load_exported\n\n"
        "model = load_exported(\"<this folder>\")  # eval mode, on the CPU\n```\n"
        "A BRANCH 1 finetuned model compares each clip with the standard motion of its technique: pass them as "
        "`load_exported(folder, standards=...)` (`dataloaders.formats.load_standards`).",
        "## Training config (resolved)\n\n```yaml\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```",
    ]
    return "\n\n".join(sections) + "\n"


def metrics_section(cfg: Config, epoch: Optional[int]) -> str:
    per_epoch = read_experiment_metrics(cfg.logdir) or {}
    metrics = per_epoch.get(epoch)
    if not metrics:
        return (f"No metrics recorded for this epoch: run `python evaluate.py --exp {cfg.logdir}` "
                "(or `--checkpoint` on labelled clips) to score it.")
    return "```\n" + format_table({epoch: metrics}) + "\n```\nOn the 0-100 scale, on DATA.TEST."


def baselines_section(cfg: Config) -> str:
    """The baselines stored in metrics.json, if any; never numbers computed here."""
    path = cfg.logdir / METRICS_FILE
    summary = read_json(path, "metrics") if path.is_file() else None
    stored = summary.get("baselines") if isinstance(summary, dict) else None
    if not stored or not isinstance(stored, dict) or not all(isinstance(row, dict) for row in stored.values()):
        return (f"Not recorded: run `python evaluate.py --exp {cfg.logdir} --baselines` to compare this "
                "experiment with an untrained model, constant captions and nearest-neighbour retrieval.")
    return "```\n" + format_table(stored, label="baseline") + "\n```"


# ---- loading -------------------------------------------------------------------------------------

def _exported_file(folder: Path, name: str, what: str) -> Path:
    path = folder / name
    if not path.exists():
        raise UserError(f"{path}: not found, expected {what} of a folder written by `evaluate.py --export`")
    return path


def _read_json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}), expected a JSON object written by `evaluate.py --export`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_generation(path: Path) -> Generation:
    data = _read_json_file(path)
    known = {f.name for f in dataclasses.fields(Generation)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown decoding settings {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    return Generation(**data)


def load_exported(folder: str | os.PathLike, standards: Optional[dict] = None) -> MotionToText:
    """The exported model in eval mode on the CPU, rebuilt from the folder alone; every weight must be there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder, expected one written by `evaluate.py --export`")
    config_path = _exported_file(folder, CONFIG_FILE, "the model config")
    config = MotionToTextConfig.from_dict(_read_json_file(config_path), str(config_path))
    generation_path = folder / GENERATION_FILE
    if generation_path.is_file():
        config.generation = read_generation(generation_path)
    tokenizer_json = _exported_file(folder, f"{TOKENIZER_DIR}/tokenizer.json", "the tokenizer")
    tokenizer = tokenizer_from_json(tokenizer_json.read_text(encoding="utf-8"))
    model = MotionToText(config, tokenizer, standards=standards)
    weights = _exported_file(folder, WEIGHTS_FILE, "the weights")
    try:
        safetensors.torch.load_model(model, weights, strict=True)
    except (RuntimeError, SafetensorError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"{weights}: the weights do not fit {config_path} ({first}); expected the files of one "
                        "export") from None
    return model.eval()
