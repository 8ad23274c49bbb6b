"""The main job (``unlearnctl demo``, ``make demo``): the whole story on the embedded digits, end to end.

The demo is an experiment file, ``unlearnctl/experiments/demo.toml`` (a copy is ``examples/demo.toml``), run by
:func:`unlearnctl.experiment.run_experiment` — ``unlearnctl demo`` is ``unlearnctl run examples/demo.toml``
with a few overrides (:class:`DemoConfig`). Three scenarios (``--no-canary`` and ``--no-text-to-image`` skip one):

* **class** — a class-conditional model on the digits; forget class 8 with every unlearning method and
  with exact retraining (the reference);
* **canary** — an unconditional model on the digits plus copies of one out-of-distribution canary image
  (docs/methods.md), which it memorises; forget the canary with SISS;
* **t2i** — the embedded latent text-to-image model on the captioned digits; forget the concept "8" (its
  images and captions) with every method for text-to-image models (ESD included) and with exact retraining,
  at demo sizes (the file says which).

Every result is attacked with DiMRA (auxiliary data: the retain set, relearning curve recorded), every model
is evaluated (quality, forget rate, retain accuracy, membership audit), and everything is compared in one
table and one HTML report.

Each step is an ordinary library call writing an ordinary file into the output folder — the same files the
CLI commands write, so any step can be re-run by hand (``docs/report.md`` lists the equivalent commands)::

    base.safetensors  canary-base.safetensors          train
    t2i-base.safetensors                              train --text-to-image
    <m>.safetensors   canary-siss.safetensors          unlearn (m = retrain and every method; t2i-<m> too)
    <m>-attacked.safetensors, <m>-curve.json           relearn-attack
    <name>.json, <name>.png, <name>-forget.png         evaluate --json --grid
    report.html, report-*.png, comparison.{md,csv,json} compare
    experiment.json, stages/*.json                     the recipe; per stage its parameters and inputs

A rerun **reuses finished steps**, a killed run resumes, a changed setting re-runs exactly the steps it
changes, and a file replaced by hand re-runs exactly the steps downstream of it (:mod:`unlearnctl.experiment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from unlearnctl.errors import require
from unlearnctl.experiment import Experiment, ExperimentResult, StageEvent, parse_experiment, read_toml, run_experiment, with_quick
from unlearnctl.progress import ProgressFn

DEMO_FILE = Path(__file__).parent / "experiments" / "demo.toml"
DemoResult = ExperimentResult
__all__ = ["DEMO_FILE", "DemoConfig", "DemoResult", "StageEvent", "plan", "quick_config", "run_demo"]


@dataclass
class DemoConfig:
    """``unlearnctl demo``'s options: overrides of the demo file (``None``: the file's value)."""

    quick: bool = False  # the file's [quick] sizes (tiny models; checks the pipeline, the numbers mean nothing)
    base_steps: int | None = None  # training steps of the base models and of retrain
    methods: tuple[str, ...] | None = None  # class scenario: unlearning methods (retrain always runs)
    canary: bool = True  # run the canary scenario too
    canary_methods: tuple[str, ...] | None = None  # canary scenario: unlearning methods
    canary_retrain: bool = False  # canary scenario: exact retraining as its reference (one more base training)
    text_to_image: bool = True  # run the text-to-image scenario too
    text_methods: tuple[str, ...] | None = None  # text-to-image scenario: unlearning methods (retrain always runs)
    attack_steps: int | None = None  # DiMRA steps of every attack
    eval_samples: int | None = None  # evaluation: images generated per model
    seed: int | None = None  # the experiment's one seed

    def __post_init__(self):
        if self.methods is not None:
            self.methods = tuple(self.methods)
        if self.canary_methods is not None:
            self.canary_methods = tuple(self.canary_methods)
        if self.text_methods is not None:
            self.text_methods = tuple(self.text_methods)
            require(self.text_to_image, "--text-methods chooses the text-to-image scenario's methods; drop --no-text-to-image")
        self.experiment()  # validates: a bad option fails here, before any work

    def experiment(self) -> Experiment:
        """The demo file with these overrides applied, validated."""
        data = read_toml(DEMO_FILE)
        if self.quick:
            data = with_quick(data, str(DEMO_FILE))
        data.pop("quick", None)
        scenarios = {s["name"]: s for s in data["scenarios"]}
        if self.base_steps is not None:
            data["train"]["steps"] = self.base_steps
            for scenario in scenarios.values():  # a scenario's own training steps too
                scenario.get("train", {}).pop("steps", None)
        if self.methods is not None:
            scenarios["class"]["methods"] = list(self.methods)
        if self.canary_methods is not None:
            scenarios["canary"]["methods"] = list(self.canary_methods)
        if self.canary_retrain:
            scenarios["canary"].update(retrain=True, audit_reference="canary.retrain")
        if self.text_methods is not None:
            scenarios["t2i"]["methods"] = list(self.text_methods)
        if not self.canary:
            data["scenarios"] = [s for s in data["scenarios"] if s["name"] != "canary"]
        if not self.text_to_image:
            data["scenarios"] = [s for s in data["scenarios"] if s["name"] != "t2i"]
        if self.attack_steps is not None:
            for attack in data["attacks"] + [a for s in scenarios.values() for a in s.get("attacks", [])]:
                attack["steps"] = self.attack_steps
        if self.eval_samples is not None:
            data["evaluation"]["num_samples"] = self.eval_samples
            for scenario in scenarios.values():  # a scenario's own sample count too
                scenario.get("evaluation", {}).pop("num_samples", None)
        if self.seed is not None:
            data["seeds"] = [self.seed]
        return parse_experiment(data, str(DEMO_FILE))


def quick_config(**overrides: Any) -> DemoConfig:
    """Tiny sizes for tests and a first look (``unlearnctl demo --quick``): seconds per step, numbers meaningless."""
    return DemoConfig(quick=True, **overrides)


def plan(config: DemoConfig | None = None, out: str | Path | None = None) -> list[str]:
    """The stage names, in order (what ``unlearnctl demo --dry-run`` prints); ``out`` is not read."""
    from unlearnctl.experiment import plan as experiment_plan

    return experiment_plan((config or DemoConfig()).experiment())


def run_demo(
    config: DemoConfig | None = None,
    out: str | Path = "demo-out",
    *,
    jobs: int = 1,
    device: str = "auto",
    progress: ProgressFn = None,
    on_stage: Callable[[StageEvent], None] | None = None,
) -> ExperimentResult:
    """Run (or resume) the demo into ``out``; returns the comparison and the report path.

    Args:
        config: the overrides (default :class:`DemoConfig`: the file as it is; docs/report.md has its time).
        out: output folder (created; finished steps in it are reused).
        jobs: worker processes for independent stages (1 = sequential, in order).
        device: torch device.
        progress: progress callback of the loops inside each stage (training steps, sampling, ...).
        on_stage: called with a :class:`~unlearnctl.experiment.StageEvent` after every stage, reused or run.
    """
    config = config or DemoConfig()
    require(jobs >= 1, f"--jobs must be at least 1, got {jobs}")
    return run_experiment(config.experiment(), out, jobs=jobs, device=device, progress=progress, on_stage=on_stage)
