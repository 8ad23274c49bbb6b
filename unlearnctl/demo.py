"""The main job (``unlearnctl demo``, ``make demo``): the whole story on the embedded digits, end to end.

Two scenarios:

* **class** — a class-conditional model on the digits; forget class 8 with every unlearning method and
  with exact retraining (the reference);
* **canary** — an unconditional model on the digits plus copies of one out-of-distribution canary image
  (docs/methods.md), which it memorises; forget the canary with SISS.

Every result is attacked with DiMRA (auxiliary data: the retain set, relearning curve recorded), every model
is evaluated (quality, forget rate, retain accuracy, membership audit), and everything is compared in one
table and one HTML report.

Each step is an ordinary library call writing an ordinary file into the output folder — the same files the
CLI commands write, so any step can be re-run by hand (``docs/report.md`` lists the equivalent commands)::

    base.safetensors  canary-base.safetensors          train
    <m>.safetensors   canary-siss.safetensors          unlearn (m = retrain and every method)
    <m>-attacked.safetensors, <m>-curve.json           relearn-attack
    <name>.json, <name>.png, <name>-forget.png         evaluate --json --grid
    report.html, report-*.png, comparison.{md,csv,json} compare

A rerun **reuses finished steps**: a step is skipped when its outputs exist, load, and were made from the
current version of their input (an unlearned model's ``parent_sha256`` is the base file's sha256, an
evaluation's model sha256 is the model file's). Replace a file by hand and exactly the steps downstream of
it run again. ``demo.json`` records the recipe; a folder made with another recipe is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from unlearnctl.errors import BadInputError, require
from unlearnctl.progress import ProgressFn
from unlearnctl.report.runs import CURVE_SCHEMA, EVALUATE_SCHEMA

MANIFEST = "demo.json"
MANIFEST_SCHEMA = "unlearnctl.demo/1"


def _registered(scenario: str) -> tuple[str, ...]:
    """The fine-tuning methods the registry enters in a demo scenario (each method's ``scenarios``)."""
    from unlearnctl.methods import available_methods

    return tuple(available_methods(scenario, exact=False))


@dataclass
class DemoConfig:
    """The demo's recipe (recorded in ``demo.json`` and in the report). Defaults fit ≤ 15 min on 2 CPU cores."""

    preset: str = "small"  # UNet size preset of every model
    base_steps: int = 1000  # optimizer steps of the base models and of retrain (the full recipe is 3000 × 128)
    base_batch_size: int = 64  # images per base training step
    base_lr: float = 1e-3  # AdamW peak lr (warm-up, cosine to 10%)
    warmup_steps: int = 100  # linear warm-up of base training
    forget_class: str = "8"  # class scenario: the class to forget
    methods: tuple[str, ...] = field(default_factory=lambda: _registered("class"))  # class scenario: unlearning methods (retrain always runs)
    canary: bool = True  # run the canary scenario too
    canary_methods: tuple[str, ...] = field(default_factory=lambda: _registered("canary"))  # canary scenario: unlearning methods
    canary_retrain: bool = False  # canary scenario: exact retraining as its reference (costs one more base training)
    unlearn_steps: int | None = None  # steps of every fine-tuning method (None: each method's tuned default)
    attack_steps: int = 200  # DiMRA fine-tuning steps on the retain set
    attack_batch_size: int = 64  # DiMRA images per step
    attack_lr: float = 1e-4  # DiMRA constant learning rate (the attack's default)
    curve_every: int = 100  # relearning curve: forget rate every this many attack steps
    curve_samples: int = 100  # relearning curve: forget-condition samples per point
    eval_samples: int = 1000  # evaluation: images generated per model (conditional: balanced over classes)
    eval_steps: int = 25  # evaluation: DDIM steps
    audit_repeats: int = 4  # membership audit: shared-noise repeats (the evaluate default)
    audit_max_images: int = 1000  # membership audit: cap on members and on non-members (the evaluate default)
    seed: int = 0  # seeds every step
    device: str = "auto"  # torch device

    def __post_init__(self):
        from unlearnctl.methods import get_method
        from unlearnctl.models import check_preset

        check_preset(self.preset)
        self.methods = tuple(self.methods)
        self.canary_methods = tuple(self.canary_methods)
        for name in (*self.methods, *self.canary_methods):
            require(name != "retrain", "retrain always runs as the reference; leave it out of the method list")
            get_method(name)
        require(len(set(self.methods)) == len(self.methods), f"a method is listed twice: {', '.join(self.methods)}")
        for name in ("base_steps", "base_batch_size", "attack_steps", "attack_batch_size", "curve_samples", "eval_samples",
                     "eval_steps", "audit_repeats", "audit_max_images"):
            require(getattr(self, name) >= 1, f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        require(self.unlearn_steps is None or self.unlearn_steps >= 1, f"unlearn steps must be at least 1, got {self.unlearn_steps}")
        require(self.curve_every >= 0, f"curve interval must be >= 0, got {self.curve_every}")
        require(self.eval_samples >= 10, f"evaluation needs at least 10 samples (one per class), got {self.eval_samples}")

    def recipe(self) -> dict[str, Any]:
        """What the output files depend on (the device does not enter)."""
        data = asdict(self)
        data.pop("device")
        data["methods"], data["canary_methods"] = list(self.methods), list(self.canary_methods)
        return data


def quick_config(**overrides: Any) -> DemoConfig:
    """Tiny sizes for tests and a first look (``unlearnctl demo --quick``): seconds per step, numbers meaningless."""
    values = dict(preset="tiny", base_steps=40, base_batch_size=32, warmup_steps=10, unlearn_steps=4, attack_steps=4,
                  attack_batch_size=32, curve_every=4, curve_samples=10, eval_samples=20, eval_steps=4, audit_repeats=1,
                  audit_max_images=32)
    values.update(overrides)
    return DemoConfig(**values)


@dataclass
class StageEvent:
    """One finished stage (what the progress line shows)."""

    index: int  # 1-based
    total: int
    name: str
    seconds: float
    reused: bool  # outputs were already there and current: nothing ran
    outputs: list[Path]


@dataclass
class DemoResult:
    out: Path
    report: Path
    comparison: Any  # unlearnctl.report.Comparison
    stages: list[StageEvent]
    seconds: float
    files: list[Path] = field(default_factory=list)


@dataclass
class _Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], None]
    done: Callable[[], bool]


class _Pipeline:
    """Builds the stage list and holds the models in memory between stages."""

    def __init__(self, config: DemoConfig, out: Path, progress: ProgressFn):
        self.config, self.out, self.progress = config, out, progress
        self._models: dict[str, Any] = {}
        self._splits: dict[str, Any] = {}

    # ----- files and models

    def path(self, name: str, suffix: str = ".safetensors") -> Path:
        return self.out / f"{name}{suffix}"

    def model(self, name: str):
        """The checkpoint ``<name>.safetensors`` (loaded once; ``sha256`` = the file's)."""
        from unlearnctl.checkpoint import load_checkpoint

        if name not in self._models:
            self._models[name] = load_checkpoint(self.path(name))
        return self._models[name]

    def save(self, name: str, checkpoint) -> None:
        from unlearnctl.checkpoint import save_checkpoint

        save_checkpoint(checkpoint, self.path(name))
        self._models[name] = checkpoint

    def loads(self, name: str, parent: str | None = None) -> bool:
        """``<name>.safetensors`` exists, loads, and (if ``parent``) was derived from the current parent file."""
        if not self.path(name).is_file():
            return False
        try:
            checkpoint = self.model(name)
        except BadInputError:
            self._models.pop(name, None)
            return False
        if parent is not None:
            return checkpoint.lineage[-1].get("parent_sha256") == self.model(parent).sha256
        return True

    def split(self, source: str):
        from unlearnctl.data import load_data

        if source not in self._splits:
            self._splits[source] = load_data(source)
        return self._splits[source]

    # ----- stages

    def train(self, name: str, source: str, conditional: bool, exclude=None) -> _Stage:
        from unlearnctl.training import TrainConfig, train_model

        config = self.config

        def run() -> None:
            train = TrainConfig(steps=config.base_steps, batch_size=config.base_batch_size, lr=config.base_lr,
                                warmup_steps=min(config.warmup_steps, config.base_steps), seed=config.seed)
            checkpoint = train_model(self.split(source), conditional=conditional, preset=config.preset, config=train,
                                     device=config.device, progress=self.progress)
            self.save(name, checkpoint)

        return _Stage(f"train {name} ({source}, {'conditional' if conditional else 'unconditional'})",
                      [self.path(name)], run, lambda: self.loads(name))

    def unlearn(self, name: str, base: str, method: str, spec, source: str) -> _Stage:
        from unlearnctl.unlearning import UnlearnConfig, unlearn

        config = self.config

        def run() -> None:
            steps = None if method == "retrain" else config.unlearn_steps
            loop = UnlearnConfig(steps=steps, seed=config.seed, device=config.device)
            checkpoint, _ = unlearn(self.model(base), method, spec, loop, data=self.split(source), progress=self.progress)
            self.save(name, checkpoint)

        return _Stage(f"unlearn {name} ({method})", [self.path(name)], run, lambda: self.loads(name, parent=base))

    def attack(self, name: str, spec, source: str) -> _Stage:
        from unlearnctl.attacks.dimra import AttackConfig, relearn_attack
        from unlearnctl.checkpoint import atomic_write_text

        config = self.config
        attacked, curve_path = f"{name}-attacked", self.path(f"{name}-curve", ".json")

        def run() -> None:
            attack = AttackConfig(steps=config.attack_steps, batch_size=config.attack_batch_size, lr=config.attack_lr,
                                  seed=config.seed, curve_samples=config.curve_samples, curve_sample_steps=config.eval_steps)
            checkpoint, curve = relearn_attack(self.model(name), "retain", attack, curve_forget_spec=spec,
                                               curve_every=config.curve_every, data=self.split(source),
                                               device=config.device, progress=self.progress)
            self.save(attacked, checkpoint)
            if curve is not None:
                atomic_write_text(curve_path, json.dumps(curve.to_json_dict(), indent=2) + "\n")

        def done() -> bool:
            if not self.loads(attacked, parent=name):
                return False
            return not config.curve_every or _json_object(curve_path).get("schema") == CURVE_SCHEMA

        outputs = [self.path(attacked)] + ([curve_path] if config.curve_every else [])
        return _Stage(f"attack {name} (DiMRA, {config.attack_steps} steps)", outputs, run, done)

    def evaluate(self, name: str, spec, source: str, reference: str | None = None, conditional: bool = True) -> _Stage:
        """Evaluate ``name``; ``reference`` (a retrain model) calibrates the membership audit."""
        from unlearnctl.checkpoint import atomic_write_text
        from unlearnctl.metrics.evaluate import EvalConfig, run_evaluation
        from unlearnctl.metrics.membership import AuditConfig

        config = self.config
        json_path, grid = self.path(name, ".json"), self.path(name, ".png")
        forget_grid = self.path(f"{name}-forget", ".png")

        def run() -> None:
            audit = AuditConfig(repeats=config.audit_repeats, max_images=config.audit_max_images, seed=config.seed)
            eval_config = EvalConfig(num_samples=config.eval_samples, steps=config.eval_steps, seed=config.seed, audit=audit,
                                     audit_reference=str(self.path(reference)) if reference else None, device=config.device)
            evaluation = run_evaluation(self.model(name), spec, eval_config, self.progress, split=self.split(source))
            evaluation.grids(grid)
            atomic_write_text(json_path, json.dumps(evaluation.result, indent=2, default=str) + "\n")

        def done() -> bool:
            data = _json_object(json_path)
            forget_grid_ok = forget_grid.is_file() or not conditional  # unconditional models have one grid
            if not (grid.is_file() and forget_grid_ok) or data.get("schema") != EVALUATE_SCHEMA:
                return False
            provenance = data["provenance"]
            if not self.path(name).is_file() or provenance["model"].get("sha256") != self.model(name).sha256:
                return False
            calibration = ((provenance.get("details") or {}).get("membership") or {}).get("calibration") or {}
            return reference is None or calibration.get("reference_sha256") == self.model(reference).sha256

        suffix = f" (audit: {reference})" if reference else ""
        outputs = [json_path, grid] + ([forget_grid] if conditional else [])
        return _Stage(f"evaluate {name}{suffix}", outputs, run, done)

    def stages(self) -> tuple[list[_Stage], list[str]]:
        """Every stage in order, and the evaluation names the comparison reads (in table order)."""
        from unlearnctl.data import ForgetSpec

        config = self.config
        stages: list[_Stage] = []
        compared: list[str] = []

        def scenario(prefix: str, source: str, conditional: bool, spec, methods: tuple[str, ...], retrain: bool,
                     reference: str | None) -> None:
            base = f"{prefix}base"
            stages.append(self.train(base, source, conditional))
            if retrain:
                stages.append(self.unlearn(f"{prefix}retrain", base, "retrain", spec, source))
            stages.append(self.evaluate(base, spec, source, reference, conditional))
            compared.append(base)
            for method in (("retrain",) if retrain else ()) + methods:
                name = f"{prefix}{method}"
                if method != "retrain":
                    stages.append(self.unlearn(name, base, method, spec, source))
                stages.append(self.attack(name, spec, source))
                for evaluated in (name, f"{name}-attacked"):
                    stages.append(self.evaluate(evaluated, spec, source, reference, conditional))
                    compared.append(evaluated)

        # class scenario: non-members are held-out 8s, so the plain loss attack is meaningful (docs/metrics.md)
        scenario("", "digits", True, ForgetSpec(classes=(config.forget_class,)), config.methods, True, None)
        if config.canary:
            # canary scenario: an out-of-distribution canary needs the calibrated attack, by a model that saw neither
            # the canary nor the held-out images: canary-retrain, or the class base (the same digits, no canary)
            reference = "canary-retrain" if config.canary_retrain else "base"
            scenario("canary-", "digits+canary", False, ForgetSpec(canary=True), config.canary_methods, config.canary_retrain,
                     reference)
        return stages, compared


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing or not an object (the step is then not done)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_manifest(out: Path, recipe: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is None:
        raise BadInputError(f"{path} is not a demo manifest; use another --out folder")
    changed = [f"{k} {recorded.get(k)!r} → {v!r}" for k, v in recipe.items() if recorded.get(k) != v]
    if changed:
        raise BadInputError(f"{out} holds a demo made with another recipe ({'; '.join(changed)}); "
                            "use another --out folder or delete it")


def plan(config: DemoConfig, out: str | Path) -> list[str]:
    """The stage names, in order (what ``unlearnctl demo --dry-run`` prints)."""
    stages, _ = _Pipeline(config, Path(out), None).stages()
    return [stage.name for stage in stages] + ["compare and write the report"]


def run_demo(
    config: DemoConfig | None = None,
    out: str | Path = "demo-out",
    *,
    progress: ProgressFn = None,
    on_stage: Callable[[StageEvent], None] | None = None,
) -> DemoResult:
    """Run (or resume) the demo into ``out``; returns the comparison and the report path.

    Args:
        config: the recipe (default :class:`DemoConfig`, sized for ≤ 15 min on 2 CPU cores).
        out: output folder (created; a folder made with another recipe is refused).
        progress: progress callback of the loops inside each stage (training steps, sampling, ...).
        on_stage: called with a :class:`StageEvent` after every stage, reused or run.
    """
    from unlearnctl.checkpoint import atomic_write_text, now_utc, reproducible
    from unlearnctl.report import compare, load_runs, write_report

    config = config or DemoConfig()
    out = Path(out)
    require(not out.exists() or out.is_dir(), f"--out {out} exists and is not a folder")
    require(out.parent.is_dir(), f"folder {out.parent} does not exist; create it first")
    recipe = config.recipe()
    _check_manifest(out, recipe)
    out.mkdir(exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps({"schema": MANIFEST_SCHEMA, "recipe": recipe, "stages": None}, indent=2) + "\n")

    pipeline = _Pipeline(config, out, progress)
    stages, compared = pipeline.stages()
    total = len(stages) + 1
    started = time.perf_counter()
    events: list[StageEvent] = []
    for index, stage in enumerate(stages, start=1):
        tick = time.perf_counter()
        reused = stage.done()
        if not reused:
            stage.run()
        event = StageEvent(index, total, stage.name, time.perf_counter() - tick, reused, stage.outputs)
        events.append(event)
        if on_stage is not None:
            on_stage(event)

    # the comparison and the report: always redone (seconds), from the files on disk
    tick = time.perf_counter()
    curves = [pipeline.path(f"{name[:-len('-attacked')]}-curve", ".json") for name in compared if name.endswith("-attacked")]
    runs = load_runs([pipeline.path(name, ".json") for name in compared] + [c for c in curves if c.is_file()])
    comparison = compare(runs)
    report = out / "report.html"
    report_recipe = {**_describe_recipe(config), "stage seconds": None if reproducible() else
                     {e.name: round(e.seconds, 1) for e in events if not e.reused}}
    written = write_report(comparison, report, title="unlearnctl demo — digits", recipe=report_recipe)
    for suffix, text in ((".md", comparison.to_markdown()), (".csv", comparison.to_csv()), (".json", comparison.to_json())):
        atomic_write_text(out / f"comparison{suffix}", text)
        written.append(out / f"comparison{suffix}")
    event = StageEvent(total, total, "compare and write the report", time.perf_counter() - tick, False, written)
    events.append(event)
    if on_stage is not None:
        on_stage(event)
    seconds = time.perf_counter() - started
    manifest = {"schema": MANIFEST_SCHEMA, "recipe": recipe, "finished": now_utc(),
                "seconds": None if reproducible() else round(seconds, 1),
                "stages": [{"name": e.name, "seconds": None if reproducible() else round(e.seconds, 2), "reused": e.reused,
                            "outputs": [p.name for p in e.outputs]} for e in events]}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    files = [p for e in events for p in e.outputs]
    return DemoResult(out, report, comparison, events, seconds, files)


def _method_defaults(config: DemoConfig) -> str:
    """``"siss 400 steps, lr 0.0002 constant, batch 64; ..."`` for the methods the demo runs."""
    from unlearnctl.methods import get_method

    names = dict.fromkeys((*config.methods, *config.canary_methods))
    parts = []
    for name in names:
        defaults = get_method(name).defaults
        ema = f", EMA {defaults['ema_decay']:g}" if defaults["ema_decay"] else ""
        parts.append(f"{name} {defaults['steps']} steps, lr {defaults['lr']:g} {defaults['lr_schedule']}, "
                     f"batch {defaults['batch_size']}{ema}")
    return "; ".join(parts)


def _describe_recipe(config: DemoConfig) -> dict[str, Any]:
    """The recipe in words, for the report."""
    unlearn = f"{config.unlearn_steps} steps" if config.unlearn_steps else "each method's tuned defaults: " + _method_defaults(config)
    return {
        "data": "scikit-learn digits (8×8, 1,797 images; 80% train / 20% held out, split seed 0); "
                "canary scenario: digits + 2% copies of one drawn canary image",
        "models": f"UNet2DModel preset {config.preset!r}; class scenario conditional (null class for guidance), canary scenario unconditional",
        "base training": f"{config.base_steps} steps × batch {config.base_batch_size}, AdamW lr {config.base_lr:g} "
                         f"(warm-up {config.warmup_steps}, cosine to 10%), EMA 0.999 — the full `train` recipe is 3000 × 128",
        "class scenario": f"forget class {config.forget_class}: retrain (reference, base recipe without the class) and "
                          + ", ".join(config.methods),
        "canary scenario": ("forget the canary: " + ", ".join((("retrain",) if config.canary_retrain else ()) + config.canary_methods))
                           if config.canary else "off",
        "unlearning": unlearn,
        "attack": f"DiMRA on the retain set: {config.attack_steps} steps × batch {config.attack_batch_size}, constant lr "
                  f"{config.attack_lr:g}; curve every {config.curve_every} steps with {config.curve_samples} samples (DDIM {config.eval_steps})",
        "evaluation": f"{config.eval_samples} samples per model (class scenario: balanced over the 10 classes), DDIM "
                      f"{config.eval_steps}, guidance 1, seed {config.seed}; FID/KID/precision/recall in the domain "
                      f"classifier's feature space; membership audit: {config.audit_repeats} repeats, at most "
                      f"{config.audit_max_images} members/non-members; canary scenario calibrated by "
                      f"{'canary-retrain' if config.canary_retrain else 'the class base (same digits, never saw the canary)'}",
        "recipe fields": config.recipe(),
    }
