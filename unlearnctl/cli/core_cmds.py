"""Commands for models themselves: ``train``, ``sample``, ``inspect``, ``export``, ``import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from unlearnctl.cli import options as opt
from unlearnctl.cli.app import app
from unlearnctl.cli.ui import ProgressBars, key_value_table, note_batch_draws, print_json, stdout


def load_split(data, resolution, channels, split_seed, canary_copies):
    from unlearnctl.data import load_data

    return load_data(data or "digits", resolution=resolution, channels=channels, split_seed=split_seed, canary_copies=canary_copies)


@app.command(rich_help_panel="Models")
def train(
    out: opt.OutCheckpoint,
    data: opt.Data = "digits",
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    split_seed: opt.SplitSeed = 0,
    canary_copies: opt.CanaryCopies = None,
    conditional: Annotated[bool, typer.Option("--conditional/--unconditional", help="Class-conditional (with a null class for guidance) or unconditional.", rich_help_panel=opt.MODEL_PANEL)] = True,
    text_to_image: Annotated[bool, typer.Option("--text-to-image", help="Train a latent text-to-image model instead (Stable Diffusion layout: a KL autoencoder, a CLIP tokenizer and text encoder written for the captions' words, a UNet2DConditionModel on the latents). Captions come from the data (metadata.jsonl, .txt files, npz 'captions') or are generated from the class names (digits: 'a handwritten digit eight', ...).", rich_help_panel=opt.MODEL_PANEL)] = False,
    autoencoder_steps: Annotated[int, typer.Option(help="--text-to-image: optimizer steps of the autoencoder, trained before the UNet.", rich_help_panel=opt.TRAIN_PANEL)] = 600,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="--text-to-image: recompute the UNet's activations in the backward pass (less memory, more time).", rich_help_panel=opt.TRAIN_PANEL)] = False,
    size: Annotated[str, typer.Option(help="Model size preset: tiny (tests), small (digits), medium, large (user data).", rich_help_panel=opt.MODEL_PANEL)] = "small",
    unet_config: Annotated[Optional[Path], typer.Option(help="JSON file of UNet2DModel config keys overriding the preset.", rich_help_panel=opt.MODEL_PANEL)] = None,
    prediction_type: Annotated[str, typer.Option(help="What the network predicts: epsilon (the noise), v_prediction (v = γ_t·ε − σ_t·x₀) or sample (x₀). Every later loss (unlearning, the attack) follows it.", rich_help_panel=opt.MODEL_PANEL)] = "epsilon",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.", rich_help_panel=opt.TRAIN_PANEL)] = 3000,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: 128; --text-to-image 64, which keeps its training within 10 minutes on 2 CPU cores).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (warm-up, then cosine to 10%).", rich_help_panel=opt.TRAIN_PANEL)] = 1e-3,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the saved weights (0 = no EMA).", rich_help_panel=opt.TRAIN_PANEL)] = 0.999,
    label_dropout: Annotated[float, typer.Option(help="Share of labels replaced by the null class (guidance training).", rich_help_panel=opt.TRAIN_PANEL)] = 0.1,
    exclude_class: Annotated[Optional[list[str]], typer.Option("--exclude-class", help="Train without this class (exact-unlearning reference); repeatable.", rich_help_panel=opt.DATA_PANEL)] = None,
    exclude_index: Annotated[Optional[list[int]], typer.Option("--exclude-index", help="Train without this training-set index; repeatable.", rich_help_panel=opt.DATA_PANEL)] = None,
    exclude_canary: Annotated[bool, typer.Option("--exclude-canary", help="Train without the canary copies.", rich_help_panel=opt.DATA_PANEL)] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Also write a PNG grid of samples (one row per class).", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    checkpoint_every: opt.CheckpointEvery = 0,
    resume: opt.Resume = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    quiet: opt.Quiet = False,
):
    """Train a diffusion model (DDPM, linear β 1e-4→0.02, 1000 steps; ε-prediction unless --prediction-type) from scratch: a pixel UNet2DModel, or with --text-to-image a latent text-to-image model (docs/text-to-image.md)."""
    from unlearnctl.checkpoint import check_output_path, save_checkpoint
    from unlearnctl.diffusion import check_prediction_type
    from unlearnctl.data import resolve_forget
    from unlearnctl.errors import require
    from unlearnctl.models import check_preset, read_config_file
    from unlearnctl.resume import ResumeOptions, protect_output
    from unlearnctl.training import TrainConfig, train_model

    check_output_path(out)
    if grid:
        check_output_path(grid, suffix=".png")
    require(text_to_image or not gradient_checkpointing, "--gradient-checkpointing is for --text-to-image models")
    require(not text_to_image or (not checkpoint_every and resume is None),
            "--checkpoint-every and --resume are not available with --text-to-image yet")
    require(autoencoder_steps >= 1, f"--autoencoder-steps must be at least 1, got {autoencoder_steps}")
    resume_options = ResumeOptions.for_output(out, checkpoint_every, resume)
    check_preset(size)
    opt.check_precision(precision, device)
    check_prediction_type(prediction_type)
    overrides = read_config_file(unet_config) if unet_config else None
    if batch_size is None:
        from unlearnctl.text_to_image import TEXT_TO_IMAGE_BATCH_SIZE

        batch_size = TEXT_TO_IMAGE_BATCH_SIZE if text_to_image else TrainConfig.batch_size
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, label_dropout=label_dropout, seed=seed)
    split = load_split(data, resolution, channels, split_seed, canary_copies)
    exclude = opt.forget_spec(exclude_class, exclude_index, exclude_canary, None)
    train_images = len(split.train) if exclude.empty else len(resolve_forget(exclude, split).retain)
    note_batch_draws(batch_size, {"training": train_images}, quiet)
    if text_to_image:
        from unlearnctl.text_to_image import train_text_to_image

        with ProgressBars(quiet) as progress:
            checkpoint = train_text_to_image(split, config=config, autoencoder_steps=autoencoder_steps, unet_overrides=overrides,
                                             exclude=exclude, device=device, progress=progress, precision=precision,
                                             prediction_type=prediction_type, gradient_checkpointing=gradient_checkpointing)
    else:
        with protect_output(out, resume_options), ProgressBars(quiet) as progress:
            checkpoint = train_model(split, conditional=conditional, preset=size, unet_overrides=overrides, config=config,
                                     exclude=exclude, device=device, progress=progress, resume=resume_options,
                                     precision=precision, prediction_type=prediction_type)
    save_checkpoint(checkpoint, out)
    resume_options.finish()
    entry = checkpoint.lineage[-1]
    kind = "text-to-image" if text_to_image else f"{size} {'conditional' if conditional else 'unconditional'}"
    stdout.print(f"wrote {out}: {kind} model, "
                 f"{entry['params']['num_train_images']} training images of {split.description['source']}, "
                 f"{steps} steps in {entry['wall_time_s'] or 0:.0f} s")
    if grid and text_to_image:
        _write_prompt_grid(checkpoint, grid, seed, device, quiet)
    elif grid:
        _write_grid(checkpoint, grid, seed, device, quiet)


def _write_prompt_grid(checkpoint, path: Path, seed: int, device: str, quiet: bool) -> None:
    from unlearnctl.captions import class_prompt

    prompts = [class_prompt(name) for name in checkpoint.data.get("class_names", [])] or ["a picture"]
    _sample_prompts(checkpoint, prompts, None, 10, path, None, None, classes=None, quiet=quiet, steps=50,
                    sampler="pipeline", guidance=1.0, seed=seed, batch_size=500, device=device, precision="fp32")


def _write_grid(checkpoint, path: Path, seed: int, device: str, quiet: bool) -> None:
    from unlearnctl.sampling import generate, save_grid

    with ProgressBars(quiet) as progress:
        images, _ = generate(checkpoint, per_class=10, num_images=100, seed=seed, device=device, progress=progress)
    save_grid(images, path, nrow=10)
    stdout.print(f"wrote {path}")


@app.command(rich_help_panel="Models")
def sample(
    model: opt.ModelIn,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid of the samples.", rich_help_panel=opt.OUTPUT_PANEL)],
    class_: Annotated[Optional[list[str]], typer.Option("--class", help="Sample this class (its name or index:N, as --forget-class picks it); repeatable; default all.", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    per_class: Annotated[int, typer.Option(help="Images per class (conditional models).", rich_help_panel=opt.SAMPLE_PANEL)] = 10,
    num: Annotated[int, typer.Option(help="Number of images (unconditional models).", rich_help_panel=opt.SAMPLE_PANEL)] = 100,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Text-to-image models: sample this prompt; repeatable.", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(help="Text-to-image models: a text file with one prompt per line (after any --prompt).", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Text-to-image models: the prompt of guidance's unconditional branch (default: the empty prompt).", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    per_prompt: Annotated[int, typer.Option(help="Images per prompt (text-to-image models); one grid row per prompt.", rich_help_panel=opt.SAMPLE_PANEL)] = 4,
    steps: opt.Steps = 50,
    sampler: Annotated[Optional[str], typer.Option(help="ddim (deterministic) or ddpm (ancestral); text-to-image models also pipeline (the scheduler the pipeline came with, their default).", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale, 1 = none (default: 1 for class-conditional models, 7.5 for text-to-image models, as StableDiffusionPipeline).", rich_help_panel=opt.SAMPLE_PANEL)] = None,
    sample_batch_size: opt.SampleBatch = 500,
    npz: Annotated[Optional[Path], typer.Option(help="Also save the images (uint8) and labels to this .npz.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    png_dir: Annotated[Optional[Path], typer.Option(help="Also save one PNG per image into this folder (class sub-folders).", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    quiet: opt.Quiet = False,
):
    """Generate images per class, unconditionally, or (text-to-image models) per prompt, and write a PNG grid."""
    from unlearnctl.checkpoint import check_output_path
    from unlearnctl.sampling import generate, read_prompts, save_grid, save_npz, save_png_folder

    check_output_path(out, suffix=".png")
    if npz:
        check_output_path(npz, suffix=".npz")
    opt.check_precision(precision, device)
    checkpoint = opt.load_model(model)
    prompts = read_prompts(prompt, prompts_file)
    if checkpoint.text_conditional or prompts or negative_prompt:
        _sample_prompts(checkpoint, prompts, negative_prompt, per_prompt, out, npz, png_dir, steps=steps,
                        sampler=sampler or "pipeline", guidance=7.5 if guidance is None else guidance, seed=seed,
                        batch_size=sample_batch_size, device=device, precision=precision, quiet=quiet, classes=class_)
        return
    sampler, guidance = sampler or "ddim", 1.0 if guidance is None else guidance
    with ProgressBars(quiet) as progress:
        images, labels = generate(checkpoint, classes=class_, per_class=per_class, num_images=num, steps=steps, sampler=sampler,
                                  guidance=guidance, seed=seed, batch_size=sample_batch_size, device=device, progress=progress,
                                  precision=precision)
    save_grid(images, out, nrow=per_class if labels is not None and per_class <= 32 else None)
    stdout.print(f"wrote {out} ({len(images)} images)")
    if npz:
        save_npz(images, labels, npz)
        stdout.print(f"wrote {npz}")
    if png_dir:
        save_png_folder(images, labels, png_dir, checkpoint.data.get("class_names"))
        stdout.print(f"wrote {png_dir}/")


def _sample_prompts(checkpoint, prompts, negative_prompt, per_prompt, out, npz, png_dir, *, classes, quiet, **options) -> None:
    import torch

    from unlearnctl.errors import require
    from unlearnctl.sampling import generate_from_prompts, save_grid, save_npz, save_png_folder

    require(checkpoint.text_conditional, "this model is not text-conditional; --prompt and --negative-prompt need a "
            "text-to-image model (sample this one with --class or --num)")
    require(not classes, "this model is text-conditional; ask for images with --prompt TEXT, not --class")
    with ProgressBars(quiet) as progress:
        images = generate_from_prompts(checkpoint, prompts, per_prompt=per_prompt, negative_prompt=negative_prompt,
                                       progress=progress, **options)
    save_grid(images, out, nrow=per_prompt, title=f"{options['sampler']}, {options['steps']} steps, guidance {options['guidance']:g}, seed {options['seed']}",
              row_labels=[prompt if len(prompt) <= 48 else prompt[:47] + "…" for prompt in prompts])
    stdout.print(f"wrote {out} ({len(images)} images, {len(prompts)} prompts × {per_prompt})")
    labels = torch.arange(len(prompts)).repeat_interleave(per_prompt)
    if npz:
        save_npz(images, labels, npz)
        stdout.print(f"wrote {npz} (labels: prompt index)")
    if png_dir:
        save_png_folder(images, labels, png_dir, [f"prompt-{i:03d}" for i in range(len(prompts))])
        stdout.print(f"wrote {png_dir}/ (one folder per prompt: prompt-000, ...)")


@app.command(rich_help_panel="Models")
def inspect(
    file: Annotated[Path, typer.Argument(help="Checkpoint to describe.")],
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check weights and lineage integrity; exit 2 if they do not hold.")] = False,
):
    """Print a checkpoint's configuration, data description and lineage."""
    from unlearnctl.checkpoint import load_checkpoint
    from unlearnctl.errors import BadInputError
    from unlearnctl.provenance import summary, verify_checkpoint

    checkpoint = load_checkpoint(file)
    problems = verify_checkpoint(checkpoint) if verify else []
    info = summary(checkpoint)
    if verify:
        info["verified"] = not problems
        info["problems"] = problems
    if json_:
        print_json(info)
    else:
        _print_inspection(info)
    if problems:
        raise BadInputError(f"{file} failed verification: {problems[0]}")


def _print_inspection(info: dict) -> None:
    from rich.table import Table

    stdout.print(key_value_table(f"{info['file']}", {k: v for k, v in info.items() if k not in ("lineage", "data", "file", "problems")}))
    stdout.print(key_value_table("data", info["data"]))
    table = Table(title="lineage", title_justify="left")
    for column in ("#", "command", "method", "seed", "forget", "wall s", "parent sha256", "created"):
        table.add_column(column)
    for i, entry in enumerate(info["lineage"]):
        table.add_row(str(i), entry.get("command", "?"), str(entry.get("method") or ""), str(entry.get("seed")),
                      str((entry.get("forget") or {}).get("spec", "") or ""), str(entry.get("wall_time_s") or ""),
                      (entry.get("parent_sha256") or "")[:12], entry.get("created", ""))
    stdout.print(table)
    if "verified" in info:
        stdout.print("[green]verified[/green]" if info["verified"] else f"[red]NOT verified[/red]: {'; '.join(info['problems'])}")


@app.command(rich_help_panel="Models")
def export(
    model: opt.ModelIn,
    diffusers_dir: Annotated[Path, typer.Option(help="New folder for the diffusers save_pretrained layout (unet/, scheduler/, model_index.json).")],
):
    """Export to a diffusers folder: loads with UNet2DModel.from_pretrained(..., subfolder='unet') or DDPMPipeline."""
    from unlearnctl.checkpoint import export_diffusers

    export_diffusers(opt.load_model(model), diffusers_dir)
    stdout.print(f"wrote {diffusers_dir}/")


@app.command("import", rich_help_panel="Models")
def import_(
    diffusers_dir: Annotated[Path, typer.Argument(help="A diffusers save_pretrained folder (a StableDiffusionPipeline, a pixel pipeline with unet/, or a bare UNet folder), or a single-file Stable Diffusion .safetensors (with --config).")],
    out: opt.OutCheckpoint,
    config: Annotated[Optional[Path], typer.Option("--config", help="Single-file import: the diffusers StableDiffusionPipeline folder whose configs, tokenizer and scheduler describe the file (offline: nothing is downloaded).", rich_help_panel=opt.MODEL_PANEL)] = None,
    data: opt.Data = None,
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    split_seed: opt.SplitSeed = 0,
    canary_copies: opt.CanaryCopies = None,
):
    """Import a diffusers pipeline folder or a single-file Stable Diffusion checkpoint (safetensors only) as an unlearnctl checkpoint."""
    from unlearnctl.checkpoint import check_output_path, import_diffusers, import_single_file, save_checkpoint
    from unlearnctl.data import check_compatible
    from unlearnctl.errors import require
    from unlearnctl.fileio import claim_output
    from unlearnctl.integrity import require_finite_weights

    check_output_path(out)
    sources = [p for folder in (diffusers_dir, diffusers_dir / "unet") if folder.is_dir() for p in folder.glob("*.safetensors")]
    require(out.resolve() not in {p.resolve() for p in sources},
            f"--out {out} is the source weights file of {diffusers_dir}; write the imported checkpoint to a new file")
    if diffusers_dir.is_file():
        require(config is not None, f"{diffusers_dir} is a single file; give --config DIR, the diffusers StableDiffusionPipeline "
                "folder with its configs (nothing is downloaded)")
        require(out.resolve() != diffusers_dir.resolve(), f"--out {out} is the source file; write the imported checkpoint to a new file")
    else:
        require(config is None, "--config is for single-file imports; a folder carries its own configs")
    claim_output(out)
    description = {"source": "unknown", "class_names": []}
    if data:
        description = load_split(data, resolution, channels, split_seed, canary_copies).description
    if diffusers_dir.is_file():
        checkpoint = import_single_file(diffusers_dir, config, description)
    else:
        checkpoint = import_diffusers(diffusers_dir, description)
    require_finite_weights({**checkpoint.state_dict, **checkpoint.frozen}, diffusers_dir)
    if data:
        check_compatible(description, checkpoint.unet_config, checkpoint.conditional)
    save_checkpoint(checkpoint, out)
    stdout.print(f"wrote {out}")
    if data and checkpoint.conditional and checkpoint.null_class is None:
        stdout.print("one class embedding per class, no null class: classifier-free guidance is unavailable (sample and evaluate with --guidance 1)")
