"""Commands: ``compare`` (tables and the HTML report), ``demo`` (the whole pipeline, ``make demo``) and ``run``
(an experiment file, the demo's pipeline generalised)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from unlearnctl.cli import options as opt
from unlearnctl.cli.app import app
from unlearnctl.cli.ui import ProgressBars, ProgressLines, note, stderr, stdout

REPORT_PANEL = "Report"
EVAL_PANEL = "Evaluating checkpoints on the fly"
DEMO_PANEL = "Recipe (defaults fit 15 minutes on 2 CPU cores)"


def _output(path: Optional[Path], suffix: str) -> Optional[Path]:
    """Validate an output path before any work; ``-`` means stdout."""
    from unlearnctl.checkpoint import check_output_path

    if path is None or str(path) == "-":
        return path
    return check_output_path(path, suffix=suffix)


def _write(path: Path, text: str, quiet: bool) -> None:
    from unlearnctl.checkpoint import atomic_write_text

    if str(path) == "-":
        sys.stdout.write(text)
        return
    atomic_write_text(path, text)
    note(f"wrote {path}", quiet)


def print_comparison(comparison) -> None:
    """The tables on stdout; off a terminal (logs, CI) 160 columns wide so no cell is cut."""
    from rich.console import Console

    console = stdout if stdout.is_terminal else Console(width=160, highlight=False)
    console.print(comparison_table(comparison))


def comparison_table(comparison):
    """The comparison as rich tables (one per scenario), differences to the reference in parentheses."""
    from rich.console import Group
    from rich.table import Table

    from unlearnctl.report.compare import SIMILAR, TABLE_KEYS, TITLES, Aggregate, cell_text, format_value

    tables = []
    for scenario in comparison.scenarios:
        reference = f"reference: {scenario.reference_label}" if scenario.reference else "no reference run"
        table = Table(title=f"{scenario.label} ({reference}; 95% intervals in brackets, Δ to the reference in parentheses, "
                            f"{SIMILAR} = intervals overlap; ×N seeds = mean and t-interval over seeds)", title_justify="left")
        table.add_column("run", style="bold")
        table.add_column("method")
        for key in TABLE_KEYS:
            table.add_column(TITLES[key], justify="right")
        table.add_column("relearn gap", justify="right")
        previous = None
        for row in scenario.display_rows():
            group, attacked = (row.group, row.attacked) if isinstance(row, Aggregate) else (row.run.group, row.run.attacked)
            name = f"  ↺ {row.label}" if attacked else row.label
            style = "green" if row.is_reference else ("dim" if attacked else None)
            table.add_row(name, group if group != previous else "",
                          *[cell_text(row, key) for key in TABLE_KEYS], format_value("relearn_gap", row.relearn_gap, signed=True),
                          style=style, end_section=False)
            previous = group
        tables.append(table)
        if scenario.relearning:
            tables.append(relearning_table(scenario))
    return Group(*tables)


def relearning_table(scenario):
    """The scenario's relearning areas under each attack budget, and their difference to retrain's."""
    from rich.table import Table

    from unlearnctl.report.compare import RELEARN_TITLE, relearn_cells

    table = Table(title=RELEARN_TITLE, title_justify="left")
    for title, justify in (("model", "left"), ("attack budget", "left"), ("relearning area", "right"),
                           ("retrain's", "right"), ("Δ", "right")):
        table.add_column(title, justify=justify)
    for row in scenario.relearning:
        table.add_row(*relearn_cells(row), style="green" if row.is_reference else None)
    return table


@app.command(rich_help_panel="Attack and evaluate")
def compare(
    files: Annotated[list[Path], typer.Argument(help="Evaluation JSONs (unlearnctl evaluate --json), checkpoints (.safetensors, evaluated now) and relearning-curve JSONs (relearn-attack --curve-json).", show_default=False)],
    report: Annotated[Optional[Path], typer.Option(help="Write a self-contained HTML report (table, Pareto plot, attack bars, relearning curves, sample grids, provenance); figures also as <name>-*.png next to it.", rich_help_panel=REPORT_PANEL)] = None,
    title: Annotated[str, typer.Option(help="Title of the HTML report.", rich_help_panel=REPORT_PANEL)] = "unlearnctl report",
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write the table as CSV (one row per run, every metric and difference); - for stdout.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the table as Markdown (one table per scenario); - for stdout.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the comparison as JSON (schema unlearnctl.compare/1, docs/report.md); - for stdout.", rich_help_panel=opt.OUTPUT_PANEL)] = None,
    forget_class: opt.ForgetClass = None,
    forget_index: opt.ForgetIndex = None,
    forget_canary: opt.ForgetCanary = False,
    forget_images: opt.ForgetImages = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-n", help="Checkpoints: images to generate per model.", rich_help_panel=EVAL_PANEL)] = 1000,
    steps: Annotated[int, typer.Option(help="Checkpoints: DDIM steps.", rich_help_panel=EVAL_PANEL)] = 50,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
):
    """Compare runs: one table grouped by scenario and method, retrain as the reference, and an HTML report.

    Rows of one scenario (same training data, same forget set) go base, retrain (the reference), then each
    method followed by its attacked version (↺, matched through the lineage). Checkpoints are evaluated on
    the fly (what they forgot comes from --forget-* or their lineage).
    """
    from unlearnctl.errors import require
    from unlearnctl.report import compare as build, load_runs, write_report

    stdout_targets = [p for p in (csv, markdown, json_out) if p is not None and str(p) == "-"]
    require(len(stdout_targets) <= 1, "only one of --csv, --markdown, --json can write to stdout (-)")
    csv, markdown, json_out = _output(csv, ".csv"), _output(markdown, ".md"), _output(json_out, ".json")
    if report is not None:
        _output(report, ".html")
    eval_config = None
    if any(p.suffix == ".safetensors" for p in files):
        from unlearnctl.metrics.evaluate import EvalConfig

        eval_config = EvalConfig(num_samples=num_samples, steps=steps, seed=seed, device=device)
    spec = opt.forget_spec(forget_class, forget_index, forget_canary, forget_images)
    with ProgressBars(quiet) as progress:
        runs = load_runs(files, eval_config=eval_config, forget_spec=None if spec.empty else spec, progress=progress,
                         on_evaluate=lambda path: note(f"evaluating {path}", quiet))
    comparison = build(runs)
    if not stdout_targets:
        print_comparison(comparison)
    for warning in comparison.warnings:
        note(f"[yellow]warning:[/yellow] {warning}", quiet)
    for path, text in ((csv, comparison.to_csv), (markdown, comparison.to_markdown), (json_out, comparison.to_json)):
        if path is not None:
            _write(path, text(), quiet)
    if report is not None:
        for path in write_report(comparison, report, title=title):
            note(f"wrote {path}", quiet)


JOBS_HELP = ("Worker processes for independent stages (the seeds, the methods of one base), sharing the torch "
             "threads (OMP_NUM_THREADS, else the cores); 1 runs the stages in order in this process.")


@app.command(rich_help_panel="Attack and evaluate")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created). A rerun reuses the finished steps in it.", rich_help_panel=opt.OUTPUT_PANEL)] = Path("demo-out"),
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes (about a minute): checks the pipeline, the numbers mean nothing.", rich_help_panel=DEMO_PANEL)] = False,
    base_steps: Annotated[Optional[int], typer.Option(help="Training steps of the base models and of retrain (default 1000, the text-to-image scenario 1500; --quick 40).", rich_help_panel=DEMO_PANEL)] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated unlearning methods of the class scenario (default: every method).", rich_help_panel=DEMO_PANEL)] = None,
    no_canary: Annotated[bool, typer.Option("--no-canary", help="Skip the canary (data-unlearning) scenario.", rich_help_panel=DEMO_PANEL)] = False,
    canary_retrain: Annotated[bool, typer.Option("--canary-retrain", help="Also retrain the canary model without the canary (its reference; one more base training).", rich_help_panel=DEMO_PANEL)] = False,
    text_methods: Annotated[Optional[str], typer.Option(help="Comma-separated unlearning methods of the text-to-image scenario (default: every method for text-to-image concepts, ESD included).", rich_help_panel=DEMO_PANEL)] = None,
    no_text_to_image: Annotated[bool, typer.Option("--no-text-to-image", help="Skip the text-to-image scenario.", rich_help_panel=DEMO_PANEL)] = False,
    attack_steps: Annotated[Optional[int], typer.Option(help="DiMRA steps per attack (default 200, the text-to-image scenario 100; --quick 4).", rich_help_panel=DEMO_PANEL)] = None,
    eval_samples: Annotated[Optional[int], typer.Option(help="Images generated per evaluation (default 1000, the text-to-image scenario 500; --quick 20).", rich_help_panel=DEMO_PANEL)] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help=JOBS_HELP, rich_help_panel=DEMO_PANEL)] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the stages and exit.", rich_help_panel=opt.OUTPUT_PANEL)] = False,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
):
    """The main job: train the bases, run every unlearning method, attack every result, evaluate, compare, report.

    On the embedded digits: class scenario (forget class 8 with every method and retrain), canary scenario
    (forget a memorised canary with SISS; --canary-retrain adds its retrain) and text-to-image scenario (the
    embedded text-to-image model forgets the concept 8 with every method, ESD included, and retrain): about 47
    minutes on 2 CPU cores with --jobs 2 (docs/report.md). The demo is the
    experiment file examples/demo.toml (`unlearnctl run examples/demo.toml` does the same). Every step writes
    an ordinary checkpoint or JSON into --out, so any step can be re-run by hand; one progress line per stage
    on stderr, the comparison table and the report path on stdout.
    """
    from unlearnctl.demo import DemoConfig

    def names(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(m.strip() for m in text.split(",") if m.strip())

    config = DemoConfig(quick=quick, base_steps=base_steps, methods=names(methods), canary=not no_canary, canary_retrain=canary_retrain,
                        text_to_image=not no_text_to_image, text_methods=names(text_methods), attack_steps=attack_steps,
                        eval_samples=eval_samples, seed=seed)
    _run(config.experiment(), out, jobs, device, quiet, dry_run, "demo")


@app.command("run", rich_help_panel="Attack and evaluate")
def run_file(
    experiment: Annotated[Path, typer.Argument(help="Experiment file (TOML; docs/experiments.md). examples/demo.toml is the demo.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created). A rerun reuses the finished stages in it; a killed run resumes.", rich_help_panel=opt.OUTPUT_PANEL)] = ...,
    quick: Annotated[bool, typer.Option("--quick", help="Apply the file's [quick] table (tiny sizes to check the pipeline).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help=JOBS_HELP)] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the file, print the stages and exit.", rich_help_panel=opt.OUTPUT_PANEL)] = False,
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
):
    """Run an experiment file: bases, methods with parameters, seeds, attack budgets and evaluation, as one resumable pipeline.

    The whole file is checked before anything runs. Each stage (train, unlearn, relearn-attack, evaluate)
    writes the ordinary files of its command into --out and a record of its parameters and inputs in
    --out/stages/; a rerun skips the stages whose record still matches, so a killed run resumes and a
    changed setting re-runs only what it changes. Then compare (runs of several seeds aggregated) and report.
    """
    from unlearnctl.experiment import load_experiment

    _run(load_experiment(experiment, quick=quick), out, jobs, device, quiet, dry_run, "experiment")


def _run(experiment, out: Path, jobs: int, device: str, quiet: bool, dry_run: bool, what: str) -> None:
    """Run (or list) an experiment's stages with one progress line per stage; the table and the report path on stdout."""
    from unlearnctl.errors import require
    from unlearnctl.experiment import plan, run_experiment

    require(jobs >= 1, f"--jobs must be at least 1, got {jobs}")
    if dry_run:
        for i, name in enumerate(plan(experiment), start=1):
            stdout.print(f"{i:>3}. {name}", highlight=False)
        return
    with _StageProgress(quiet) as display:
        result = run_experiment(experiment, out, jobs=jobs, device=device, progress=display.progress if jobs == 1 else None,
                                on_stage=display.stage)
    if result.comparison is None:  # a non-main process of accelerate launch: the main one reports
        return
    print_comparison(result.comparison)
    for warning in result.comparison.warnings:
        note(f"[yellow]warning:[/yellow] {warning}", quiet)
    ran = sum(not e.reused for e in result.stages)
    stdout.print(f"{what} finished in {result.seconds:.0f} s ({ran} stages run, {len(result.stages) - ran} reused); "
                 f"files in {result.out}/", highlight=False)
    stdout.print(f"report: {result.report}", highlight=False)


class _StageProgress:
    """One line per finished stage on stderr; on a terminal, a transient bar of the running stage's loop."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.live = not quiet and stderr.is_terminal
        self.bars = Progress(TextColumn("  {task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=stderr, transient=True, disable=not self.live)
        self.tasks: dict[str, int] = {}
        # not a terminal: periodic lines of the running stage's loops (a stage can take minutes)
        self.lines = None if quiet or self.live else ProgressLines(
            lambda line: stderr.print(f"  {line}", highlight=False, soft_wrap=True))

    def __enter__(self) -> "_StageProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def progress(self, event) -> None:
        if self.lines is not None:
            self.lines(event)
        if not self.live:
            return
        if event.task not in self.tasks:
            self.tasks[event.task] = self.bars.add_task(event.task, total=event.total)
        self.bars.update(self.tasks[event.task], completed=event.step, total=event.total)

    def stage(self, event) -> None:
        for task in self.tasks.values():
            self.bars.remove_task(task)
        self.tasks.clear()
        if self.quiet:
            return
        status = "reused" if event.reused else f"{event.seconds:6.1f} s"
        width = len(str(event.total))
        self.bars.console.print(f"stage {event.index:>{width}}/{event.total}  {event.name:<58} {status}", highlight=False,
                                soft_wrap=True)
