"""Generate images from a checkpoint and write them as a PNG grid, an ``.npz`` or a PNG folder."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from unlearnctl.checkpoint import Checkpoint, atomic_write_bytes
from unlearnctl.data import class_index, to_uint8
from unlearnctl.diffusion import balanced_labels, sample_images
from unlearnctl.errors import BadInputError, require
from unlearnctl.progress import ProgressFn
from unlearnctl.training import resolve_device

# Images per UNet call when a command is not told (evaluate's sampling and membership audit): activation
# memory grows with the batch × the model's width × pixels, so the batch is this budget over
# parameters × pixels, at most MAX_AUTO_BATCH. Calibrated on the CIFAR-10 DDPM (35.7M parameters, 32×32),
# whose 1,000-image calls peaked at 8.9 GB RSS: the rule gives it 273 (≈ 2.5 GB); the tool's own presets
# (≤ 6.5M parameters at 28 px) keep 1,000. Parameters grow with width², so large models are conservative.
BATCH_BUDGET = 1e13  # parameters × pixels per UNet call
MAX_AUTO_BATCH = 1000


def auto_batch_size(unet: torch.nn.Module, resolution: int) -> int:
    """``clamp(BATCH_BUDGET // (parameters × resolution²), 1, MAX_AUTO_BATCH)`` (see :data:`BATCH_BUDGET`)."""
    parameters = sum(p.numel() for p in unet.parameters())
    return int(max(1, min(MAX_AUTO_BATCH, BATCH_BUDGET // (parameters * resolution * resolution))))


def generate(
    checkpoint: Checkpoint,
    *,
    classes: list[str] | None = None,
    per_class: int = 10,
    num_images: int = 100,
    steps: int = 50,
    sampler: str = "ddim",
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    device: str = "auto",
    progress: ProgressFn = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample from ``checkpoint``: ``per_class`` images for each of ``classes`` (default all) when the
    model is class-conditional, else ``num_images`` unconditional images. Returns ``(images, labels)``.

    ``precision`` (fp32, bf16, fp16 on CUDA) is the UNet's autocast; under ``accelerate launch`` each process
    generates a share of the images and every process returns all of them."""
    require(not checkpoint.text_conditional, "this model is text-conditional; sample it with --prompt TEXT, not a class")
    unet = checkpoint.build_unet(resolve_device(device)).eval()
    labels = None
    if checkpoint.conditional:
        names = checkpoint.data["class_names"]
        ids = [class_index(str(c), names) for c in classes] if classes else list(range(len(names)))
        require(per_class >= 1, f"images per class must be at least 1, got {per_class}")
        labels = balanced_labels(ids, per_class)
    else:
        require(not classes, "this model is unconditional; --class needs a class-conditional model")
    images = sample_images(
        unet, checkpoint.scheduler_config, num_images=None if labels is not None else num_images, labels=labels,
        null_class=checkpoint.null_class, steps=steps, sampler=sampler, guidance=guidance, seed=seed,
        batch_size=batch_size, progress=progress, precision=precision,
    )
    return images, labels


def generate_from_prompts(
    checkpoint: Checkpoint,
    prompts: list[str],
    *,
    per_prompt: int = 4,
    negative_prompt: str | None = None,
    steps: int = 50,
    sampler: str = "pipeline",
    guidance: float = 7.5,
    seed: int = 0,
    batch_size: int = 500,
    device: str = "auto",
    progress: ProgressFn = None,
    precision: str = "fp32",
    network: torch.nn.Module | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample a text-to-image checkpoint: ``per_prompt`` images for each prompt, grouped by prompt, as
    ``StableDiffusionPipeline`` would draw them for the same list of prompts (:func:`sample_text_images`).

    ``negative_prompt`` replaces the empty prompt in the unconditional branch of classifier-free guidance
    (used only when ``guidance > 1``). ``network``: sample this UNet (one under training; its device is used)
    instead of the checkpoint's; ``noise``: these initial latents instead of ``seed``'s."""
    from unlearnctl.denoisers import denoiser_for
    from unlearnctl.diffusion import sample_text_images
    from unlearnctl.runtime import Runtime

    require(checkpoint.text_conditional, "this model is not text-conditional; sample it with --class (class-conditional) or --num")
    require(bool(prompts), "give at least one prompt (--prompt TEXT or --prompts-file)")
    require(per_prompt >= 1, f"images per prompt must be at least 1, got {per_prompt}")
    require(guidance >= 1.0, f"guidance scale must be at least 1 (1 = none), got {guidance}")
    where = next(network.parameters()).device if network is not None else resolve_device(device)
    denoiser = denoiser_for(checkpoint, Runtime.create(where, precision), network=network)
    if network is None:
        denoiser.network.eval()
    unique = list(dict.fromkeys(prompts))
    table = denoiser.embed(unique)  # each distinct prompt encoded once
    row = {prompt: i for i, prompt in enumerate(unique)}
    embeddings = table[torch.tensor([row[prompt] for prompt in prompts for _ in range(per_prompt)])]  # N×L×D
    negative = None if negative_prompt is None else denoiser.embed([negative_prompt]).expand(len(embeddings), -1, -1)
    return sample_text_images(denoiser, checkpoint.components, embeddings, negative=negative, steps=steps, sampler=sampler,
                              guidance=guidance, seed=seed, batch_size=batch_size, progress=progress, noise=noise)


def read_prompts(prompts: list[str] | None, prompts_file: Path | None) -> list[str]:
    """``--prompt`` values, then one prompt per non-empty line of ``--prompts-file``."""
    listed = list(prompts or [])
    if prompts_file is not None:
        require(prompts_file.is_file(), f"prompts file {prompts_file} does not exist")
        try:
            text = prompts_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            from unlearnctl.errors import cause_of

            raise BadInputError(f"cannot read prompts file {prompts_file}: {cause_of(exc)}") from None
        listed += [line.strip() for line in text.splitlines() if line.strip()]
    return listed


GRID_MIN_WIDTH = 640  # px: grids are enlarged (nearest neighbour) to at least this width, so 8×8 digits are legible


def grid_png(images: torch.Tensor, nrow: int | None = None, scale: int | None = None, pad: int = 1, *,
             title: str | None = None, row_labels: list[str] | None = None, min_width: int = GRID_MIN_WIDTH) -> bytes:
    """A PNG grid of ``[N, C, H, W]`` images in ``[-1, 1]``, ``nrow`` per row, enlarged (nearest neighbour) by
    ``scale`` (default: the smallest factor reaching ``min_width`` pixels), with an optional ``title`` above and
    ``row_labels`` (one per row: the class the row was generated for) on the left."""
    from PIL import Image

    pixels = to_uint8(images).transpose(0, 2, 3, 1)  # N×H×W×C
    n, h, w, c = pixels.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = pixels[i]
    scale = scale or max(1, math.ceil(min_width / canvas.shape[1]))
    image = Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if title or row_labels:
        image = _annotate(image, title, row_labels, rows, cell=(h + pad) * scale, top_pad=pad * scale)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _annotate(grid, title: str | None, row_labels: list[str] | None, rows: int, cell: int, top_pad: int):
    """``grid`` on a white canvas with ``title`` above it and ``row_labels`` left of its rows."""
    from PIL import Image, ImageDraw

    font = _font(max(14, min(22, cell // 3)))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    labels = [str(label) for label in (row_labels or [])][:rows]
    margin = (max(size(label)[0] for label in labels) + 12) if labels else 0
    title_height = size(title)[1] + 14 if title else 0
    mode = "RGB" if grid.mode == "RGB" else "L"
    out = Image.new(mode, (grid.width + margin, grid.height + title_height), "white")
    out.paste(grid, (margin, title_height))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((4, 5), title, fill="black", font=font)
    for r, label in enumerate(labels):
        width, height = size(label)
        draw.text((margin - width - 6, title_height + top_pad + r * cell + (cell - height) // 2 - 2), label, fill="black", font=font)
    return out


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, *, title: str | None = None,
              row_labels: list[str] | None = None) -> Path:
    atomic_write_bytes(path, grid_png(images, nrow, title=title, row_labels=row_labels))
    return Path(path)


def save_npz(images: torch.Tensor, labels: torch.Tensor | None, path: str | Path) -> Path:
    """``images`` as uint8 ``N×H×W×C`` (the same layout ``npz:PATH`` data reads) plus ``labels``."""
    buffer = io.BytesIO()
    arrays = {"images": to_uint8(images).transpose(0, 2, 3, 1)}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_png_folder(images: torch.Tensor, labels: torch.Tensor | None, folder: str | Path, class_names: list[str] | None = None) -> Path:
    """One PNG per image; class sub-folders when labels are given (readable back as ``folder:PATH``)."""
    from PIL import Image

    from unlearnctl.distributed import is_main_process

    folder = Path(folder)
    if not is_main_process():  # multi-process runs: one writer
        return folder
    pixels = to_uint8(images).transpose(0, 2, 3, 1)
    for i, pixel in enumerate(pixels):
        sub = folder if labels is None else folder / (class_names[int(labels[i])] if class_names else str(int(labels[i])))
        sub.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixel.squeeze(-1) if pixel.shape[-1] == 1 else pixel).save(buffer, format="PNG")
        atomic_write_bytes(sub / f"{i:06d}.png", buffer.getvalue(), fsync=False)  # a killed run leaves whole PNGs only
    return folder
