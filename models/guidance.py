"""Decoding with guidance: what the clip changes in the caption, amplified (not in the original).

A caption decoder trained on a small set whose captions depend weakly on the input learns mostly the
captions' language. Its conditional distributions do differ between clips, but by less than the gap between
the most frequent sentence and the next, so the mode that greedy and beam search find is the same sentence
for every clip. Guidance decodes, token by token,

    log p(y_t | clip) + w · (log p(y_t | clip) − log p(y_t | reference input))

with the reference input the one `MotionToText.motion_free_tokens` builds: a clip whose fused
skeleton embedding is zero — in branch 1 with FUSION DIFFERENCE, a learner who moved exactly as the standard.
The added term is the pointwise mutual information between the token and what the clip does differently;
w = 0 is plain decoding. Classifier-free guidance (Ho & Salimans 2022; for language models Sanchez et al. 2023).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor


class ReferenceGuidance(LogitsProcessor):
    """Hand-written: transformers' guidance processors serve decoder-only models or a batch doubled into
    conditional and unconditional halves, which beam search's per-sample beams would interleave.

    `reference` [B, N, d] / `reference_mask` [B, N]: T5's encoder output for the reference inputs, one row per
    sample; generate's rows are the samples' beams in order (row r belongs to sample r // beams). The decoder
    re-reads the whole prefix each step (no cache: beam search reorders rows), which is cheap next to the
    encoder for captions of tens of tokens."""

    def __init__(self, t5, reference: torch.Tensor, reference_mask: torch.Tensor, weight: float):
        self.t5, self.reference, self.reference_mask, self.weight = t5, reference, reference_mask, weight

    def reference_log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """log p(next token | prefix, reference input) [rows, vocab]."""
        beams = input_ids.shape[0] // self.reference.shape[0]
        states = self.reference.repeat_interleave(beams, 0)
        mask = self.reference_mask.repeat_interleave(beams, 0).long()
        logits = self.t5(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=input_ids,
                         use_cache=False).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        conditional = F.log_softmax(scores.float(), dim=-1)  # greedy passes logits, beam search log-probs
        guided = conditional + self.weight * (conditional - self.reference_log_probs(input_ids))
        return guided.to(scores.dtype)
