"""Procedural SMPL-22 motions with captions that are a function of the motion, in the released format.

    python -m dataloaders.synthetic --out DIR [--seed S]

Writes pretrain_train.pkl (300) / pretrain_test.pkl (60): everyday motions with descriptions;
train.pkl (200) / test.pkl (50): boxing Jab/Cross with 1-3 deviations from the standard and one coaching
instruction per deviation; standard.pkl: the clean Jab and Cross. Coordinates are metres, y up, the
person faces +z, SMPL left joints at +x. Every attribute in a caption is clearly visible in the motion
(speed = clip length and velocity, side, height/depth, count), so a model can learn the mapping.
Same seed -> byte-identical files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dataloaders.formats import dump_clips

# Standing rest pose (metres); limbs (knees, ankles, feet, elbows, wrists) are placed by IK below.
REST = np.zeros((22, 3))
REST[[0, 1, 2, 3, 6, 9, 12, 13, 14, 15, 16, 17]] = [
    (0, .93, 0), (.07, .84, 0), (-.07, .84, 0), (0, 1.04, -.01), (0, 1.17, 0), (0, 1.23, .02),
    (0, 1.45, 0), (.07, 1.37, 0), (-.07, 1.37, 0), (0, 1.55, .03), (.17, 1.39, -.01), (-.17, 1.39, -.01)]
TORSO = [3, 6, 9, 12, 13, 14, 15, 16, 17]  # rigid with the upper body, turned by the torso yaw
LEG, ARM = 0.39, 0.26  # segment lengths (thigh = shin, upper arm = forearm)
ANKLES = np.array([(.08, .07, -.02), (-.08, .07, -.02)])  # left, right
STANCE = np.array([(.12, .07, .18), (-.12, .07, -.22)])  # orthodox boxing stance: left foot forward
FOOT = np.array([0, -.05, .12])
ARM_HINT = np.array([0, -1, -.3])  # elbows bend down and back unless told otherwise


def _yaw(v, ang):
    """Rotate vectors v [..., 3] about +y by ang (broadcast [...]); +ang turns the right side forward."""
    c, s = np.cos(ang)[..., None], np.sin(ang)[..., None]
    x, y, z = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return np.concatenate([x * c + z * s, y * np.ones_like(c), -x * s + z * c], axis=-1)


def _ik(a, c, length, hint):
    """Two equal segments from a towards c [T,3]: returns (middle joint, reachable end), bent toward hint."""
    d = c - a
    n = np.linalg.norm(d, axis=-1, keepdims=True)
    reach = np.minimum(n, 2 * length * 0.999)
    u = d / np.maximum(n, 1e-9)
    c = a + u * reach
    hint = np.broadcast_to(hint, d.shape)
    perp = hint - (hint * u).sum(-1, keepdims=True) * u
    perp /= np.maximum(np.linalg.norm(perp, axis=-1, keepdims=True), 1e-9)
    return a + u * reach / 2 + perp * np.sqrt(length ** 2 - (reach / 2) ** 2), c


def _bump(t, t0, dur):
    """0 -> 1 -> 0 over [t0, t0+dur], smooth (sin^2)."""
    return np.sin(np.pi * np.clip((t - t0) / dur, 0, 1)) ** 2


def _ramp(t, t0, dur):
    x = np.clip((t - t0) / dur, 0, 1)
    return x * x * (3 - 2 * x)


def _pose(pelvis, yaw, wrists, hints, ankles, scale):
    """Joint positions [T, 22, 3] from pelvis [T,3], torso yaw [T], wrist targets relative to the shoulders
    in the torso frame (2 x [T,3], left/right), elbow hints (2 x [T,3] or [3]), world ankles (2 x [T,3])."""
    T = len(pelvis)
    J = np.zeros((T, 22, 3))
    R = REST * scale
    J[:, 0] = pelvis
    J[:, TORSO] = pelvis[:, None] + _yaw((R[TORSO] - R[0])[None], yaw[:, None])
    J[:, [1, 2]] = pelvis[:, None] + _yaw((R[[1, 2]] - R[0])[None], 0.5 * yaw[:, None])  # hips turn half
    for side, (hip, knee, ankle, foot) in enumerate([(1, 4, 7, 10), (2, 5, 8, 11)]):
        J[:, knee], J[:, ankle] = _ik(J[:, hip], ankles[side], LEG * scale, np.array([0, 0, 1.0]))
        J[:, foot] = J[:, ankle] + FOOT * scale
    for side, (sh, el, wr) in enumerate([(16, 18, 20), (17, 19, 21)]):
        target = J[:, sh] + _yaw(wrists[side] * scale, yaw)
        hint = _yaw(np.broadcast_to(hints[side], (T, 3)), yaw)
        J[:, el], J[:, wr] = _ik(J[:, sh], target, ARM * scale, hint)
    return J


def _finish(J, rng, yaw=0.0, shift=(0, 0), noise=0.004):
    """Whole-body turn about the pelvis, floor shift, sensor noise -> float32 [T, 66]."""
    p0 = J[:1, :1].copy()
    J = _yaw(J - p0, np.full(J.shape[:2], yaw)) + p0 + np.array([shift[0], 0, shift[1]])
    return (J.reshape(len(J), 66) + rng.normal(0, noise, (len(J), 66))).astype(np.float32)


def _lerp(a, b, w):
    return a + (b - a) * w[:, None]


# ----------------------------------------------------------------------------- pretraining descriptions

ACTIONS = ("squat", "raise", "punch", "step")


def _pretrain_clip(rng):
    action = ACTIONS[rng.integers(4)]
    slow, side, big = bool(rng.integers(2)), int(rng.integers(2)), bool(rng.integers(2))  # side 0 left
    side_name, sx = ("left", 1.0) if side == 0 else ("right", -1.0)
    speed = "slowly" if slow else "quickly"
    T = int(rng.integers(56, 81) if slow else rng.integers(32, 49))
    t = np.arange(T, dtype=float)
    dur = T * rng.uniform(0.65, 0.85) if slow else rng.uniform(10, 16)
    t0 = rng.uniform(2, T - dur - 2)
    scale, amp = rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.1)
    pelvis = np.tile(REST[0] * scale, (T, 1))
    ankles = [np.tile(a * scale, (T, 1)) for a in ANKLES]
    down = [np.array([.02 * s, -.5, .03]) for s in (1, -1)]
    wrists = [np.tile(d, (T, 1)) for d in down]
    hints = [ARM_HINT, ARM_HINT]
    if action == "squat":
        p = _bump(t, t0, dur)
        pelvis = pelvis + np.outer(p, [0, -(0.4 if big else 0.18) * amp * scale, -0.08 * scale])
        wrists = [_lerp(w, np.array([0, 0, .45]), 0.8 * p) for w in wrists]  # arms forward for balance
        text = f"a person {speed} squats {'all the way down' if big else 'halfway down'}"
    elif action == "raise":
        top = np.array([.05 * sx, .5, .05]) if big else np.array([.03 * sx, 0, .5])
        wrists[side] = _lerp(wrists[side], top * amp, _bump(t, t0, dur))
        text = f"a person {speed} raises the {side_name} arm {'above the head' if big else 'to shoulder height'}"
    elif action == "punch":
        guard = [np.array([-.10 * s, .06, .22]) for s in (1, -1)]
        wrists = [np.tile(g, (T, 1)) for g in guard]
        p = _bump(t, t0, dur / 2) + _bump(t, t0 + dur / 2, dur / 2) if big else _bump(t, t0, dur)
        wrists[side] = _lerp(wrists[side], np.array([-.06 * sx, .05, .5]), p)
        pace = "slow" if slow else "fast"
        text = (f"a person throws two {pace} punches with the {side_name} hand" if big
                else f"a person throws a {pace} punch with the {side_name} hand")
    else:  # step forward (big) or backward with one foot; the pelvis follows half way
        sign = 1.0 if big else -1.0
        r = _ramp(t, t0, dur)
        ankles[side] = ankles[side] + np.outer(r, [0, 0, .35 * sign * amp * scale])
        ankles[side][:, 1] += 0.08 * scale * _bump(t, t0, dur)
        pelvis = pelvis + np.outer(r, [0, 0, .17 * sign * amp * scale])
        text = f"a person {speed} steps {'forward' if big else 'backward'} with the {side_name} foot"
    J = _pose(pelvis, np.zeros(T), wrists, hints, ankles, scale)
    coords = _finish(J, rng, yaw=rng.uniform(-.15, .15), shift=rng.uniform(-.3, .3, 2))
    return coords, text


# ----------------------------------------------------------------------------- boxing (finetuning)

DEVIATIONS = ("guard_drop", "short", "flare", "slow", "no_rotation")  # no_rotation: Cross only


def instruction(dev: str, motion_type: str, variant: int = 0) -> str:
    """Coaching instruction for one deviation: variant 0 is the clip's label, variants 1-3 paraphrases
    (its `augmented_labels`). Deterministic."""
    punch = motion_type.lower()
    guard = "rear" if motion_type == "Jab" else "lead"
    phrasings = {
        "guard_drop": (f"Your {guard} hand drops, keep it at the chin.",
                       f"Keep your {guard} hand up by your chin, it drops during the {punch}.",
                       f"Don't let your {guard} hand fall while you throw the {punch}.",
                       f"Your {guard} hand should stay at the chin."),
        "short": (f"Extend your arm fully on the {punch}.",
                  f"Your {punch} falls short, reach full extension.",
                  f"Reach further, your arm stays bent on the {punch}.",
                  f"Straighten the arm completely when you throw the {punch}."),
        "flare": (f"Keep your elbow in, it flares out on the {punch}.",
                  f"Your elbow flares out on the {punch}, keep it tucked in.",
                  f"Tuck your elbow, don't swing it wide on the {punch}.",
                  f"The elbow drifts outward on the {punch}, keep it close."),
        "slow": (f"Throw the {punch} faster, it is too slow.",
                 f"Your {punch} is too slow, snap it out faster.",
                 f"Speed up the {punch}, it takes too long.",
                 f"Make the {punch} quicker."),
        "no_rotation": ("Rotate your hips into the cross.",
                        "Turn your hips more when you throw the cross.",
                        "Your hips stay square, drive them through the cross.",
                        "Put your hips into the cross."),
    }
    return phrasings[dev][variant]


def _boxing(T, t0, dur, motion_type, devs, scale=1.0):
    """Joints [T,22,3] of one Jab/Cross from orthodox guard, with the given deviations."""
    t = np.arange(T, dtype=float)
    p = _bump(t, t0, dur)
    arm = 0 if motion_type == "Jab" else 1  # punching arm: lead (left) for the jab, rear (right) for the cross
    sx = 1.0 if arm == 0 else -1.0
    guard = [np.tile([-.10 * s, .06, .22], (T, 1)) for s in (1, -1)]
    wrists = list(guard)
    full = np.array([-.06 * sx, .05, .5])  # straight arm at shoulder height
    ext = guard[arm][0] + (full - guard[arm][0]) * (0.55 if "short" in devs else 1.0)
    wrists[arm] = _lerp(guard[arm], ext, p)
    if "guard_drop" in devs:  # the other hand leaves the chin while punching
        wrists[1 - arm] = wrists[1 - arm] + np.outer(p, [0, -.28, -.12])
    hints = [ARM_HINT, ARM_HINT]
    if "flare" in devs:  # elbow swings out to the side instead of staying down
        hints[arm] = _lerp(np.tile(ARM_HINT, (T, 1)), np.array([1.5 * sx, -.2, 0]), p)
    yaw = np.full(T, -0.25)  # stance: lead shoulder forward
    if motion_type == "Cross":
        yaw = yaw + (0.1 if "no_rotation" in devs else 0.6) * p
    pelvis = np.tile(REST[0] * scale - [0, .05 * scale, 0], (T, 1))  # knees bent
    ankles = [np.tile(a * scale, (T, 1)) for a in STANCE]
    if motion_type == "Cross" and "no_rotation" not in devs:
        ankles[1][:, 1] += 0.05 * scale * p  # rear heel lifts as the hips turn
    return _pose(pelvis, yaw, wrists, hints, ankles, scale)


STANDARD_TIMING = {"Jab": (56, 22, 12), "Cross": (48, 17, 14)}  # frames, punch start, punch duration


def _standard(motion_type, rng):
    T, t0, dur = STANDARD_TIMING[motion_type]
    return _finish(_boxing(T, t0, dur, motion_type, ()), rng, noise=0.001)


def _finetune_clip(rng, name):
    motion_type = ("Jab", "Cross")[rng.integers(2)]
    allowed = DEVIATIONS if motion_type == "Cross" else DEVIATIONS[:4]
    # One deviation per clip and one label naming it: a constant caption then fits few clips, so a model
    # must read the motion to beat it (with several deviations per clip one caption fits most clips).
    devs = (allowed[int(rng.integers(len(allowed)))],)
    dur = (rng.uniform(28, 34) if "slow" in devs else rng.uniform(11, 15)) * (1.15 if motion_type == "Cross" else 1)
    T = int(rng.integers(max(32, int(dur) + 10), 81))
    t0 = rng.uniform(4, T - dur - 4)
    view = ("1", "2")[rng.integers(2)]
    J = _boxing(T, t0, dur, motion_type, devs, scale=rng.uniform(0.92, 1.08))
    coords = _finish(J, rng, yaw=(0.0 if view == "1" else 0.17) + rng.uniform(-.08, .08),
                     shift=rng.uniform(-.2, .2, 2))
    # Aligned segment: learner and standard windows that put the two punch peaks on the same frame.
    S, s0, sdur = STANDARD_TIMING[motion_type]
    d = int(round(s0 + sdur / 2)) - int(round(t0 + dur / 2))
    a, b = max(0, -d), min(T, S - d)
    entry = {
        "video_name": name, "motion_type": motion_type, "coordinates": torch.from_numpy(coords),
        "camera_view": view,
        "labels": [instruction(devs[0], motion_type)],
        "augmented_labels": [instruction(devs[0], motion_type, v) for v in (1, 2, 3)],
        "original_seq_len": T,
        "aligned_start_frame": a, "aligned_end_frame": b,
        "aligned_std_start_frame": a + d, "aligned_std_end_frame": b + d, "aligned_seq_len": b - a,
    }
    return entry


# ----------------------------------------------------------------------------- writing

def generate(out_dir, seed: int = 0) -> dict[str, Path]:
    """Write the five files into out_dir; returns {file stem: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}

    def pre(split, n):
        clips = []
        for i in range(n):
            coords, text = _pretrain_clip(rng)
            clips.append({"video_name": f"pre_{split}_{i:04d}", "coordinates": torch.from_numpy(coords),
                          "labels": [text]})
        return clips

    files["pretrain_train"], files["pretrain_test"] = pre("train", 300), pre("test", 60)
    files["train"] = [_finetune_clip(rng, f"train_{i:04d}") for i in range(200)]
    files["test"] = [_finetune_clip(rng, f"test_{i:04d}") for i in range(50)]
    files["standard"] = [{"video_name": m, "coordinates": torch.from_numpy(_standard(m, rng))}
                         for m in ("Jab", "Cross")]
    paths = {}
    for stem, clips in files.items():
        paths[stem] = out / f"{stem}.pkl"
        dump_clips(clips, paths[stem])
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dataloaders.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for path in generate(args.out, args.seed).values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
