"""Side-by-side held-out accuracy of the classifier architectures on a synthetic 32×32 RGB set.

Six shape classes (filled square, disc, triangle, plus, ring, hollow square) of random colour, position and
size (9–15 px; colour carries no class information) on a two-colour gradient background with pixel noise.
``plain``: dark background, bright shape, noise σ 0.05. ``clutter``: any colours, random distractor lines,
noise σ 0.08. Half the images are held out; the accuracy's 95% interval is Wilson's.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/compare_classifiers.py PER_CLASS EPOCHS BATCH ARCHS SET
    e.g. ... 600 15 64 digitnet,resnet20 plain     (one JSON line per architecture)
"""
import json
import math
import sys
import tempfile
import time

import numpy as np


def shape_mask(kind, size, rng):
    s = rng.integers(9, 16)  # shape size in px
    y0, x0 = rng.integers(1, size - s - 1, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cy, cx, r = y0 + s / 2, x0 + s / 2, s / 2
    if kind == 0:
        m = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
    elif kind == 1:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    elif kind == 2:
        m = (yy >= y0) & (yy < y0 + s) & (np.abs(xx - cx) <= (yy - y0) / 2)
    elif kind == 3:
        t = max(2, s // 4)
        m = (((np.abs(yy - cy) <= t / 2) & (np.abs(xx - cx) <= r)) | ((np.abs(xx - cx) <= t / 2) & (np.abs(yy - cy) <= r)))
    elif kind == 4:
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        m = (d <= r ** 2) & (d >= (r - 2.5) ** 2)
    else:
        m = (yy >= y0) & (yy < y0 + s) & (xx >= x0) & (xx < x0 + s)
        m &= ~((yy >= y0 + 2) & (yy < y0 + s - 2) & (xx >= x0 + 2) & (xx < x0 + s - 2))
    return m

def make(per_class, size=32, seed=0, clutter=True):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for kind in range(6):
        for _ in range(per_class):
            c1, c2 = (rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)) if clutter else (rng.uniform(0, 0.4, 3), rng.uniform(0, 0.4, 3))
            g = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
            img = c1 * (1 - g) + c2 * g
            img = np.broadcast_to(img, (size, size, 3)).copy()
            # distractor line
            a, b = rng.integers(0, size, 2)
            if clutter:
                img[a, :, :] = rng.uniform(0, 1, 3) if rng.random() < 0.5 else img[a, :, :]
                img[:, b, :] = rng.uniform(0, 1, 3) if rng.random() < 0.5 else img[:, b, :]
            colour = rng.uniform(0, 1, 3) if clutter else rng.uniform(0.6, 1, 3)
            img[shape_mask(kind, size, rng)] = colour
            img = np.clip(img + rng.normal(0, 0.08 if clutter else 0.05, img.shape), 0, 1)
            images.append(img); labels.append(kind)
    return (np.stack(images) * 255).round().astype(np.uint8), np.array(labels)

def wilson(k, n, z=1.959963984540054):
    p = k / n; d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d; h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h

if __name__ == "__main__":
    from unlearnctl.data import load_data
    from unlearnctl.metrics.classifier import train_classifier
    per_class, epochs, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    archs = sys.argv[4].split(",")
    clutter = sys.argv[5] == "clutter"
    images, labels = make(per_class, clutter=clutter)
    np.savez(f"{tempfile.gettempdir()}/compare_classifiers.npz", images=images, labels=labels,
             class_names=np.array(["square", "disc", "triangle", "plus", "ring", "frame"]))
    split = load_data(f"npz:{tempfile.gettempdir()}/compare_classifiers.npz", heldout_fraction=0.5)
    n = len(split.heldout)
    for arch in archs:
        t = time.time()
        c = train_classifier(split, arch=arch, epochs=epochs, batch_size=batch, seed=0)
        k = int(round(c.heldout_accuracy * n))
        lo, hi = wilson(k, n)
        print(json.dumps({"set": sys.argv[5], "arch": arch, "train": len(split.train), "heldout": n, "epochs": epochs, "batch": batch,
                          "steps": epochs * max(1, len(split.train) // batch), "correct": k, "accuracy": k / n,
                          "ci95": [round(lo, 4), round(hi, 4)], "train_s": round(time.time() - t, 1)}), flush=True)
