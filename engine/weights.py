"""Where a model's weights come from, and the one path from a checkpoint to a model.

Used by resume, finetune initialisation, `evaluate.py --checkpoint` and the benchmarks. A checkpoint holds
its `model_config` (models/config.py) and its tokenizer, so `model_from_checkpoint` needs nothing else: no job
config, no data paths, no download. A checkpoint is named `latest` (the newest valid one), `best` (the epoch
with the best CIDEr whose checkpoint is still intact), a file, or a folder (its newest valid checkpoint).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from common.errors import UserError
from engine import checkpoint as ckpt
from engine.config import Config
from metrics.report import BEST_BY, METRICS_FILE, ranked_epochs, read_experiment_metrics
from models.config import MotionToTextConfig
from models.lora import LORA_MARK
from models.motion2text import MotionToText
from models.text_model import load_pretrained_t5, local_t5_config, t5_config_dict
from models.tokenizer import tokenizer_from_json

log = logging.getLogger("motion2text")

# Job config keys that fix the shapes of the encoder's tensors: pretraining and finetuning must agree on them.
# The T5's shapes are compared by architecture (`check_t5_architecture`), never by the T5.NAME text: the same
# T5 copied to another folder is the same model.
SIZE_KEYS = ("HIDDEN_CHANNEL", "OUT_CHANNEL")
# The T5 config fields that fix its tensor shapes, and the job config key that sets each for a config-built T5.
T5_SIZE_FIELDS = {"d_model": "T5.D_MODEL", "num_layers": "T5.NUM_LAYERS", "num_decoder_layers": "T5.NUM_LAYERS",
                  "num_heads": "T5.NUM_HEADS", "d_kv": "T5.D_KV", "d_ff": "T5.D_FF", "vocab_size": None}
# ... and those that change what the model reads or writes: evaluating needs the training values.
EVAL_KEYS = SIZE_KEYS + ("BRANCH", "TASK.PRETRAIN", "TRANSFORMATION.REDUCTION_POLICY", "RETRIEVAL.NEIGHBOURS",
                         "RETRIEVAL.LABEL_INDEX")
_ABSENT = object()


# ---- which checkpoint ----------------------------------------------------------------------------

def _valid_or_error(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    reason = ckpt.verify(path)
    if reason is not None:
        raise UserError(f"{path}: invalid checkpoint: {reason}")
    return path


def resolve_checkpoint(cfg: Config, spec: str) -> Path:
    """`latest` | `best` | a checkpoint file | a folder of checkpoints → the checkpoint file to load."""
    folder = cfg.checkpoint_dir
    if spec == "latest":
        path = ckpt.newest_valid_checkpoint(folder)
        if path is None:
            found = ckpt.list_checkpoints(folder)
            why = (f"{len(found)} checkpoint file(s) there, none intact" if found
                   else "no checkpoint there" if folder.is_dir() else "the folder does not exist")
            raise UserError(f"--checkpoint latest: no valid checkpoint in {folder} ({why}); train first, "
                            "or give --checkpoint PATH")
        return path
    if spec == "best":
        return best_checkpoint(cfg)
    return _valid_or_error(ckpt.checkpoint_file(Path(spec).expanduser(), f"--checkpoint {spec}"))


def best_checkpoint(cfg: Config) -> Path:
    logdir = cfg.logdir
    per_epoch = read_experiment_metrics(logdir)
    if not per_epoch:
        raise UserError(f"--checkpoint best: no metrics in {logdir} ({METRICS_FILE} or jsons/metrics_epoch*.json); "
                        f"run `python evaluate.py --exp {logdir}` first, or use --checkpoint latest")
    ranked = ranked_epochs(per_epoch, BEST_BY)
    if not ranked:
        raise UserError(f"--checkpoint best: no epoch in the metrics of {logdir} has a {BEST_BY} value")
    folder = cfg.checkpoint_dir
    for epoch in ranked:
        path = folder / ckpt.checkpoint_name(epoch)
        if path.is_file() and ckpt.verify(path) is None:
            if epoch != ranked[0]:
                log.warning("best %s epoch %d has no intact checkpoint; using epoch %d, the best one that has",
                            BEST_BY, ranked[0], epoch)
            return path
    available = [p.name for p in ckpt.list_checkpoints(folder)]
    raise UserError(f"--checkpoint best: none of the scored epochs ({', '.join(map(str, ranked[:8]))}"
                    f"{', ...' if len(ranked) > 8 else ''}, best {BEST_BY} first) has an intact checkpoint in "
                    f"{folder} (available: {', '.join(available) or 'none'}; older ones are pruned by "
                    "CHECKPOINT.KEEP_LAST); use --checkpoint latest or PATH")


def resolve_init_weights(cfg: Config) -> Optional[Path]:
    """Initial weights of a new run: WEIGHT_PATH (a checkpoint file, or a folder → its newest valid
    checkpoint); for finetuning without WEIGHT_PATH, the newest valid one in pretrain_checkpoints/."""
    if cfg.WEIGHT_PATH:
        return ckpt.checkpoint_file(cfg.path(cfg.WEIGHT_PATH), "config key WEIGHT_PATH")
    if cfg.TASK.PRETRAIN:
        return None
    folder = cfg.logdir / "pretrain_checkpoints"
    newest = ckpt.newest_valid_checkpoint(folder)
    if newest is None:
        log.warning("finetuning without pretrained weights: no valid checkpoint in %s and WEIGHT_PATH is not "
                    "set; the model starts from random weights", folder)
    return newest


# ---- checks --------------------------------------------------------------------------------------

def read_weights_file(path: Path) -> dict:
    """A checkpoint written by this trainer: a dict with the model tensors and the tokenizer."""
    state = ckpt.load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not a Motion2Text checkpoint (no 'model' state dict); give a checkpoint "
                        f"written by train_t5_stagcn.py")
    if not isinstance(state.get("tokenizer_json"), str):
        raise UserError(f"{path}: the checkpoint carries no tokenizer ('tokenizer_json'), so its T5 "
                        f"vocabulary cannot be matched; give a checkpoint written by train_t5_stagcn.py")
    return state


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def changed_keys(cfg: Config, state: dict, keys) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, this config's value) for each dotted key whose value differs from the one in
    the checkpoint's stored job config; a key the checkpoint does not store counts as unchanged."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return []
    ours = cfg.to_dict()
    pairs = ((key, _lookup(saved, key), _lookup(ours, key)) for key in keys)
    return [(key, theirs, mine) for key, theirs, mine in pairs if theirs is not _ABSENT and theirs != mine]


def check_architecture(cfg: Config, state: dict, source: Path, fix: str, keys=SIZE_KEYS) -> None:
    """Name the first config key (or T5 size) whose value differs from the one the weights were trained with.
    Without a stored config the strict state-dict load still checks every shape."""
    changed = changed_keys(cfg, state, keys)
    if changed:
        key, theirs, mine = changed[0]
        raise UserError(f"{source}: trained with {key}={theirs!r}, this config has {key}={mine!r}; {fix}")
    check_t5_architecture(cfg, state, source, fix)


def _t5_sizes(t5: dict) -> dict:
    sizes = {f: t5.get(f) for f in T5_SIZE_FIELDS}
    if sizes["num_decoder_layers"] is None:  # transformers' T5Config: None means as many as the encoder
        sizes["num_decoder_layers"] = sizes["num_layers"]
    return {f: v for f, v in sizes.items() if v is not None}


def stored_t5_sizes(state: dict) -> Optional[dict]:
    """The T5 sizes of a checkpoint: its model_config's T5 dict; for an older checkpoint the T5.* sizes of its
    job config when that built its T5, else the config.json of its T5.NAME folder if still there."""
    model_config = state.get("model_config")
    if isinstance(model_config, dict) and isinstance(model_config.get("t5"), dict):
        return _t5_sizes(model_config["t5"])
    saved_t5 = (state.get("config") or {}).get("T5")
    if not isinstance(saved_t5, dict):
        return None
    if saved_t5.get("NAME") is None:
        return _t5_sizes(_sizes_from_keys(saved_t5))
    named = local_t5_config(saved_t5["NAME"])
    return _t5_sizes(named) if named is not None else None


def _sizes_from_keys(t5_section: dict) -> dict:
    """T5 config fields from a job config's T5 section (the sizes t5_config_dict builds, vocabulary aside)."""
    return {field: t5_section.get(key.split(".")[1]) for field, key in T5_SIZE_FIELDS.items() if key}


def check_t5_architecture(cfg: Config, state: dict, source: Path, fix: str) -> None:
    """The T5 this job config would build has the checkpoint's sizes. A config-built T5 (T5.NAME empty) is
    compared key by key; a named T5 only when T5.NAME is a local folder (its config.json), since loading or
    downloading a model to compare would defeat a checkpoint that needs neither. The vocabulary of a
    config-built T5 follows the checkpoint's tokenizer, so only a named T5's is compared."""
    theirs = stored_t5_sizes(state)
    if theirs is None:
        return  # nothing cheap to compare: the strict state-dict load still checks every shape
    if cfg.T5.NAME is None:
        mine = _t5_sizes(_sizes_from_keys(cfg.to_dict()["T5"]))
    else:
        named = local_t5_config(cfg.T5.NAME)
        if named is None:
            return
        mine = _t5_sizes(named)
    for field, key in T5_SIZE_FIELDS.items():
        if field in theirs and field in mine and theirs[field] != mine[field]:
            if cfg.T5.NAME is None:
                differs = f"trained with {key}={theirs[field]!r}, this config has {key}={mine[field]!r}"
            else:
                differs = (f"trained with a T5 of {field}={theirs[field]!r}, the T5 of T5.NAME={cfg.T5.NAME!r} has "
                           f"{field}={mine[field]!r}")
            raise UserError(f"{source}: {differs}; {fix}")


# ---- building ------------------------------------------------------------------------------------

def t5_architecture(cfg: Config, tokenizer, state: Optional[dict]) -> tuple[dict, Optional[torch.nn.Module]]:
    """(T5 config dict, pretrained T5 or None) for a model of `cfg`: a checkpoint's own T5 architecture when
    there is one (never a download), else T5.NAME's weights for a new run, else a T5 built from T5.* sizes."""
    stored = (state or {}).get("model_config")
    if cfg.T5.NAME is not None:
        if isinstance(stored, dict) and stored.get("t5"):
            log.info("T5.NAME=%r: not loaded, the checkpoint's own T5 architecture and weights are used", cfg.T5.NAME)
            return stored["t5"], None
        pretrained = load_pretrained_t5(cfg.T5.NAME, tokenizer)
        return pretrained.config.to_dict(), pretrained
    t5 = cfg.T5
    return t5_config_dict(tokenizer, t5.D_MODEL, t5.NUM_LAYERS, t5.NUM_HEADS, t5.D_KV, t5.D_FF, t5.DROPOUT), None


def build_model(cfg: Config, tokenizer, subtraction_dim: int = 0, standards: Optional[dict] = None,
                state: Optional[dict] = None, persons: Sequence[str] = ()) -> MotionToText:
    """The model a job config describes (weights random, or T5.NAME's pretrained T5 for a new run); `persons`:
    the training clips' persons (the person adversary's classes)."""
    t5_dict, pretrained = t5_architecture(cfg, tokenizer, state)
    return MotionToText(cfg.model_config(t5_dict, subtraction_dim, persons), tokenizer, t5=pretrained,
                        standards=standards)


def load_weights(model: MotionToText, state: dict, source: Path, fix: str) -> None:
    """All of the checkpoint's weights into `model`, strictly; a mismatch is one line naming the tensor."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"{source}: its weights do not fit the model ({' '.join(lines[1:3])[:300]}); {fix}") from None


def _legacy_model_config(state: dict, source: Path, tokenizer) -> MotionToTextConfig:
    """Checkpoints written before `model_config` existed: rebuild it from the job config stored beside them."""
    from engine.config_loader import config_from_dict

    saved = dict(state.get("config") or {})
    if not saved:
        raise UserError(f"{source}: the checkpoint stores neither its model config nor its job config")
    saved["DATA"] = {**saved.get("DATA", {}), "TRAIN": "-", "TEST": "-"}
    cfg = config_from_dict(saved)
    subtraction = 0
    if cfg.BRANCH == 2:
        w = state["model"].get("projection.mlp.1.weight")
        if w is None:
            raise UserError(f"{source}: no projection weights (projection.mlp.1.weight) in the checkpoint")
        subtraction = int(w.shape[1]) - 4 * cfg.OUT_CHANNEL
    return cfg.model_config(t5_architecture(cfg, tokenizer, None)[0], subtraction)


def model_from_checkpoint(state: dict, source: Path, standards: Optional[dict] = None,
                          config: Optional[MotionToTextConfig] = None) -> MotionToText:
    """The checkpoint's model with its weights. `config` replaces the stored one (resume passes the job's, which
    may change dropout or word dropout); its architecture must still fit the weights."""
    tokenizer = tokenizer_from_json(state["tokenizer_json"], f"{source}: tokenizer_json")
    if config is None:
        stored = state.get("model_config")
        config = (MotionToTextConfig.from_dict(stored, f"{source}: model_config") if stored is not None
                  else _legacy_model_config(state, source, tokenizer))
    model = MotionToText(config, tokenizer, standards=standards)
    load_weights(model, state, source, "the model config and the checkpoint must come from the same run")
    return model


def load_model(cfg: Config, path: Path, device: torch.device, standards: Optional[dict] = None):
    """(model in eval mode on `device`, checkpoint state) for evaluating `path` on the data of job config `cfg`:
    the keys that decide what the model reads (branch, task, policy, retrieval) must be the training values."""
    state = read_weights_file(path)
    check_architecture(cfg, state, path, "evaluate it with the config it was trained with", keys=EVAL_KEYS)
    model = model_from_checkpoint(state, path, standards)
    model.to(device).eval()
    log.info("loaded %s (epoch %s)", path, state.get("epoch"))
    return model, state


def _adapted_name(name: str, own: dict) -> str:
    """A checkpoint's plain parameter name as `own` names it: `….base_layer.…` where LoRA adapts that layer."""
    head, _, leaf = name.rpartition(".")
    adapted = f"{head}.base_layer.{leaf}"
    return adapted if name not in own and adapted in own else name


# Not loaded when finetuning: the projection's input width depends on the branch, and the auxiliary heads
# (word bag, person adversary, contrastive heads) exist for one run's training losses only.
FRESH_PREFIXES = ("projection.", "word_bag.", "person_adversary.", "contrastive.")


def load_pretrained_weights(model: MotionToText, state: dict, source: Path) -> None:
    """Load everything but the projection (its input width depends on the branch) and the training-only
    auxiliary heads (they serve one run's losses); report what was skipped.

    Every other tensor must be there with the same shape: a partly loaded T5 or encoder would silently
    train from a half-random model."""
    own = model.state_dict()
    weights = state["model"]
    if not any(LORA_MARK in k for k in own) and any(LORA_MARK in k for k in weights):
        raise UserError(f"{source}: its weights carry LoRA adapters and this config has none; finetune with the "
                        "same T5.LORA, or export that checkpoint (evaluate.py --export merges the adapters) first")
    weights = {_adapted_name(k, own): v for k, v in weights.items()}
    adapters = sorted(k for k in own if LORA_MARK in k and k not in weights)
    skipped = sorted(k for k in state["model"] if k.startswith(FRESH_PREFIXES))
    mismatched = [k for k, v in weights.items() if k in own and not k.startswith(FRESH_PREFIXES)
                  and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise UserError(f"{source}: tensor {k} has shape {tuple(weights[k].shape)}, this config builds "
                        f"{tuple(own[k].shape)}; HIDDEN_CHANNEL/OUT_CHANNEL and T5.* sizes must match the pretraining config")
    missing = sorted(k for k in own if k not in weights and not k.startswith(FRESH_PREFIXES) and k not in adapters)
    unexpected = sorted(k for k in weights if k not in own and not k.startswith(FRESH_PREFIXES))
    if missing or unexpected:
        what = (f"{len(missing)} tensors of this model are not in it (e.g. {missing[0]})" if missing else
                f"{len(unexpected)} of its tensors are not in this model (e.g. {unexpected[0]})")
        raise UserError(f"{source}: {what}; HIDDEN_CHANNEL/OUT_CHANNEL and T5.* sizes must match the pretraining config")
    loadable = {k: v for k, v in weights.items() if not k.startswith(FRESH_PREFIXES)}
    model.load_state_dict(loadable, strict=False)
    fresh = sorted(k for k in own if k.startswith(FRESH_PREFIXES))
    log.info("finetuning from %s: loaded %d tensors; skipped %d projection/auxiliary-head tensors of the checkpoint "
             "(%s), the projection and auxiliary heads (%d tensors)%s start fresh", source, len(loadable), len(skipped),
             ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else ""), len(fresh),
             f" and {len(adapters)} LoRA adapter tensors" if adapters else "")
