"""Caption tokenizers and the prompt/label encoding shared by training and generation.

Offline runs train a byte-level BPE on the training captions (no unknown tokens, T5's special ids
pad 0 / eos 1 / unk 2). It travels inside every checkpoint as JSON so finetuning reuses it unchanged.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from common.errors import UserError

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
# An undertrained byte-level model can emit control bytes (newlines, \x00…); they would break the
# one-caption-per-line metric tools and the JSON readers, so captions carry none.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def train_caption_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; every byte is in the alphabet, so nothing maps to <unk>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # add_prefix_space: "a" and " a" tokenise alike, so prompt ids + label ids == ids of prompt + label.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return _wrap(tok)


def tokenizer_to_json(tokenizer: PreTrainedTokenizerBase) -> str:
    """The whole fast tokenizer as JSON: checkpoints carry it, so a run never depends on a hub later."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str, source: str = "tokenizer") -> PreTrainedTokenizerFast:
    """The tokenizer a checkpoint carries; `source` names it in the error when the JSON is not a tokenizer."""
    try:
        return _wrap(Tokenizer.from_str(text))
    except Exception as e:  # the tokenizers library raises a bare Exception for malformed JSON
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{source}: not a valid tokenizer ({first[:200]})") from None


def load_pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"T5.NAME={name!r}: cannot load its tokenizer ({str(e).splitlines()[0]}); "
                        f"give a local T5 folder, or leave T5.NAME empty to build one offline") from None


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))


class CaptionCodec:
    """Turns captions into T5 labels and generated ids back into captions, around a fixed prompt.

    Training target = prompt ids + caption ids + eos; generation starts the decoder at
    [decoder_start] + prompt ids and strips them from the output.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt: str):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.prompt_ids = tokenizer(prompt.strip(), add_special_tokens=False).input_ids
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise UserError("tokenizer: needs pad and eos tokens (T5's pad 0, eos 1)")

    def encode_targets(self, texts: list[str]) -> torch.Tensor:
        """[B, L] label ids; pad positions are -100 so they never count in the loss (the original counted them)."""
        caption_ids = self.tokenizer([t.strip() for t in texts], add_special_tokens=False).input_ids
        rows = [self.prompt_ids + ids + [self.tokenizer.eos_token_id] for ids in caption_ids]
        labels = torch.full((len(rows), max(map(len, rows))), -100, dtype=torch.long)
        for i, row in enumerate(rows):  # B short rows: a loop over batch items is fine off the hot path
            labels[i, : len(row)] = torch.tensor(row)
        return labels

    def decoder_prefix(self, batch_size: int, decoder_start_id: int) -> torch.Tensor:
        """[B, 1 + P]: decoder start token followed by the prompt, identical for every item."""
        row = torch.tensor([decoder_start_id] + self.prompt_ids, dtype=torch.long)
        return row.unsqueeze(0).expand(batch_size, -1).contiguous()

    def decode(self, generated: torch.Tensor) -> list[str]:
        """Captions from generate() output, without the decoder start and prompt tokens."""
        body = generated[:, 1 + len(self.prompt_ids):]
        texts = self.tokenizer.batch_decode(body, skip_special_tokens=True)
        return [" ".join(_CONTROL.sub(" ", t).split()) for t in texts]
