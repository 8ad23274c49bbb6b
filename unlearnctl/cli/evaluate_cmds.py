"""Commands: ``evaluate``, ``classifier train`` and ``classifier import`` — score checkpoints (docs/metrics.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from unlearnctl.cli import options as opt
from unlearnctl.cli.app import app
from unlearnctl.cli.ui import ProgressBars, key_value_table, note, stdout

EVAL_PANEL = "Metrics"
TRAINABLE_NAMES = ("digitnet", "resnet8", "resnet20", "resnet (= resnet20)")  # classifier_archs.TRAINABLE (torch-free for --help)
GATE_PANEL = "Gates (CI)"

classifier_app = typer.Typer(help="The domain classifier behind forget rate, retain accuracy and FID features.",
                             no_args_is_help=True)
app.add_typer(classifier_app, name="classifier", rich_help_panel="Evaluation")


@app.command(rich_help_panel="Evaluation")
def evaluate(
    model: opt.ModelIn,
    forget_class: opt.ForgetClass = None,
    forget_index: opt.ForgetIndex = None,
    forget_canary: opt.ForgetCanary = False,
    forget_images: opt.ForgetImages = None,
    forget_prompt: opt.ForgetPrompt = None,
    forget_prompts_file: opt.ForgetPromptsFile = None,
    concept_class: opt.ConceptClass = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Images to generate (conditional models: balanced over all classes, the forgotten ones included).", rich_help_panel=opt.SAMPLE_PANEL)] = 10_000,
    steps: opt.Steps = 50,
    sampler: opt.Sampler = "ddim",
    guidance: opt.Guidance = 1.0,
    sample_batch_size: Annotated[Optional[int], typer.Option("--sample-batch-size", help="Images per UNet call when sampling and auditing (default: from the model's size, 1e13 / (parameters × pixels), at most 1000; docs/metrics.md).", rich_help_panel=opt.SAMPLE_PANEL, show_default=False)] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Metric group to run: quality, forget, retain, membership, clip; repeatable (default: every one that applies).", rich_help_panel=EVAL_PANEL)] = None,
    clip_model: Annotated[Optional[Path], typer.Option("--clip-model", help="Text-to-image models: a folder of local CLIP weights (save_pretrained: config, .safetensors, tokenizer and preprocessor files) for the CLIP score; without it the score is skipped. Nothing is downloaded.", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    feature_extractor: Annotated[str, typer.Option(help="FID/KID/precision/recall features: domain-classifier (trained per data set, cached) or inception-v3-compat (needs --inception-weights).", rich_help_panel=EVAL_PANEL)] = "domain-classifier",
    inception_weights: Annotated[Optional[Path], typer.Option(help="Local torch-fidelity InceptionV3 weights (.pth weights-only or .safetensors); sha256 recorded. Nothing is downloaded.", rich_help_panel=EVAL_PANEL)] = None,
    audit_samples: Annotated[Optional[int], typer.Option(help="Membership audit: cap on members and on non-members (seeded subsets; default min(1000, --num-samples)).", rich_help_panel=EVAL_PANEL, show_default=False)] = None,
    audit_repeats: Annotated[int, typer.Option(help="Membership audit: shared-noise repeats (the AUC's spread is over these).", rich_help_panel=EVAL_PANEL)] = 4,
    audit_timesteps: Annotated[str, typer.Option(help="Membership audit: comma-separated fixed timesteps of the denoising loss.", rich_help_panel=EVAL_PANEL)] = "25,50,100,150,200,300,400",
    audit_confidence: Annotated[float, typer.Option(help="Confidence level of the empirical ε lower bound.", rich_help_panel=EVAL_PANEL)] = 0.95,
    bootstrap_rounds: Annotated[int, typer.Option(help="Rounds of the bootstrap intervals of FID, KID, membership AUC and balanced accuracy.", rich_help_panel=EVAL_PANEL)] = 200,
    audit_reference: Annotated[Optional[Path], typer.Option(help="Calibrate the membership audit with a model that saw neither the forget nor the held-out images (needed for out-of-distribution forget data such as a canary).", rich_help_panel=EVAL_PANEL)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results (schema: docs/metrics.md) to this .json file.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", help='Condition to hold, e.g. "forget_rate<=0.05", "fid<=12", "fid<=+10%" (with --baseline); repeatable; exit 3 if one fails.', rich_help_panel=GATE_PANEL)] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="A previous --json result that relative gates (+10%, -5%) refer to.", rich_help_panel=GATE_PANEL)] = None,
    save_samples: Annotated[Optional[Path], typer.Option(help="Folder for the samples: retain/, forget/, real/ PNGs and samples.npz.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    grid: Annotated[Optional[Path], typer.Option(help="PNG grid of retained conditions (a row per class); the forget condition goes to <name>-forget.png.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    data: opt.Data = None,
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    classifier_cache: Annotated[Optional[Path], typer.Option(help="Folder of cached domain classifiers (default $UNLEARNCTL_CACHE or ~/.cache/unlearnctl).", rich_help_panel=EVAL_PANEL)] = None,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Your own classifier for forget rate, retain accuracy and FID features: a .safetensors file of a named architecture with its class names (docs/metrics.md; `classifier import` writes one). Pickles are refused. Its sha256 is recorded.", rich_help_panel=EVAL_PANEL)] = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    quiet: opt.Quiet = False,
):
    """Score a model: FID/KID/precision/recall (torch-fidelity), forget rate, retain accuracy, membership audit.

    What was forgotten comes from --forget-* or, when absent, from the model's lineage; with neither,
    only quality is measured. Text-to-image models: the forget rate of a concept (--forget-class,
    --forget-prompt) or the memorisation rate of captioned images, retained prompts' accuracy, FID on
    retained prompts, the CLIP score with --clip-model, the audit on latents (docs/text-to-image.md).
    Exit 3 when a --gate fails (the --json file is still written).
    """
    from unlearnctl.checkpoint import atomic_write_text, check_output_path
    from unlearnctl.errors import BadInputError, GateFailed
    from unlearnctl.metrics.evaluate import EvalConfig, run_evaluation
    from unlearnctl.metrics.gates import check_gates, load_baseline, parse_gate
    from unlearnctl.metrics.membership import AuditConfig

    if classifier:
        from unlearnctl.metrics.classifier import check_safetensors_file

        check_safetensors_file(classifier)  # a pickle or a missing file fails before anything is loaded
    if clip_model:
        from unlearnctl.metrics.clip import check_clip_folder

        check_clip_folder(clip_model)
    for text in gate or []:
        parse_gate(text)  # syntax first: a typo costs nothing
    opt.check_precision(precision, device)
    if json_out:
        check_output_path(json_out, suffix=".json")
    if grid:
        check_output_path(grid, suffix=".png")
    if save_samples:
        opt_folder(save_samples)
    if (grid or save_samples) and metric and set(metric) == {"membership"}:
        raise BadInputError("--grid and --save-samples need samples; the membership audit alone generates none")
    base = load_baseline(baseline) if baseline else None
    try:
        timesteps = tuple(int(t) for t in audit_timesteps.split(","))
    except ValueError:
        raise BadInputError(f"--audit-timesteps {audit_timesteps!r} must be comma-separated integers, e.g. 25,50,100") from None
    config = EvalConfig(
        num_samples=num_samples, steps=steps, sampler=sampler, guidance=guidance, seed=seed,
        sample_batch_size=sample_batch_size, metrics=tuple(metric) if metric else None, bootstrap_rounds=bootstrap_rounds,
        feature_extractor=feature_extractor, inception_weights=str(inception_weights) if inception_weights else None,
        audit=AuditConfig(timesteps=timesteps, repeats=audit_repeats, confidence=audit_confidence, seed=seed,
                          max_images=audit_samples),
        audit_reference=str(audit_reference) if audit_reference else None,
        classifier_cache=str(classifier_cache) if classifier_cache else None, device=device, precision=precision,
        classifier=str(classifier) if classifier else None, concept_class=concept_class,
        clip_model=str(clip_model) if clip_model else None,
    )
    checkpoint = opt.load_model(model)
    split = opt.load_model_data(data, resolution, channels, checkpoint) if data else None
    spec = opt.forget_spec(forget_class, forget_index, forget_canary, forget_images, forget_prompt, forget_prompts_file)
    with ProgressBars(quiet) as progress:
        evaluation = run_evaluation(checkpoint, spec, config, progress, split=split, gates=gate, baseline=base)
    result = evaluation.result
    if classifier and result["provenance"]["classifier"] is None:
        note(f"--classifier {classifier} was not used: no metric run here needs a classifier", quiet)
    if clip_model and "clip" not in result["provenance"]["metrics_run"]:
        note(f"--clip-model {clip_model} was not used: {result['provenance']['skipped'].get('clip', 'not requested')}", quiet)
    _print_result(result)
    if json_out:
        import json

        atomic_write_text(json_out, json.dumps(result, indent=2, default=str) + "\n")
        note(f"wrote {json_out}", quiet)
    if save_samples:
        evaluation.save_samples(save_samples)
        note(f"wrote {save_samples}/", quiet)
    if grid:
        for path in evaluation.grids(grid):
            note(f"wrote {path}", quiet)
    failures = check_gates([parse_gate(text) for text in gate or []], result, base)
    if failures:
        raise GateFailed(failures)


def opt_folder(path: Path) -> None:
    from unlearnctl.errors import require

    require(not path.exists() or path.is_dir(), f"--save-samples {path} exists and is not a folder")
    parent = path.parent if str(path.parent) else Path(".")
    require(parent.is_dir(), f"folder {parent} does not exist; create it first")


INTERVAL_SUFFIXES = ("_count", "_n", "_ci95_low", "_ci95_high", "_unsupported_reason")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _print_result(result: dict) -> None:
    from rich.table import Table

    from unlearnctl.metrics import METRICS

    prov = result["provenance"]
    table = Table(title=f"evaluation of {prov['model']['path']}", title_justify="left")
    table.add_column("group", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, group in METRICS.items():
        if name not in prov["metrics_run"]:
            table.add_row(name, f"[dim]skipped: {prov['skipped'].get(name, '')}[/dim]", "")
            continue
        for key in group.keys:
            if key.endswith(INTERVAL_SUFFIXES):
                continue  # shown beside their figure
            text = _fmt(result.get(key))
            if result.get(f"{key}_ci95_low") is not None:
                text += f" [{_fmt(result[f'{key}_ci95_low'])}, {_fmt(result[f'{key}_ci95_high'])}]"
            if result.get(f"{key}_count") is not None:
                text += f" ({result[f'{key}_count']}/{result[f'{key}_n']})"
            elif result.get(f"{key}_unsupported_reason"):
                text += f" ({result[f'{key}_unsupported_reason']})"
            table.add_row(name, key, text)
    stdout.print(table)
    extractor = prov["extractor"] or {}
    timing = prov["timing_s"] or {}
    summary = {
        "samples": f"{result['num_samples']} ({result['num_retain_samples']} retained, {result['num_forget_samples']} forget condition)",
        "sampler": f"{prov['sampler']['name']} {prov['sampler']['steps']} steps, guidance {prov['sampler']['guidance']}, seed {prov['sampler']['seed']}",
        "extractor": f"{extractor.get('name', '—')} (sha256 {str(extractor.get('weights_sha256', ''))[:12]})" if extractor else "—",
        "forget set": f"{prov['forget']['mode']} {prov['forget']['spec']} (from {prov['forget']['source']})" if prov["forget"] else "—",
        "time": ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in timing.items()) if timing else "—",
    }
    audit = (prov["details"].get("membership") or {}).get("size")
    if audit:
        summary["audit"] = (f"{audit['members']} members + {audit['nonmembers']} non-members × {audit['repeats']} repeats × "
                            f"{audit['timesteps']} timesteps = {audit['unet_image_passes']:,} image passes (--audit-samples caps both sides)")
    stdout.print(key_value_table("provenance", summary))


@classifier_app.command("train")
def classifier_train(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Use the data this checkpoint was trained on.", rich_help_panel=opt.MODEL_PANEL)] = None,
    data: opt.Data = None,
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    split_seed: opt.SplitSeed = 0,
    canary_copies: opt.CanaryCopies = None,
    arch: Annotated[str, typer.Option(help=f"Architecture: auto (resnet20 for RGB data of at least 32 px, else digitnet), {', '.join(TRAINABLE_NAMES)}.")] = "auto",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 128,
    force: Annotated[bool, typer.Option("--force", help="Retrain even when a cached classifier exists (replaces it).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the classifier to this .safetensors file.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    classifier_cache: Annotated[Optional[Path], typer.Option(help="Folder of cached classifiers (default $UNLEARNCTL_CACHE or ~/.cache/unlearnctl).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.", rich_help_panel=opt.OUTPUT_PANEL)] = False,
    seed: opt.Seed = 0,
    device: Annotated[str, typer.Option(help="torch device to train on: cpu (default), cuda, cuda:1, auto; the saved classifier is the same kind of file.")] = "cpu",
    quiet: opt.Quiet = False,
):
    """Train (or show) the cached domain classifier of a data set and record its held-out accuracy."""
    from unlearnctl.checkpoint import check_output_path
    from unlearnctl.cli.ui import print_json
    from unlearnctl.data import load_data, load_recorded_data
    from unlearnctl.errors import require
    from unlearnctl.metrics.classifier import cache_path, describe, load_classifier, save_classifier, train_classifier
    from unlearnctl.metrics.classifier_archs import trainable_arch
    from unlearnctl.training import resolve_device

    require(not (model and data), "give --model or --data, not both")
    require(epochs >= 1, f"epochs must be at least 1, got {epochs}")
    require(batch_size >= 1, f"batch size must be at least 1, got {batch_size}")
    trainable_arch(arch, 1, 8)  # an unknown name fails before the data is read
    torch_device = resolve_device(device)
    if out:
        check_output_path(out)
    if model:
        split = load_recorded_data(opt.load_model(model).data)
    else:
        split = load_data(data or "digits", resolution=resolution, channels=channels, split_seed=split_seed,
                          canary_copies=canary_copies)
    arch = trainable_arch(arch, split.description["channels"], split.description["resolution"])
    path = cache_path(split, classifier_cache, arch)
    cached = path.is_file() and not force
    if cached:
        classifier = load_classifier(path)
    else:
        with ProgressBars(quiet) as progress:
            classifier = train_classifier(split, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                                          device=torch_device)
        save_classifier(classifier, path)
    if out:
        import shutil

        shutil.copyfile(path, out)
    info = {**describe(classifier), "cached": cached, "path": str(path), "classes": classifier.class_names,
            "num_heldout": split.description["num_heldout"]}
    if out:
        info["copy"] = str(out)
    if json_:
        print_json(info)
    else:
        stdout.print(key_value_table("domain classifier", info))
        stdout.print(f"held-out accuracy ({arch}): {classifier.heldout_accuracy:.4f} on {info['num_heldout']} images")


@classifier_app.command("import")
def classifier_import(
    arch: Annotated[str, typer.Option(help="Architecture of the weights: a torchvision classification model name (resnet18, resnet50, vgg11, mobilenet_v2, ...) or one of the tool's (digitnet, resnet8, resnet20).")],
    weights: Annotated[Path, typer.Option(help="The state dict as .safetensors (safetensors.torch.save_file(model.state_dict(), PATH)); pickles are refused.")],
    classes: Annotated[str, typer.Option(help='Class names in the order of the classifier\'s outputs: "a,b,c" or a JSON list. They are matched to the data\'s class names.')],
    out: Annotated[Path, typer.Option("--out", "-o", help="The classifier file to write (.safetensors): the weights plus metadata.", rich_help_panel=opt.OUTPUT_PANEL)],
    resolution: Annotated[int, typer.Option(help="Input size the classifier expects (square); data of another size is resized to it.")],
    mean: Annotated[str, typer.Option(help="Per-channel normalisation mean of pixels in [0, 1], e.g. 0.485,0.456,0.406 (ImageNet) or 0.5 (inputs in [-1, 1]).")],
    std: Annotated[str, typer.Option(help="Per-channel normalisation std, e.g. 0.229,0.224,0.225 (ImageNet) or 0.5.")],
    channels: Annotated[int, typer.Option(help="Input channels (torchvision models: 3; grey data is repeated to RGB).")] = 3,
    stem: Annotated[Optional[str], typer.Option(help="torchvision ResNets only: cifar = 3×3 stride-1 conv1 and no max-pool (the usual 32-px variant).")] = None,
    quiet: opt.Quiet = False,
):
    """Attach the metadata --classifier needs to a plain state dict saved with safetensors (nothing is executed)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save

    from unlearnctl.checkpoint import atomic_write_bytes, check_output_path
    from unlearnctl.errors import BadInputError, require
    from unlearnctl.metrics.classifier import CLASSIFIER_KIND, check_safetensors_file, classifier_from_metadata

    check_output_path(out)
    weights = check_safetensors_file(weights, "weights")
    require(out.resolve() != weights.resolve(), f"--out {out} is the --weights file; write the classifier to a new file")
    try:
        names = json.loads(classes) if classes.strip().startswith("[") else [name.strip() for name in classes.split(",")]
    except ValueError:
        raise BadInputError(f"--classes {classes[:60]!r} is not a JSON list; use a,b,c or [\"a\", \"b\"]") from None
    require(isinstance(names, list) and len(names) >= 2 and all(str(n) for n in names),
            "--classes needs at least 2 non-empty class names")

    def floats(text: str, option: str) -> list[float]:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise BadInputError(f"{option} {text!r} must be comma-separated numbers, e.g. 0.5 or 0.485,0.456,0.406") from None

    metadata = {"kind": CLASSIFIER_KIND, "arch": arch, "num_classes": str(len(names)),
                "class_names": json.dumps([str(n) for n in names]), "resolution": str(resolution),
                "channels": str(channels), "mean": json.dumps(floats(mean, "--mean")), "std": json.dumps(floats(std, "--std"))}
    if stem:
        metadata["stem"] = stem
    try:
        with safe_open(str(weights), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise BadInputError(f"{weights} is not a readable safetensors file ({' '.join(str(exc).split())[:120]})") from None
    classifier_from_metadata(dict(state), metadata, out)  # the weights must fit: strict load, finite values
    atomic_write_bytes(out, save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))
    note(f"wrote {out} ({arch}, {len(names)} classes, {resolution} px)", quiet)
