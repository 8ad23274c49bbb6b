"""unlearnctl — make diffusion models forget, prove it, and compare the results.

The Python API mirrors the CLI; every step passes :class:`~unlearnctl.checkpoint.Checkpoint` objects
that save to self-describing ``.safetensors`` files::

    from unlearnctl.data import load_data
    from unlearnctl.training import TrainConfig, train_model
    from unlearnctl.checkpoint import save_checkpoint

    split = load_data("digits")
    base = train_model(split, conditional=True, config=TrainConfig(steps=3000))
    save_checkpoint(base, "base.safetensors")

Heavy libraries (torch, diffusers) are imported by the submodules, not here, so ``unlearnctl --help``
stays fast.
"""

__version__ = "0.1.0"
