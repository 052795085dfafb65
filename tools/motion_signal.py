"""Does the decoder read the motion? Two measurements on a trained checkpoint, without generating:

    .venv/bin/python tools/motion_signal.py --exp results/<exp> [--checkpoint latest|best|PATH]
        [--data F ...] [--clips N] [--repeats R] [--json OUT]

1. *Motion gap*, per file (default: the config's training and test files): the mean teacher-forced NLL per
   caption token of every (clip, label) pair under the clip's own motion, and how much it rises with the
   motions swapped within the technique and within person + technique (metrics.motion_control's swaps). A
   decoder that ignores its input has a gap of 0 — on the training clips too.
2. *Signal and training noise* at the decoder's input (the T5 encoder's output), on the first N training
   clips: the variance between clips in eval mode (the signal), against the variance that training mode
   adds around each clip's eval-mode output (dropout, batch statistics), in batches of DATA.BATCH_SIZE clips
   drawn R times — for everything at once and for each source alone. Noise far above the signal means the
   decoder is trained on an input whose clip-specific part it cannot see.
3. *What the decoder input tells apart*, per file: leave-one-out nearest-neighbour accuracy of the technique
   and of the person (the part of video_name before the first `_`) on the clips' eval-mode decoder inputs,
   centred over the file's clips, by cosine; beside it the rate of each file's most common class. The person
   accuracy is what a person adversary (TRANSFORMATION.PERSON_ADVERSARY) should bring down.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from common.errors import exits_on_user_error  # noqa: E402

NOISE_SOURCES = {  # source → which modules run in training mode
    "all": lambda name, m: True,
    "batch statistics": lambda name, m: isinstance(m, nn.modules.batchnorm._BatchNorm),
    "STA-GCN dropout": lambda name, m: isinstance(m, nn.Dropout) and name.startswith("encoder."),
    "projection dropout": lambda name, m: isinstance(m, nn.Dropout) and name.startswith("projection."),
    "T5 dropout": lambda name, m: name.startswith("t5."),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exp", required=True, help="experiment folder (or its config.yaml)")
    p.add_argument("--checkpoint", default="latest", help="latest | best | PATH")
    p.add_argument("--data", nargs="*", help="labelled clip files (default: DATA.TRAIN and DATA.TEST)")
    p.add_argument("--clips", type=int, default=48, help="training clips for the noise measurement")
    p.add_argument("--repeats", type=int, default=5, help="training-mode passes per clip")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


@torch.no_grad()
def caption_nll(model, clips: list[dict], segment: str, max_label: int) -> torch.Tensor:
    """Mean NLL per caption token of each (clip, label) pair, in the dataset's order, eval mode."""
    from dataloaders.datasets import TrainDataset, collate

    out = []
    for batch in DataLoader(TrainDataset(clips, segment=segment), batch_size=64, collate_fn=collate):
        labels = model.codec.encode_targets(batch["texts"])[:, :max_label].contiguous()
        tokens, mask, _, _ = model.encode(batch)
        out.append(model.caption_nll(tokens, mask, labels)[1])
    return torch.cat(out)


def motion_gaps(model, clips: list[dict], segment: str, max_label: int) -> dict:
    from metrics.motion_control import GROUPINGS, swap_motion

    own = caption_nll(model, clips, segment, max_label)
    row = {"pairs": len(own), "nll_own_motion": float(own.mean())}
    for condition, group_of in GROUPINGS.items():
        swapped, _ = swap_motion(clips, group_of, seed=0)
        row[f"gap_{condition}"] = float((caption_nll(model, swapped, segment, max_label) - own).mean())
    return row


@torch.no_grad()
def decoder_input(model, clips: list[dict], segment: str, batch_size: int, seed: int) -> torch.Tensor:
    """[clips, 22·d_model] T5 encoder outputs, the clips drawn into batches in a seeded random order."""
    from dataloaders.datasets import EvalDataset, collate

    names = [c["video_name"] for c in clips]
    torch.manual_seed(seed)
    loader = DataLoader(EvalDataset(clips, segment=segment), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), collate_fn=collate)
    out = {}
    for batch in loader:
        tokens, mask, _, _ = model.encode(batch)
        enc = model.t5.encoder(inputs_embeds=tokens, attention_mask=mask.long()).last_hidden_state
        out.update(zip(batch["video_names"], (enc * mask[..., None]).flatten(1)))
    return torch.stack([out[n] for n in names])


def nearest_neighbour_accuracy(features: torch.Tensor, classes: list[str]) -> float:
    """Leave-one-out 1-NN accuracy of `classes` from `features` [N,D]: centred over the N rows (a shared offset
    would make every pair similar), cosine similarity, a row never its own neighbour."""
    x = features - features.mean(0)
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sim = x @ x.T
    sim.fill_diagonal_(float("-inf"))
    ids = {c: i for i, c in enumerate(sorted(set(classes)))}
    target = torch.tensor([ids[c] for c in classes])
    return float((target[sim.argmax(1)] == target).float().mean())


def separability(model, clips: list[dict], segment: str, batch_size: int) -> dict:
    """Nearest-neighbour accuracy of technique and person on the eval-mode decoder input, and each majority rate."""
    from collections import Counter

    from dataloaders.splits import person_of

    model.eval()
    features = decoder_input(model, clips, segment, batch_size, seed=0)
    out = {"clips": len(clips)}
    for what, classes in (("technique", [c.get("motion_type", "-") for c in clips]),
                          ("person", [person_of(c["video_name"]) for c in clips])):
        out[f"{what} 1-NN"] = nearest_neighbour_accuracy(features, classes)
        out[f"{what} majority"] = Counter(classes).most_common(1)[0][1] / len(classes)
    return out


def signal_and_noise(model, clips: list[dict], segment: str, batch_size: int, repeats: int) -> dict:
    """Between-clip variance of the eval-mode decoder input, and the training-mode variance around it."""
    state = {k: v.clone() for k, v in model.state_dict().items()}  # training mode moves BatchNorm statistics
    model.eval()
    reference = decoder_input(model, clips, segment, batch_size, seed=0)
    out = {"signal": float((reference - reference.mean(0)).pow(2).sum(1).mean()),
           "energy": float(reference.pow(2).sum(1).mean())}  # mean squared norm of a clip's output
    try:
        for source, runs_in_training in NOISE_SOURCES.items():
            for name, module in model.named_modules():
                module.train(bool(name) and runs_in_training(name, module) and not list(module.children()))
            draws = torch.stack([decoder_input(model, clips, segment, batch_size, seed=s) for s in range(repeats)])
            out[f"noise: {source}"] = float((draws - reference).pow(2).sum(2).mean())
            model.load_state_dict(state)
    finally:
        model.load_state_dict(state)
        model.eval()
    return out


@exits_on_user_error
def main(argv=None) -> int:
    a = parse_args(argv)
    from engine.config_loader import load_config
    from engine.prediction import default_device, load_inference_clips, load_standards_for
    from engine.weights import load_model, resolve_checkpoint
    from evaluate import config_path

    cfg = load_config(config_path(a.exp))
    standards = load_standards_for(cfg)
    model, state = load_model(cfg, resolve_checkpoint(cfg, a.checkpoint), default_device(), standards)
    model.to("cpu")
    max_label = len(model.codec.prompt_ids) + cfg.DATA.MAX_LABEL_TOKENS + 1
    files = a.data or [cfg.DATA.TRAIN, cfg.DATA.TEST]
    result = {"checkpoint_epoch": state.get("epoch"), "gaps": {}}
    print(f"epoch {state.get('epoch')}: teacher-forced NLL per caption token, and its rise with swapped motions")
    for f in files:
        clips, segment = load_inference_clips(cfg, cfg.path(f), standards)
        row = motion_gaps(model, clips, segment, max_label)
        result["gaps"][str(f)] = row
        print(f"  {f}: own motion {row['nll_own_motion']:.4f} over {row['pairs']} pairs; swapped within technique "
              f"{row['gap_swap_technique']:+.4f}, within person+technique {row['gap_swap_person_technique']:+.4f}")
    result["separability"] = {}
    print("what the decoder input tells apart (leave-one-out 1-NN, centred cosine; the majority rate beside it)")
    for f in files:
        clips, segment = load_inference_clips(cfg, cfg.path(f), standards)
        row = separability(model, clips, segment, cfg.DATA.EVAL_BATCH_SIZE)
        result["separability"][str(f)] = row
        print(f"  {f}: {row['clips']} clips; technique {row['technique 1-NN']:.1%} ({row['technique majority']:.1%}), "
              f"person {row['person 1-NN']:.1%} ({row['person majority']:.1%})")
    clips, segment = load_inference_clips(cfg, cfg.path(cfg.DATA.TRAIN), standards)
    noise = signal_and_noise(model, clips[: a.clips], segment, cfg.DATA.BATCH_SIZE, a.repeats)
    result["decoder_input"] = noise
    print(f"decoder input (T5 encoder output), {min(a.clips, len(clips))} training clips, batches of "
          f"{cfg.DATA.BATCH_SIZE}: between-clip variance {noise['signal']:.2f} (mean squared norm of a clip's "
          f"output {noise['energy']:.1f})")
    for k, v in noise.items():
        if k.startswith("noise"):
            print(f"  training {k:<20} {v:10.2f}  (signal / noise {noise['signal'] / max(v, 1e-12):.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
