"""Shared ``Annotated`` option aliases: each help text is written once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DATA_PANEL = "Data"
MODEL_PANEL = "Model"
TRAIN_PANEL = "Optimisation"
FORGET_PANEL = "What to forget"
SAMPLE_PANEL = "Sampling"
OUTPUT_PANEL = "Output"

ModelIn = Annotated[Path, typer.Option("--model", "-m", help="Input checkpoint (.safetensors written by unlearnctl).", rich_help_panel=MODEL_PANEL)]
OutCheckpoint = Annotated[Path, typer.Option("--out", "-o", help="Output checkpoint (.safetensors); written atomically, only on success.", rich_help_panel=OUTPUT_PANEL)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines on stderr.", rich_help_panel=OUTPUT_PANEL)]
Seed = Annotated[int, typer.Option(help="Random seed; the same command and seed give the same file on the same machine.")]
Device = Annotated[str, typer.Option(help="torch device: auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")]
Precision = Annotated[str, typer.Option(help="Precision of the UNet's forward passes: fp32; bf16 (autocast; GPUs, and CPUs with AMX/AVX-512-BF16); fp16 (CUDA only, loss-scaled). Weights and gradients stay fp32.")]

CheckpointEvery = Annotated[int, typer.Option(help="Every N steps, atomically write a resumable state (model, optimizer, EMA, RNG, step) to OUT.state.safetensors; removed once OUT is written (0 = off).", rich_help_panel=OUTPUT_PANEL)]
Resume = Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its .state.safetensors file; the options must be those of the interrupted run. The result is bit-identical to an uninterrupted run (CPU).", rich_help_panel=OUTPUT_PANEL)]

Data = Annotated[Optional[str], typer.Option(help="Data source: digits, digits+canary, a folder of class sub-folders (DIR or folder:DIR) or npz:PATH. Images are converted only as --resolution/--channels ask; with a model, data of another size or channel count is refused.", rich_help_panel=DATA_PANEL)]
Resolution = Annotated[Optional[int], typer.Option(help="Resize images to this square size (default: keep).", rich_help_panel=DATA_PANEL)]
Channels = Annotated[Optional[int], typer.Option(help="1 (grey) or 3 (RGB) (default: keep).", rich_help_panel=DATA_PANEL)]
SplitSeed = Annotated[int, typer.Option(help="Seed of the deterministic train/held-out split.", rich_help_panel=DATA_PANEL)]
CanaryCopies = Annotated[Optional[int], typer.Option(help="digits+canary: copies of the canary in the train split (default 2%).", rich_help_panel=DATA_PANEL)]

ForgetClass = Annotated[Optional[list[str]], typer.Option("--forget-class", help="Forget this class; repeatable. A class is picked by its name (bar, 8, canary) or index:N (0-based); a bare number N is an index only when no class name is a number (folders 0, 17, ...: then it must be a name).", rich_help_panel=FORGET_PANEL)]
ForgetIndex = Annotated[Optional[list[int]], typer.Option("--forget-index", help="Forget this training-set index; repeatable.", rich_help_panel=FORGET_PANEL)]
ForgetCanary = Annotated[bool, typer.Option("--forget-canary", help="Forget the canary (digits+canary data).", rich_help_panel=FORGET_PANEL)]
ForgetImages = Annotated[Optional[str], typer.Option("--forget-images", help="Forget these images: a folder or an .npz file (text-to-image models: with their captions, metadata.jsonl or a .txt beside each image).", rich_help_panel=FORGET_PANEL)]
ForgetPrompt = Annotated[Optional[list[str]], typer.Option("--forget-prompt", help="Text-to-image models: the concept this prompt names; repeatable. unlearn forgets the training images captioned exactly so and images the base draws for it; evaluate scores the samples for it against the concept's class (the class whose captions include exactly this prompt, else --concept-class); relearn-attack keeps it out of the auxiliary captions and measures it as evaluate does.", rich_help_panel=FORGET_PANEL)]
ForgetPromptsFile = Annotated[Optional[Path], typer.Option("--forget-prompts-file", help="Text-to-image models: forget prompts, one per non-empty line.", rich_help_panel=FORGET_PANEL)]
ConceptClass = Annotated[Optional[str], typer.Option("--concept-class", help="Text-to-image models: the class (name or index:N) the --forget-prompt concept belongs to, for its forget rate.", rich_help_panel=FORGET_PANEL, show_default=False)]

Steps = Annotated[int, typer.Option(help="DDIM/DDPM sampler steps.", rich_help_panel=SAMPLE_PANEL)]
Sampler = Annotated[str, typer.Option(help="ddim (deterministic) or ddpm (ancestral).", rich_help_panel=SAMPLE_PANEL)]
Guidance = Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none; conditional models with a null class).", rich_help_panel=SAMPLE_PANEL)]
SampleBatch = Annotated[int, typer.Option("--sample-batch-size", help="Images per UNet call when sampling.", rich_help_panel=SAMPLE_PANEL)]


def check_precision(precision: str, device: str) -> None:
    """Refuse an unknown ``--precision`` or fp16 without a CUDA device before any work (exit 2)."""
    from unlearnctl.distributed import check_precision as check
    from unlearnctl.training import resolve_device

    check(precision, resolve_device(device))


def forget_spec(classes, indices, canary, images, prompts=None, prompts_file=None):
    """Build a :class:`~unlearnctl.data.ForgetSpec` from the shared forget options."""
    from unlearnctl.data import ForgetSpec
    from unlearnctl.sampling import read_prompts

    listed = read_prompts(prompts, prompts_file) if (prompts or prompts_file) else []
    return ForgetSpec(tuple(classes or ()), tuple(indices or ()), bool(canary), images, tuple(listed))


def load_model(path: Path):
    """Load a checkpoint for a command and refuse it (exit 2) unless every weight is finite.

    Every command that loads a model goes through here, so a broken file never samples black images,
    passes a gate or reads as a learning-rate problem.
    """
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.integrity import require_finite_weights

    checkpoint = load_checkpoint(path)
    require_finite_weights({**checkpoint.state_dict, **checkpoint.frozen}, path)
    return checkpoint


def load_model_data(data: str, resolution: int | None, channels: int | None, checkpoint):
    """``--data`` for a command that has a model: read as given (converted only as ``--resolution``/``--channels``
    ask, as for every command), split as the model's data was, and refused (exit 2) unless it fits the model."""
    from unlearnctl.data import DEFAULT_HELDOUT_FRACTION, check_compatible, load_data

    recorded = checkpoint.data
    split = load_data(data, resolution=resolution, channels=channels, split_seed=recorded.get("split_seed", 0),
                      heldout_fraction=recorded.get("heldout_fraction", DEFAULT_HELDOUT_FRACTION),
                      canary_copies=recorded.get("canary_copies"))
    if checkpoint.text_conditional:  # a latent UNet's size is the latents': compare with the images it draws
        from unlearnctl.text_to_image import check_text_data

        check_text_data(split.description, checkpoint)
    else:
        check_compatible(split.description, checkpoint.unet_config, checkpoint.conditional, checkpoint.num_classes)
    return split
