"""Base-model quality on the embedded digits (issue 2's figures).

1. A `small` conditional model trained with default settings: share of samples that the domain classifier
   labels as the requested class (≥ 300 samples).
2. A base trained on digits + canary: share of ≥ 1,000 unconditional samples that reproduce the canary
   (within the calibrated distance), next to the canary's share of the training set.

    python bench/base_quality.py [--class-model A.safetensors] [--canary-model B.safetensors]

Without a model argument the model is trained here with `unlearnctl train` defaults (~5 min each on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import torch

from unlearnctl.checkpoint import load_checkpoint
from unlearnctl.data import ForgetSpec, load_recorded_data, resolve_forget
from unlearnctl.metrics.classifier import load_or_train_classifier
from unlearnctl.metrics.forget import data_forget_rate, data_forget_threshold, retain_accuracy
from unlearnctl.sampling import generate
from unlearnctl.training import train_model
from unlearnctl.data import load_data


def class_accuracy(model, per_class: int) -> None:
    checkpoint = load_checkpoint(model) if model else train_model(load_data("digits"), conditional=True)
    split = load_recorded_data(checkpoint.data)
    classifier = load_or_train_classifier(split)
    started = time.perf_counter()
    images, labels = generate(checkpoint, per_class=per_class, seed=1)
    accuracy = retain_accuracy(images, labels, classifier)
    print(f"conditional small model: {len(images)} samples ({per_class}/class, DDIM 50, guidance 1), "
          f"classified as the requested class: {accuracy:.3f}  [classifier held-out acc {classifier.heldout_accuracy:.3f}; "
          f"sampling {time.perf_counter() - started:.1f} s]")


def canary_share(model, samples: int) -> None:
    checkpoint = load_checkpoint(model) if model else train_model(load_data("digits+canary"), conditional=False)
    split = load_recorded_data(checkpoint.data)
    forget = resolve_forget(ForgetSpec(canary=True), split)
    threshold = data_forget_threshold(forget.forget.images, forget.retain.images)
    images, _ = generate(checkpoint, num_images=samples, seed=1)
    rate = data_forget_rate(images, forget.forget.images, threshold)
    share = len(forget.forget) / len(split.train)
    print(f"digits+canary base: {samples} samples, canary reproduced in {rate:.4f} "
          f"(training-set share {share:.4f}; L2 threshold {threshold:.3f} in [-1,1] pixel units)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--class-model")
    parser.add_argument("--canary-model")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--canary-samples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    class_accuracy(args.class_model, args.per_class)
    canary_share(args.canary_model, args.canary_samples)
