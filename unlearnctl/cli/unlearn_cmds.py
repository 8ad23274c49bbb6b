"""Command: ``unlearn`` — run an unlearning method (choices, help and method options from the registry)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from unlearnctl.cli import options as opt
from unlearnctl.cli.app import app
from unlearnctl.cli.ui import ProgressBars, print_json, stdout

METHOD_PANEL = "Method parameters (each names the methods it applies to)"
PROBE_PANEL = "Probing the forget rate"
TEXT_PANEL = "Text-to-image models"


def _method_table() -> str:
    from unlearnctl.methods import available_methods, get_method

    return "; ".join(f"{name} — {get_method(name).summary}" for name in available_methods())


def unlearn(
    model: opt.ModelIn,
    out: opt.OutCheckpoint,
    method: Annotated[str, typer.Option("--method", help="Unlearning method: " + _method_table() + ".", rich_help_panel=opt.MODEL_PANEL)],
    forget_class: opt.ForgetClass = None,
    forget_index: opt.ForgetIndex = None,
    forget_canary: opt.ForgetCanary = False,
    forget_images: opt.ForgetImages = None,
    forget_prompt: opt.ForgetPrompt = None,
    forget_prompts_file: opt.ForgetPromptsFile = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (default: the method's tuned default; retrain: the base's recipe).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW peak learning rate (default: the method's tuned default).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="Learning rate over the run: cosine (from --lr down to 10% of it, so the last steps settle the weights) or constant (default: the method's tuned default).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA of the weights over the run, saved and probed instead of the raw weights; 0 = off (default: the method's tuned default).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images drawn from each of the retain and forget sets per step (default: the method's).", rich_help_panel=opt.TRAIN_PANEL)] = None,
    grad_clip: Annotated[float, typer.Option(help="Total gradient-norm clip after the method formed its gradient.", rich_help_panel=opt.TRAIN_PANEL)] = 1.0,
    label_dropout: Annotated[float, typer.Option(help="Conditional models with a null class: share of retain labels replaced by it (keeps guidance working).", rich_help_panel=opt.TRAIN_PANEL)] = 0.1,
    probe_every: Annotated[int, typer.Option(help="Every N steps, sample a small batch and print the forget rate (0 = never).", rich_help_panel=PROBE_PANEL)] = 0,
    until_forget_rate: Annotated[Optional[float], typer.Option(help="Stop at the first probe whose forget rate (--stop-on rate) or 95% Wilson upper bound (--stop-on upper) is <= this; probes every 10 steps unless --probe-every is given. The step, rate, count/n and interval are recorded (lineage 'until', report).", rich_help_panel=PROBE_PANEL)] = None,
    stop_on: Annotated[str, typer.Option(help="--until-forget-rate's rule: rate (the probe's point estimate) or upper (its 95% Wilson upper bound: below the target with 97.5% confidence).", rich_help_panel=PROBE_PANEL)] = "rate",
    probe_samples: Annotated[int, typer.Option(help="Forget-condition images per probe (the forget rows of `evaluate`'s balanced layout, same noise); 200 keeps the 95% Wilson half-width <= 0.07 at any rate.", rich_help_panel=PROBE_PANEL)] = 200,
    probe_steps: Annotated[int, typer.Option(help="DDIM steps per probe image.", rich_help_panel=PROBE_PANEL)] = 25,
    trainable: Annotated[Optional[str], typer.Option(help="Text-to-image models: the UNet parameters that train — all, cross-attention (where the prompt enters; ESD-x) or non-cross-attention (ESD-u) (default: the method's; all for every method but esd-x/esd-u).", rich_help_panel=TEXT_PANEL)] = None,
    prompt_samples: Annotated[int, typer.Option(help="Text-to-image models, --forget-prompt: images the base draws for each forget prompt, added to the forget set (DDIM 50).", rich_help_panel=TEXT_PANEL)] = 50,
    prompt_guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale of those images.", rich_help_panel=TEXT_PANEL)] = 3.0,
    data: opt.Data = None,
    resolution: opt.Resolution = None,
    channels: opt.Channels = None,
    split_seed: opt.SplitSeed = 0,
    canary_copies: opt.CanaryCopies = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the run report as JSON on stdout.", rich_help_panel=opt.OUTPUT_PANEL)] = False,
    checkpoint_every: opt.CheckpointEvery = 0,
    resume: opt.Resume = None,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    quiet: opt.Quiet = False,
    **method_values: Any,
):
    """Make a model forget a class, specific data or (text-to-image models) a concept by prompt with one of the
    registered methods (listed under --method). Data comes from the model's recorded data description unless
    --data is given."""
    from unlearnctl.checkpoint import check_output_path, save_checkpoint
    from unlearnctl.errors import BadInputError
    from unlearnctl.methods import get_method
    from unlearnctl.resume import ResumeOptions, protect_output
    from unlearnctl.unlearning import UnlearnConfig, report_summary
    from unlearnctl.unlearning import unlearn as run_unlearn

    check_output_path(out)
    if out.resolve() == model.resolve():
        raise BadInputError(f"--out {out} is the input model; write the unlearned model to a new file")
    resume_options = ResumeOptions.for_output(out, checkpoint_every, resume)
    method_cls = get_method(method)
    opt.check_precision(precision, device)
    given = _method_params(method, method_values)
    config = UnlearnConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, grad_clip=grad_clip,
                           lr_schedule=lr_schedule, ema_decay=ema_decay,
                           label_dropout=label_dropout, probe_every=probe_every, until_forget_rate=until_forget_rate, stop_on=stop_on,
                           probe_samples=probe_samples, probe_steps=probe_steps, device=device,
                           precision=precision, trainable=trainable, prompt_samples=prompt_samples,
                           prompt_guidance=prompt_guidance)
    spec = opt.forget_spec(forget_class, forget_index, forget_canary, forget_images, forget_prompt, forget_prompts_file)
    checkpoint = opt.load_model(model)
    split = None
    if data:
        from unlearnctl.cli.core_cmds import load_split

        split = load_split(data, resolution, channels, split_seed, canary_copies)
    heading = f"unlearning with {method} ({method_cls.summary})"
    with protect_output(out, resume_options), ProgressBars(quiet, heading) as bars:
        progress = _with_probe_lines(bars, quiet)
        result_model, result = run_unlearn(checkpoint, method, spec, config, given, data=split, progress=progress,
                                           resume=resume_options)
    save_checkpoint(result_model, out)
    resume_options.finish()
    if json_:
        print_json({**report_summary(result), "out": str(out), "sha256": result_model.sha256})
        return
    _print_result(result, out)


def _method_params(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """The given method options as ``{config field: value}`` of ``method``; an option of another method is refused."""
    from unlearnctl.errors import BadInputError
    from unlearnctl.methods import method_options

    params = {}
    for option in method_options().values():
        value = values.get(option.dest)
        if value is None:
            continue
        if method not in option.fields:
            raise BadInputError(f"{option.flag} is not a parameter of {method} (it belongs to {', '.join(option.methods)})")
        params[option.fields[method]] = value
    return params


def _with_probe_lines(bars: ProgressBars, quiet: bool):
    """The progress bars, plus one status line per forget-rate probe."""

    def progress(event) -> None:
        bars(event)
        if event.task == "probe" and not quiet:
            info = event.info
            interval = f" [{info['forget_rate_ci95_low']:.3f}, {info['forget_rate_ci95_high']:.3f}]" if "forget_rate_ci95_low" in info else ""
            bars.bars.console.print(f"step {event.step}: forget rate {info['forget_rate']:.3f}{interval}", highlight=False)

    return progress


def _print_result(result: dict[str, Any], out: Path) -> None:
    from unlearnctl.cli.ui import key_value_table

    rows = {"method": result["method"], "steps run": f"{result['steps_run']} of {result['steps']}", "stopped": result["stopped"],
            "wall time s": round(result["wall_time_s"], 2), "lr": result["lr"], "batch size": result["batch_size"]}
    rows.update({f"param {k}": v for k, v in result["method_params"].items()})
    rows.update({f"prepared {k}": v for k, v in result["prepared"].items()})
    rows.update({f"final {k}": v for k, v in result["final"].items() if k != "step"})
    if result["probes"]:
        rows["forget rate (probes)"] = " → ".join(f"{p['forget_rate']:.3f}@{p['step']}" for p in result["probes"])
    until = result.get("until")
    if until:
        probe = (f"step {until['step']}: {until['forget_rate']:.3f} ({until['forget_rate_count']}/{until['forget_rate_n']}, "
                 f"95% CI {until['forget_rate_ci95_low']:.3f}–{until['forget_rate_ci95_high']:.3f})") if "step" in until else "no probe"
        rule = "rate" if until["stop_on"] == "rate" else "upper 95% bound"
        rows["until forget rate"] = f"{rule} <= {until['target']:g}: {'reached' if until['reached'] else 'not reached'}, {probe}"
    stdout.print(key_value_table(f"unlearn → {out}", rows))
    stdout.print(f"wrote {out}")


def _register() -> None:
    """Attach the method options (from the registry) to ``unlearn``'s signature and register the command."""
    signature = inspect.signature(unlearn, eval_str=True)
    static = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    dynamic = []
    from unlearnctl.methods import method_options

    for entry in method_options().values():
        option = typer.Option(entry.flag, help=entry.describe(), rich_help_panel=METHOD_PANEL, show_default=False)
        dynamic.append(inspect.Parameter(entry.dest, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=Annotated[Optional[entry.type], option]))
    names = {p.name for p in static}
    clash = [p.name for p in dynamic if p.name in names]
    if clash:
        raise TypeError(f"method parameter {clash[0]!r} clashes with an unlearn option")
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in static]

    @functools.wraps(unlearn)
    def command(**kwargs):
        return unlearn(**kwargs)  # static options bind by name, method options land in **method_values

    del command.__wrapped__  # typer must read the signature below, not the original one
    command.__signature__ = inspect.Signature(keyword + dynamic)
    command.__annotations__ = {p.name: p.annotation for p in keyword + dynamic}
    app.command("unlearn", rich_help_panel="Unlearning")(command)


_register()
