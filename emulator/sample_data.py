"""Generate training data for the emulated experiment: a binary label that depends on a few features.

``label_noise`` flips that share of labels at random, so a noisier dataset trains a worse model (lower
AUC). Nothing is downloaded. ``python -m emulator.sample_data --rows 800 --noise 0.45 > bad.csv``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

FEATURES = ("age", "income", "tenure", "visits", "balance")
_TRUE_WEIGHTS = np.array([0.8, -1.2, 1.5, 0.6, -0.4])


def generate(rows: int = 600, *, seed: int = 7, label_noise: float = 0.05) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    p = 1.0 / (1.0 + np.exp(-(x @ _TRUE_WEIGHTS - 0.2)))
    y = (rng.random(rows) < p).astype(int)
    flip = rng.random(rows) < label_noise
    y = np.where(flip, 1 - y, y)
    lines = [",".join((*FEATURES, "label"))]
    lines += [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in zip(x, y, strict=False)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, default=0.05, help="share of labels flipped at random (0..0.5)")
    args = parser.parse_args(argv)
    sys.stdout.write(generate(args.rows, seed=args.seed, label_noise=args.noise))


if __name__ == "__main__":
    main()
