"""The tiny text-to-image autoencoder on the embedded digits (issue 14): training time, held-out reconstruction.

Trains :func:`unlearnctl.autoencoder.train_autoencoder` with its defaults on the digits' train split and
measures, on the held-out split (non-members, never trained on):

* reconstruction MSE in [-1, 1] units (mean over images of each image's MSE, 95% t-interval), and untrained;
* the domain classifier's accuracy on the held-out originals and on their reconstructions (Wilson 95%),
  so a lost digit identity would show;
* the latent std behind ``scaling_factor`` and the training time with the load average.

    python bench/autoencoder.py [--steps N] [--channels 16,32] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from unlearnctl.autoencoder import reconstruction_errors, tiny_autoencoder_config, train_autoencoder
from unlearnctl.data import load_data
from unlearnctl.metrics.classifier import load_or_train_classifier
from unlearnctl.metrics.intervals import wilson


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--channels", default="16,32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = load_data("digits")
    channels = tuple(int(c) for c in args.channels.split(","))
    load_before = os.getloadavg()
    fit = train_autoencoder(split.train.images, tiny_autoencoder_config(1, block_out_channels=channels),
                            steps=args.steps, batch_size=args.batch_size, seed=args.seed, heldout=split.heldout.images)
    load_after = os.getloadavg()
    classifier = load_or_train_classifier(split)
    heldout = split.heldout
    with torch.no_grad():
        model = fit.model
        reconstructed = model.decode(model.encode(heldout.images).latent_dist.mode()).sample.clamp(-1, 1)
    correct_original = int((classifier.predict(heldout.images) == heldout.labels).sum())
    correct_reconstructed = int((classifier.predict(reconstructed) == heldout.labels).sum())
    n = len(heldout)
    result = {
        "channels": list(channels), "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "train_seconds": round(fit.seconds, 1), "seconds_per_step": round(fit.seconds / args.steps, 3),
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "torch_threads": torch.get_num_threads(),
        "heldout_mse": fit.heldout_mse, "heldout_mse_ci95": list(fit.heldout_mse_ci95), "heldout_mse_n": fit.num_heldout,
        "untrained_heldout_mse": fit.untrained_mse,
        "heldout_mse_clamped": float(reconstruction_errors(model, heldout.images).mean()),
        "latent_std": fit.latent_std, "scaling_factor": model.config.scaling_factor,
        "classifier_accuracy_original": correct_original / n,
        "classifier_accuracy_original_ci95": list(wilson(correct_original, n)),
        "classifier_accuracy_reconstructed": correct_reconstructed / n,
        "classifier_accuracy_reconstructed_ci95": list(wilson(correct_reconstructed, n)),
        "classifier_n": n,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
