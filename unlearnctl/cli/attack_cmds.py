"""Commands: relearn-attack — the DiMRA relearning attack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from unlearnctl.attacks import aux_syntax
from unlearnctl.attacks.dimra import AttackConfig
from unlearnctl.cli import options as opt
from unlearnctl.cli.app import app
from unlearnctl.cli.ui import ProgressBars, key_value_table, note_batch_draws, print_json, stdout

ATTACK_PANEL = "Attack"
CURVE_PANEL = "Relearning curve"
D = AttackConfig  # dataclass fields with defaults are class attributes: the help shows the library's defaults


@app.command("relearn-attack", rich_help_panel="Attack and evaluate")
def relearn_attack(
    model: opt.ModelIn,
    out: opt.OutCheckpoint,
    aux: Annotated[str, typer.Option(help=f"Auxiliary data: {aux_syntax()}. Never contains forget-set images (checked).", rich_help_panel=ATTACK_PANEL)] = "retain",
    steps: Annotated[int, typer.Option("--steps", help="Fine-tuning optimizer steps.", rich_help_panel=ATTACK_PANEL)] = D.steps,
    lr: Annotated[float, typer.Option(help="Constant AdamW learning rate.", rich_help_panel=ATTACK_PANEL)] = D.lr,
    batch_size: Annotated[int, typer.Option(help="Images per step.", rich_help_panel=ATTACK_PANEL)] = D.batch_size,
    label_dropout: Annotated[float, typer.Option(help="Share of labels replaced by the null class, as in training.", rich_help_panel=ATTACK_PANEL)] = D.label_dropout,
    num_generated: Annotated[int, typer.Option(help="--aux generated: images to sample (balanced over the classes not forgotten).", rich_help_panel=ATTACK_PANEL)] = D.num_generated,
    generate_steps: Annotated[int, typer.Option(help="--aux generated: DDIM steps.", rich_help_panel=ATTACK_PANEL)] = D.generate_steps,
    curve_every: Annotated[int, typer.Option(help="Record the forget rate every K steps (and at steps 0 and last); 0 = off.", rich_help_panel=CURVE_PANEL)] = 0,
    forget_class: opt.ForgetClass = None,
    forget_index: opt.ForgetIndex = None,
    forget_canary: opt.ForgetCanary = False,
    forget_images: opt.ForgetImages = None,
    forget_prompt: opt.ForgetPrompt = None,
    forget_prompts_file: opt.ForgetPromptsFile = None,
    concept_class: opt.ConceptClass = None,
    curve_json: Annotated[Optional[Path], typer.Option(help="Write the curve as JSON (schema: docs/attack.md).", rich_help_panel=CURVE_PANEL)] = None,
    curve_csv: Annotated[Optional[Path], typer.Option(help="Write the curve as CSV: step, forget_rate, num_samples, mode, method, aux, model_sha256.", rich_help_panel=CURVE_PANEL)] = None,
    curve_samples: Annotated[int, typer.Option(help="Images sampled for the forget condition per curve point.", rich_help_panel=CURVE_PANEL)] = D.curve_samples,
    curve_sample_steps: Annotated[int, typer.Option(help="DDIM steps per curve sample.", rich_help_panel=CURVE_PANEL)] = D.curve_sample_steps,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Class-mode curve: your own classifier for the forget rate, as `evaluate --classifier` (docs/metrics.md); sha256 recorded in the curve's metric.", rich_help_panel=CURVE_PANEL)] = None,
    data: Annotated[Optional[str], typer.Option(help="The model's training data, if its recorded source moved (forget fingerprints must still match); converted only as --resolution/--channels ask.", rich_help_panel=opt.DATA_PANEL)] = None,
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.", rich_help_panel=opt.OUTPUT_PANEL)] = False,
    checkpoint_every: opt.CheckpointEvery = 0,
    resume: opt.Resume = None,
    seed: opt.Seed = D.seed,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    quiet: opt.Quiet = False,
):
    """DiMRA: fine-tune an unlearned model on auxiliary data free of the forget set, and see whether it relearns.

    The attacker has the weights and the label format, not the forget set. The auxiliary data excludes every
    forget set in the model's lineage (exact and near copies; fingerprints recorded). With --curve-every the
    forget rate is measured along the attack; the forget set measured defaults to the lineage's newest.
    Text-to-image models fine-tune on image–caption pairs, and no auxiliary caption may be a forget prompt.
    """
    from unlearnctl.attacks import parse_aux_spec
    from unlearnctl.attacks.dimra import relearn_attack as attack
    from unlearnctl.checkpoint import atomic_write_text, check_output_path, save_checkpoint
    from unlearnctl.errors import require
    from unlearnctl.resume import ResumeOptions, protect_output

    check_output_path(out)
    require(out.resolve() != model.resolve(), f"--out {out} is the input model; write the attacked model to a new file")
    resume_options = ResumeOptions.for_output(out, checkpoint_every, resume)
    for path, suffix in ((curve_json, ".json"), (curve_csv, ".csv")):
        if path is not None:
            check_output_path(path, suffix=suffix)
            require(curve_every > 0, f"{path} would hold a curve, but no curve is recorded; add --curve-every K")
    parse_aux_spec(aux)  # an unknown source fails before any work
    if classifier is not None:
        from unlearnctl.metrics.classifier import check_safetensors_file

        require(curve_every > 0, "--classifier scores the relearning curve, but no curve is recorded; add --curve-every K")
        check_safetensors_file(classifier)  # a pickle or a missing file fails before any work
    require(concept_class is None or curve_every > 0, "--concept-class names the class of the curve's --forget-prompt "
            "concept, but no curve is recorded; add --curve-every K")
    opt.check_precision(precision, device)
    config = AttackConfig(steps=steps, lr=lr, batch_size=batch_size, label_dropout=label_dropout, seed=seed,
                          num_generated=num_generated, generate_steps=generate_steps, curve_samples=curve_samples,
                          curve_sample_steps=curve_sample_steps, classifier=str(classifier) if classifier else None,
                          concept_class=concept_class)
    forget = opt.forget_spec(forget_class, forget_index, forget_canary, forget_images, forget_prompt, forget_prompts_file)
    checkpoint = opt.load_model(model)
    split = opt.load_model_data(data, resolution, channels, checkpoint) if data else None
    heading = f"DiMRA on {model} with --aux {aux}: {steps} steps, lr {lr:g}, batch {batch_size}"
    with protect_output(out, resume_options), ProgressBars(quiet, heading) as progress:
        attacked, curve = attack(checkpoint, aux, config, curve_forget_spec=None if forget.empty else forget,
                                 curve_every=curve_every, data=split, device=device, progress=progress,
                                 resume=resume_options, precision=precision)
    save_checkpoint(attacked, out)
    if curve is not None:
        curve.attacked_sha256 = attacked.sha256
    resume_options.finish()
    note_batch_draws(batch_size, {"auxiliary": attacked.lineage[-1]["attack"]["aux"]["num_images"]}, quiet)
    if curve is not None and curve_json is not None:
        import json

        atomic_write_text(curve_json, json.dumps(curve.to_json_dict(), indent=2) + "\n")
    if curve is not None and curve_csv is not None:
        atomic_write_text(curve_csv, curve.to_csv())
    _print_summary(attacked, curve, out, [p for p in (curve_json, curve_csv) if p], json_)


def _print_summary(attacked, curve, out: Path, curve_files: list[Path], as_json: bool) -> None:
    entry = attacked.lineage[-1]
    aux = entry["attack"]["aux"]
    summary = {
        "out": str(out), "sha256": attacked.sha256, "aux": aux["spec"], "aux_images": aux["num_images"],
        "aux_fingerprint": aux["fingerprint"], "forget_fingerprints": aux["forget_fingerprints"],
        "shared_images": aux["shared_images"],
        "dropped_copies": aux["dropped_exact_copies"] + aux["dropped_near_copies"],
    }
    if "dropped_forget_captions" in aux:  # text-to-image models
        summary.update(dropped_captions=aux["dropped_forget_captions"], shared_captions=aux["shared_captions"])
    if curve is not None:
        record = curve.lineage_record()
        summary.update(forget_rate_before=curve.before, forget_rate_after=curve.after, relearn_gap=curve.relearn_gap,
                       relearn_area=record["relearn_area"], relearn_area_ci95=[record["relearn_area_ci95_low"], record["relearn_area_ci95_high"]],
                       curve=[(p["step"], round(p["forget_rate"], 4)) for p in curve.points])
    if as_json:
        print_json(summary)
        return
    stdout.print(key_value_table("relearn-attack (DiMRA)", summary))
    for path in [out, *curve_files]:
        stdout.print(f"wrote {path}")
