"""The whole model: STA-GCN skeleton encoder → (reference fusion) → projection → T5, as published.

    coordinates [B,T,66] → features [B,6,T,22] → STA-GCN → emb [B,T,22,512]
      branch 1: standard_window − emb (FUSION CONCAT: concat(emb, standard_window − emb))
      branch 2: concat(emb, subtraction per joint)
    → projection → tokens [B,N,d_model] (+ mask by policy)
    (+ RETRIEVAL.NEIGHBOURS: the retrieved training labels' token embeddings, packed after them)
    → T5 loss / generate
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from alignment.reference import first_frame_coordinates, fuse_with_standard, fused_width, window_start
from alignment.window_search import gather_window
from dataloaders.features import face_forward, skeleton_features
from dataloaders.splits import person_of
from models.adversary import PersonAdversary
from models.contrastive import MotionCaptionContrast
from models.lora import ENCODER_MODULES, add_adapters
from models.config import Generation, MotionToTextConfig
from models.guidance import ReferenceGuidance
from models.projection import Projection, mean_over_tokens
from models.stagcn import STAGCN
from models.text_model import t5_from_config
from models.tokenizer import CaptionCodec


def pack_sequences(a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor,
                   b_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the valid rows of `a` then the valid rows of `b`, then padding: [B,Na,D] + [B,Nb,D] →
    [B,N,D] with N the longest packed sample. Packing (not plain concatenation) keeps padding out of the
    middle, so T5's relative positions between motion and text do not depend on the other samples."""
    n_a, n_b = a_mask.sum(1), b_mask.sum(1)
    n = n_a + n_b
    out = a.new_zeros(a.shape[0], int(n.max()) if len(n) else 0, a.shape[-1])
    rows = torch.arange(a.shape[0], device=a.device)[:, None]
    pos_a = a_mask.long().cumsum(1) - 1
    pos_b = n_a[:, None] + b_mask.long().cumsum(1) - 1
    out = out.index_put((rows.expand_as(pos_a)[a_mask], pos_a[a_mask]), a[a_mask])
    out = out.index_put((rows.expand_as(pos_b)[b_mask], pos_b[b_mask]), b[b_mask].to(out.dtype))
    mask = torch.arange(out.shape[1], device=a.device)[None, :] < n[:, None]
    return out, mask


def other_clip_index(names: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(other [B], distinct [B] bool): for each sample the next sample of the batch (cyclically) that belongs
    to another clip; samples whose batch holds no other clip point at themselves with distinct False."""
    B = len(names)
    other = list(range(B))
    for i in range(B):  # B ≤ a batch of names, off the tensor path
        for step in range(1, B):
            if names[(i + step) % B] != names[i]:
                other[i] = (i + step) % B
                break
    other_t = torch.tensor(other, dtype=torch.long, device=device)
    return other_t, other_t != torch.arange(B, device=device)


class MotionToText(nn.Module):
    def __init__(self, config: MotionToTextConfig, tokenizer: PreTrainedTokenizerBase,
                 t5: Optional[T5ForConditionalGeneration] = None,
                 standards: Optional[dict[str, torch.Tensor]] = None):
        """`t5`: pretrained weights to start from; by default a T5 is built from `config.t5` (never downloaded)."""
        super().__init__()
        t5 = t5 if t5 is not None else t5_from_config(config.t5)  # first: the random init order of every run
        self.config = config
        self.branch = config.branch
        self.pretrain = config.pretrain
        self.use_data_segment = config.use_data_segment
        self.use_retrieval = config.retrieval
        self.fusion = config.fusion
        self.word_dropout = config.word_dropout
        self.motion_margin = config.motion_margin
        self.word_bag_weight = config.word_bag
        self.codec = CaptionCodec(tokenizer, config.prompt)
        self.encoder = STAGCN(config.hidden_channel, config.out_channel, config.dropout)
        emb_dim = config.embedding_width
        in_dim = fused_width(emb_dim, self.fusion) if self.branch == 1 else emb_dim
        in_dim += config.subtraction_dim if self.branch == 2 else 0
        self.projection = Projection(in_dim, t5.config.d_model, config.reduction_policy,
                                     config.projection_dropout, token_norm=config.token_norm,
                                     token_norm_stats=config.token_norm_stats)
        self.t5 = t5
        # The word-bag head exists only with the auxiliary loss, so default models keep the published parameters.
        self.word_bag = nn.Linear(t5.config.d_model, t5.config.vocab_size) if config.word_bag > 0 else None
        self.person_adversary_weight = config.person_adversary
        self.person_adversary = (PersonAdversary(t5.config.d_model, config.persons)
                                 if config.person_adversary > 0 else None)
        self.contrastive_weight = config.contrastive
        self.contrastive = MotionCaptionContrast(t5.config.d_model) if config.contrastive > 0 else None
        if config.lora:
            self.add_adapters(config.lora)
        self.standard_names: list[str] = []
        self.register_buffer("standard_coords", torch.zeros(0, 2, 66), persistent=False)  # [S,Ts,66]
        self.register_buffer("standard_lengths", torch.zeros(0, dtype=torch.long), persistent=False)
        if standards:
            self.set_standards(standards)

    def add_adapters(self, lora: dict) -> None:
        """LoRA on T5's `t5_modules` and, with `stagcn`, on the STA-GCN's convolutions (models/lora.py)."""
        if lora.get("t5_modules"):
            add_adapters(self.t5, lora["t5_modules"], lora["rank"], lora["alpha"], lora["dropout"])
        if lora.get("stagcn"):
            add_adapters(self.encoder, ENCODER_MODULES, lora["rank"], lora["alpha"], lora["dropout"])

    def set_standards(self, standards: dict[str, torch.Tensor]) -> None:
        """Standards are data, not weights: kept as non-persistent buffers that follow .to(device)."""
        self.standard_names = list(standards)
        coords = [self.input_coordinates(standards[n].float()) for n in self.standard_names]
        device = self.standard_coords.device
        self.standard_coords = pad_sequence(coords, batch_first=True).to(device)
        self.standard_lengths = torch.tensor([len(c) for c in coords], device=device)

    def input_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates [..., T, 66] as the encoder reads them (turned to face forward if configured)."""
        return face_forward(coords) if self.config.canonical_facing else coords

    def embed_reference(self, coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A reference motion's embedding [S,Ts,22,C]: eval mode (running BatchNorm statistics), no grad, and
        the encoder's mode restored after (the original left it in eval mode for the rest of the epoch)."""
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            emb, _, _ = self.encoder(skeleton_features(coords), mask)
        self.encoder.train(was_training)
        return emb

    def data_segment(self, batch: dict) -> tuple:
        """(learner start, standard start) of the data's aligned segment when the model uses it, else (None, None):
        the standard's window is then searched."""
        return (batch["segment_start"], batch["std_segment_start"]) if self.use_data_segment else (None, None)

    def embed_standards(self, motion_types: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed each distinct standard of the batch once (no grad, eval mode) — not once per sample."""
        distinct = sorted(set(motion_types))
        rows = torch.tensor([self.standard_names.index(n) for n in distinct], device=self.standard_coords.device)
        which = torch.tensor([distinct.index(m) for m in motion_types], device=rows.device)
        lengths = self.standard_lengths[rows]
        coords = self.standard_coords[rows, : int(lengths.max())]
        mask = torch.arange(coords.shape[1], device=rows.device)[None, :] < lengths[:, None]
        return self.embed_reference(coords, mask), lengths, which

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ T5 input tokens [B,N,d_model], their mask [B,N], att_node [B,1,T,22], att_A [B,4,22,22]."""
        return self.encode_with_window_start(batch)[:4]

    def encode_with_window_start(self, batch: dict) -> tuple:
        """`encode`'s four tensors, then [B] the standard frame matched with each clip's first frame (BRANCH 1
        finetuning; None otherwise): which part of the standard the model compared the learner with."""
        coords, frame_mask = self.input_coordinates(batch["coordinates"]), batch["frame_mask"]
        emb, att_node, att_A = self.encoder(skeleton_features(coords), frame_mask)  # emb [B,T,22,C]
        start = None
        if self.branch == 1:
            if self.pretrain:  # the original's stand-in: the static first-frame pose, encoded like a standard
                standard_window = self.embed_reference(first_frame_coordinates(coords), frame_mask)
            else:  # the data's segment (learner frame a ↔ standard frame b) or the sliding-window search
                standard_emb, lengths, which = self.embed_standards(batch["motion_types"])
                start = window_start(emb, frame_mask, standard_emb, lengths, which, *self.data_segment(batch))
                standard_window = gather_window(standard_emb, lengths, which, start, emb.shape[1])  # [B,T,22,C]
            emb = fuse_with_standard(emb, standard_window, frame_mask, self.fusion)
        elif self.branch == 2:
            extra = batch["subtraction"][:, :, None, :].expand(-1, -1, emb.shape[2], -1)  # [B,T,22,Cs]
            emb = torch.cat([emb, extra.to(emb.dtype)], dim=-1)
        tokens, token_mask = self.projection(emb, frame_mask)
        if self.use_retrieval:
            tokens, token_mask = self.add_retrieved_text(tokens, token_mask, batch)
        return tokens, token_mask, att_node, att_A, start

    def motion_free_tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 input tokens [B,N,d_model] and mask of the batch's clips with their fused skeleton embedding set to
        zero (branch 1, FUSION DIFFERENCE: a learner who moved exactly as the standard); lengths and retrieved
        text stay the clip's. The reference input of guided decoding; no STA-GCN pass."""
        frame_mask = batch["frame_mask"]
        joints = self.encoder.A.shape[-1]
        weight = next(self.projection.parameters())
        emb = weight.new_zeros(*frame_mask.shape, joints, self.projection.in_dim)
        tokens, token_mask = self.projection(emb, frame_mask)
        if self.use_retrieval:
            tokens, token_mask = self.add_retrieved_text(tokens, token_mask, batch)
        return tokens, token_mask

    def add_retrieved_text(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                           batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack the embedded retrieved labels (T5's own word embeddings) after the motion tokens."""
        if "retrieved" not in batch:
            raise ValueError("RETRIEVAL.NEIGHBOURS > 0: the batch needs 'retrieved' texts (see dataloaders/retrieval.py)")
        enc = self.codec.tokenizer(batch["retrieved"], add_special_tokens=False, padding=True, return_tensors="pt")
        ids = enc.input_ids.to(tokens.device)
        text = self.t5.get_input_embeddings()(ids)  # [B,L,d_model]
        return pack_sequences(tokens, token_mask, text, enc.attention_mask.to(tokens.device).bool())

    def forward(self, batch: dict, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over non-pad label tokens (pads are -100, never in the loss); in training with
        MOTION_MARGIN > 0, plus the motion-margin loss (see `motion_margin_loss`); with WORD_BAG > 0, plus that
        weight times the word-bag loss (see `word_bag_loss`); with PERSON_ADVERSARY > 0, plus that weight times
        the person adversary's loss on T5's encoder output (models/adversary.py); with CONTRASTIVE > 0, plus that
        weight times the motion–caption contrastive loss (see `contrastive_loss`)."""
        tokens, token_mask, _, _ = self.encode(batch)
        decoder_inputs = self.noisy_decoder_inputs(labels) if self.training and self.word_dropout > 0 else None
        if self.training and self.motion_margin > 0 and len(labels) > 1:
            return self.motion_margin_loss(tokens, token_mask, labels, decoder_inputs, batch["video_names"])
        attention_mask = token_mask.long()
        encoded = self.t5.encoder(inputs_embeds=tokens, attention_mask=attention_mask)
        loss = self.t5(encoder_outputs=encoded, attention_mask=attention_mask, labels=labels,
                       decoder_input_ids=decoder_inputs).loss
        if self.training and self.word_bag is not None:
            loss = loss + self.word_bag_weight * self.word_bag_loss(encoded.last_hidden_state, token_mask, labels)
        if self.training and self.person_adversary is not None:
            persons = [person_of(name) for name in batch["video_names"]]
            loss = loss + self.person_adversary_weight * self.person_adversary.loss(
                encoded.last_hidden_state, token_mask, persons)
        if self.training and self.contrastive is not None:
            loss = loss + self.contrastive_weight * self.contrastive_loss(encoded.last_hidden_state, token_mask, labels)
        return loss

    def contrastive_loss(self, encoded: torch.Tensor, token_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """models/contrastive.py's loss between T5's encoder output over the clips' tokens [B,N,d] and T5's
        encoder run on each clip's caption (its label tokens after the prompt, eos left out)."""
        words = self.caption_words(labels)
        ids = labels.masked_fill(~words, self.codec.tokenizer.pad_token_id)
        caption = self.t5.encoder(input_ids=ids, attention_mask=words.long()).last_hidden_state
        return self.contrastive.loss(encoded, token_mask, caption, words)

    def caption_words(self, labels: torch.Tensor) -> torch.Tensor:
        """[B,L] bool: the caption's own tokens in `labels` — not the prompt, eos or padding."""
        words = labels != -100
        words[:, : len(self.codec.prompt_ids)] = False
        return words & (labels != self.codec.tokenizer.eos_token_id)

    def word_bag_loss(self, encoded: torch.Tensor, token_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy between the caption's word distribution (its token counts after the prompt, eos and
        padding left out, normalised) and a softmax over the vocabulary read from the mean of T5's encoder
        output over the clip's tokens [B,N,d]; mean over samples.

        Why: the decoder gains little likelihood from the motion on small, noisy caption sets and learns to
        write from its own context; this asks the representation it cross-attends to for the caption's
        content directly, with no decoder in between."""
        log_probs = F.log_softmax(self.word_bag(mean_over_tokens(encoded, token_mask)).float(), dim=-1)  # [B,V]
        words = self.caption_words(labels)
        counts = torch.zeros_like(log_probs).scatter_add_(1, labels.clamp(min=0), words.float())
        target = counts / counts.sum(1, keepdim=True).clamp(min=1)
        return -(target * log_probs).sum(1).mean()

    def motion_margin_loss(self, tokens: torch.Tensor, token_mask: torch.Tensor, labels: torch.Tensor,
                           decoder_inputs: Optional[torch.Tensor], names: list[str]) -> torch.Tensor:
        """Cross-entropy + mean over samples of max(0, MOTION_MARGIN − (nll(caption | another clip's motion) −
        nll(caption | its own motion))), nll = mean per caption token, the other clip as in `other_clip_index`.

        Why: trained on likelihood alone the decoder learns the captions' language first and reads its
        input last; on small, noisy caption sets it never gets there (the loss moves < 0.002 nats per token
        when motions are swapped, even on training clips). The margin rewards the motion-dependent part
        directly. One T5 pass over the 2B (motion, caption) pairs; the encoder runs once."""
        other, distinct = other_clip_index(names, labels.device)
        loss, own, swapped = self.paired_caption_nll(tokens, token_mask, labels, other, decoder_inputs)
        hinge = (self.motion_margin - (swapped - own)).clamp(min=0) * distinct
        return loss + hinge.sum() / distinct.sum().clamp(min=1)

    def paired_caption_nll(self, tokens: torch.Tensor, token_mask: torch.Tensor, labels: torch.Tensor,
                           other: torch.Tensor, decoder_inputs: Optional[torch.Tensor] = None,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T5's loss on the own motions, per-sample caption nll under the own motion [B], and under the motion of
        sample `other[i]` [B]), from one T5 pass over both pairings (see `caption_nll`)."""
        B = len(labels)
        if decoder_inputs is None:
            decoder_inputs = self.t5.prepare_decoder_input_ids_from_labels(labels=labels)
        token_nll, per_sample = self.caption_nll(torch.cat([tokens, tokens[other]]),
                                                 torch.cat([token_mask, token_mask[other]]),
                                                 labels.repeat(2, 1), decoder_inputs.repeat(2, 1))
        loss = token_nll[:B][labels != -100].mean()  # T5's own loss: the mean over the batch's label tokens
        return loss, per_sample[:B], per_sample[B:]

    def caption_nll(self, tokens: torch.Tensor, token_mask: torch.Tensor, labels: torch.Tensor,
                    decoder_inputs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(nll of every label token [B,L], 0 at pads; mean nll of each row's caption tokens [B]). The prompt tokens
        are left out of the per-row mean: they are the same whatever the motion."""
        if decoder_inputs is None:
            decoder_inputs = self.t5.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.t5(inputs_embeds=tokens, attention_mask=token_mask.long(),
                         decoder_input_ids=decoder_inputs).logits.float()
        token_nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B,L]
        caption = labels != -100
        caption[:, : len(self.codec.prompt_ids)] = False
        return token_nll, (token_nll * caption).sum(1) / caption.sum(1).clamp(min=1)

    def noisy_decoder_inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """The teacher-forced decoder inputs (labels shifted right after the start token, pads as <pad>) with
        each caption token replaced by <unk> with probability WORD_DROPOUT; the start token and prompt stay."""
        tok = self.codec.tokenizer
        inputs = self.t5.prepare_decoder_input_ids_from_labels(labels=labels)  # T5's own shift right
        caption = torch.arange(inputs.shape[1], device=inputs.device) > len(self.codec.prompt_ids)
        drop = (torch.rand(inputs.shape, device=inputs.device) < self.word_dropout) & caption & (inputs != tok.pad_token_id)
        return inputs.masked_fill(drop, tok.unk_token_id)

    @torch.no_grad()
    def cross_attention(self, batch: dict, captions: list[str]) -> tuple:
        """(label ids [B, L] (prompt + caption + eos, -100 padding), the decoder's attention over T5's input
        tokens while writing each of them [B, L, N], the mean over layers and heads, the standard window's
        start [B] or None as `encode_with_window_start` gives it). Teacher-forced on `captions`: for the
        model's own greedy captions it is the attention generation used."""
        tokens, token_mask, _, _, start = self.encode_with_window_start(batch)
        labels = self.codec.encode_targets(captions).to(tokens.device)
        fast = self.t5.config._attn_implementation  # SDPA returns no attention weights: eager for this pass
        self.t5.set_attn_implementation("eager")
        try:
            out = self.t5(inputs_embeds=tokens, attention_mask=token_mask.long(), labels=labels, output_attentions=True)
        finally:
            self.t5.set_attn_implementation(fast)
        return labels, torch.stack(out.cross_attentions).float().mean(dim=(0, 2)), start

    @torch.no_grad()
    def generate(self, batch: dict,
                 gen: Optional[Generation] = None) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Batched decoding (default: the config's settings); the prompt is the decoder prefix and is stripped
        from the captions. The motion tokens stay float: casting them to ints was a defect of the original."""
        gen = gen or self.config.generation
        tokens, token_mask, att_node, att_A = self.encode(batch)
        prefix = self.codec.decoder_prefix(tokens.shape[0], self.t5.config.decoder_start_token_id)
        processors = [self.reference_guidance(batch, gen.guidance)] if gen.guidance > 0 else []
        out = self.t5.generate(
            inputs_embeds=tokens, attention_mask=token_mask.long(), decoder_input_ids=prefix.to(tokens.device),
            max_new_tokens=gen.max_length, num_beams=gen.num_beams, repetition_penalty=gen.repetition_penalty,
            length_penalty=gen.length_penalty, do_sample=False, early_stopping=gen.num_beams > 1,
            logits_processor=processors,
        )
        return self.codec.decode(out), att_node, att_A

    def reference_guidance(self, batch: dict, weight: float) -> ReferenceGuidance:
        """The guidance processor of `generate`: T5's encoder output for the batch's motion-free inputs."""
        tokens, token_mask = self.motion_free_tokens(batch)
        states = self.t5.encoder(inputs_embeds=tokens, attention_mask=token_mask.long()).last_hidden_state
        return ReferenceGuidance(self.t5, states, token_mask, weight)
