"""How fast the video tower alone learns an attribute of the first event from direct labels.

    python -m tools.research.learnability --target motion --frames 12 --steps 600 --lr 1e-3
    python -m tools.research.learnability --target motion --frames 3
    python -m tools.research.learnability --target shape --frames 1 --radius 0.26,0.30 --travel 0.40
    python -m tools.research.learnability --target motion --frames 12 --heads 4   # the tiny tower before 8 heads

The tiny variant's video tower (random init, time attention as the trainer initialises it) with a linear head on
the projected CLS is trained with AdamW (warmup + cosine), at mask ratio 0, on batches of training-split
transcribed videos. It classifies the first event's shape, colour or motion (4 classes). The input is:
- `--frames 1`: the middle frame of the first clip;
- `--frames 3`: the 3 frames of the first clip;
- `--frames 12`: the whole video, where the tower must also find which frames belong to that event.

Accuracy on 512 test-split videos is printed 3 times during the run and written as JSON (`--out`). This is
a bound on what the pretraining objectives can teach the tower in the same number of steps.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import dataclasses
import json
import time

import numpy as np

FRAMES = {1: slice(1, 2), 3: slice(0, 3), 12: slice(0, 12)}


def first_event_inputs(batch: dict, target: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [B, frames, H, W, 3], labels [B]) from a 12-frame transcribed batch."""
    return batch["frames"][:, FRAMES[frames]], batch["labels"][f"first_{target}"]


def run(target: str, frames: int, steps: int, lr: float, batch: int, radius, travel: float, seed: int = 0,
        heads: int | None = None):
    import flax.linen as nn
    import jax
    import optax

    from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus
    from tvts.models.inputs import normalize
    from tvts.models.tvtsv2 import init_time_attention
    from tvts.models.variants import decode_variant
    from tvts.models.video_vit import VideoEncoder

    variant = decode_variant("tiny")
    video_cfg = variant.video if heads is None else dataclasses.replace(variant.video, heads=heads)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            tokens = VideoEncoder(video_cfg, variant.joint_dim, variant.act, temporal_init_std=1.0, name="video")(
                x, None)
            return nn.Dense(4)(tokens[:, 0])

    cfg = dataclasses.replace(SyntheticConfig(second_change_prob=1.0), radius=tuple(radius), travel=travel)
    train, test = SyntheticCorpus(cfg, "train"), SyntheticCorpus(cfg, "test")
    model = Classifier()

    def get(corpus, start, n, is_train):
        return first_event_inputs(corpus.transcribed_batch(range(start, start + n), train=is_train), target, frames)

    params = model.init(jax.random.key(seed), normalize(get(train, 0, 2, True)[0]))["params"]
    params = {**params, "video": init_time_attention({"video": params["video"]}, "learnable")["video"]}  # as trained
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(30, steps // 10), steps), b2=0.98,
                     weight_decay=0.05)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, normalize(x))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    predict = jax.jit(lambda p, x: model.apply({"params": p}, normalize(x)).argmax(-1))
    test_x, test_y = get(test, 0, 512, False)
    history, start = [], time.time()
    for i in range(steps):
        params, opt, loss = step(params, opt, *get(train, batch * i, batch, True))
        if (i + 1) % max(1, steps // 3) == 0 or i + 1 == steps:
            acc = float((np.asarray(predict(params, test_x)) == test_y).mean())
            history.append({"step": i + 1, "loss": float(loss), "test_accuracy": acc})
            print(f"step {i + 1}: loss {float(loss):.3f}, test accuracy {acc:.3f} ({time.time() - start:.0f} s)",
                  flush=True)
    base = float(np.bincount(test_y).max() / len(test_y))
    return {"target": target, "frames": frames, "steps": steps, "lr": lr, "batch": batch, "heads": video_cfg.heads,
            "seed": seed,
            "radius": list(radius), "travel": travel, "base_rate": base, "history": history}


def main():
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("shape", "colour", "motion"), default="motion")
    parser.add_argument("--frames", type=int, choices=sorted(FRAMES), default=12)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--radius", default="0.16,0.22", help="object radius range, fraction of the frame")
    parser.add_argument("--travel", type=float, default=0.42)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
    parser.add_argument("--heads", type=int, default=None, help="video attention heads (default: the tiny variant's)")
    parser.add_argument("--out", default="", help="JSON file for the result")
    args = parser.parse_args()
    result = run(args.target, args.frames, args.steps, args.lr, args.batch,
                 [float(r) for r in args.radius.split(",")], args.travel, args.seed, args.heads)
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
