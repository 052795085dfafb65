"""The text half: a Hugging Face T5 encoder-decoder, pretrained (name or local folder) or built from a config."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase, T5Config as HFT5Config, T5ForConditionalGeneration

from engine.config import T5Config
from common.errors import UserError


def build_t5(cfg: T5Config, tokenizer: PreTrainedTokenizerBase) -> T5ForConditionalGeneration:
    if cfg.NAME is not None:
        try:
            model = T5ForConditionalGeneration.from_pretrained(cfg.NAME)
        except (OSError, ValueError) as e:
            raise UserError(f"T5.NAME={cfg.NAME!r}: cannot load the model ({str(e).splitlines()[0]}); "
                            f"give a local T5 folder, or leave T5.NAME empty to build one offline") from None
        if model.config.vocab_size < len(tokenizer):
            raise UserError(f"T5.NAME={cfg.NAME!r}: vocabulary {model.config.vocab_size} < tokenizer {len(tokenizer)}")
        return model
    config = HFT5Config(
        vocab_size=len(tokenizer), d_model=cfg.D_MODEL, d_kv=cfg.D_KV, d_ff=cfg.D_FF, num_layers=cfg.NUM_LAYERS,
        num_decoder_layers=cfg.NUM_LAYERS, num_heads=cfg.NUM_HEADS, dropout_rate=cfg.DROPOUT,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(config)
