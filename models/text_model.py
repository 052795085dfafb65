"""The text half: a Hugging Face T5 encoder-decoder, built from a config dict (no download) or pretrained."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from transformers import PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from common.errors import UserError


def t5_config_dict(tokenizer: PreTrainedTokenizerBase, d_model: int, num_layers: int, num_heads: int, d_kv: int,
                   d_ff: int, dropout: float) -> dict:
    """A T5 of the given sizes over `tokenizer`'s vocabulary (pad = decoder start, as in T5)."""
    return T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
        num_decoder_layers=num_layers, num_heads=num_heads, dropout_rate=dropout,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    ).to_dict()


def t5_from_config(config: dict) -> T5ForConditionalGeneration:
    """Random weights of the architecture `config` describes; the caller loads the trained ones."""
    return T5ForConditionalGeneration(T5Config.from_dict(config))


def local_t5_config(name: str) -> Optional[dict]:
    """The config of T5.NAME when it is a local folder (its config.json only, no weights); None for a hub name or
    a folder that is not there: comparing architectures must never load or download a model."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return None
    try:
        return T5Config.from_pretrained(str(folder)).to_dict()
    except (OSError, ValueError) as e:
        raise UserError(f"T5.NAME={name!r}: cannot read {folder / 'config.json'} ({str(e).splitlines()[0]}); "
                        "expected the config.json of a T5 saved with save_pretrained") from None


def load_pretrained_t5(name: str, tokenizer: PreTrainedTokenizerBase) -> T5ForConditionalGeneration:
    """`t5-base` (hub or its cache) or a local folder: only a new run starts from these weights."""
    looks_like_path = name.startswith(("/", ".", "~"))  # a hub id is `name` or `org/name`
    if looks_like_path and not Path(name).expanduser().exists():
        raise UserError(f"T5.NAME={name!r}: folder not found; give a local T5 folder, a hub name such as t5-base, "
                        "or leave T5.NAME empty to build one offline")
    try:
        model = T5ForConditionalGeneration.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"T5.NAME={name!r}: cannot load the model ({str(e).splitlines()[0]}); "
                        f"give a local T5 folder, or leave T5.NAME empty to build one offline") from None
    if model.config.vocab_size < len(tokenizer):
        raise UserError(f"T5.NAME={name!r}: vocabulary {model.config.vocab_size} < tokenizer {len(tokenizer)}")
    return model
