"""Experiment files: a declarative experiment (TOML) run as a resumable pipeline of stages.

An experiment names its **scenarios** (training data, the model — a pixel UNet, conditional or not, or the
embedded latent text-to-image model — what to forget, which methods and their parameters), the **seeds**, the
**attacks** (DiMRA budgets: steps, learning rate, auxiliary data) and the **evaluation** settings. :func:`run_experiment` turns it into stages — ``train`` a base per scenario and
seed, ``unlearn`` with every method (and ``retrain``, the reference), ``attack`` every unlearned model with
every budget, ``evaluate`` every model — then compares everything and writes the report. ``unlearnctl demo``
is one such file (``unlearnctl/experiments/demo.toml``, also ``examples/demo.toml``); docs/experiments.md
describes every key.

**Seeds.** ``seeds`` trains a base per seed; every stage of that base uses its seed. ``unlearn_seeds`` also repeats
each method's unlearning run (and its attacks) on every base with each of those seeds — the spread of a method
on one base; evaluations keep the base's seed (the same sampling noise), retrain the base's.

**Files.** Every stage writes ordinary files into the output folder — the files the CLI commands write, so any
stage can be re-run by hand. Names: ``[PREFIX]MODEL[-seedK][-useedU][-attacked[-ATTACK]]`` (``-seedK`` only when
the experiment has several seeds, ``-useedU`` only with ``unlearn_seeds``, ``-ATTACK`` only when it has several
attacks; PREFIX is the scenario's) with
``.safetensors`` (model), ``.json`` / ``.png`` / ``-forget.png`` (evaluation) and ``-curve.json`` (relearning
curve). The file stems are the run names ``compare`` shows.

**Resuming.** After a stage has written its outputs (each atomically) it writes ``stages/<stage>.json``: the
sha256 of its parameters (``params_digest``) and of every input file. A stage is *done* when that record
exists, its parameters are unchanged, its outputs exist and its inputs are the files it was made from.
A rerun reuses done stages; a killed run (any signal, any moment) resumes with the stage it was in; a
changed parameter or a file replaced by hand re-runs exactly the stages downstream of it.

**Several processes.** Under ``accelerate launch`` every process runs every stage (each library call splits its
work between them, the main process writes the files), the main process deciding which stages are done.

**Parallel.** ``jobs > 1`` runs independent stages (e.g. the seeds, or the methods of one base) in that many
worker processes, sharing this process' torch threads (``OMP_NUM_THREADS``, else the cores) between them. Sequential (``jobs = 1``) is the default and runs
the stages in the listed order.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unlearnctl.errors import BadInputError, require
from unlearnctl.progress import ProgressFn

MANIFEST = "experiment.json"
MANIFEST_SCHEMA = "unlearnctl.experiment/1"
STAGE_SCHEMA = "unlearnctl.stage/1"
STAGES = "stages"  # folder of the per-stage records
RESERVED = ("report", "comparison", "experiment")  # file stems the run itself writes
TOP_KEYS = ("title", "seeds", "unlearn_seeds", "train", "scenarios", "unlearn", "attacks", "evaluation", "quick")
SCENARIO_KEYS = ("name", "prefix", "data", "model", "conditional", "forget", "retrain", "methods", "audit_reference",
                 "train", "unlearn", "evaluation", "attacks")
SETTINGS = ("train", "unlearn", "evaluation")  # tables a scenario may override for itself (the experiment's otherwise)
MODELS = ("pixel", "text-to-image")  # a scenario's kind of model: a pixel UNet2DModel, or the embedded latent text-to-image model
FORGET_KEYS = ("classes", "indices", "canary", "images", "prompts")
EVAL_KEYS = ("num_samples", "steps", "sampler", "guidance", "audit_repeats", "audit_max_images", "bootstrap_rounds", "metrics")
ATTACK_EXTRA = ("name", "aux", "curve_every")  # attack keys beyond AttackConfig's fields


# --------------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Scenario:
    """One training set and forget set: a base per seed, retrain (optional) and the methods."""

    name: str
    prefix: str  # file-name prefix of its models ("" or "canary-")
    data: str  # data source (unlearnctl.data.load_data)
    conditional: bool  # class-conditional pixel model (text-to-image: True, conditioned on prompts)
    forget: dict[str, Any]  # ForgetSpec.to_dict()
    retrain: bool  # exact retraining as the reference
    methods: dict[str, dict[str, Any]]  # run name → its parameters (loop and method-specific; "method": the
                                        # registered method when the run name is not one, e.g. a grid point)
    audit_reference: tuple[str, str] | None  # (scenario, "base" or "retrain") calibrating the membership audit
    model: str = "pixel"  # MODELS: "text-to-image" trains the embedded latent text-to-image model
    train: dict[str, Any] = field(default_factory=dict)  # its own [train] keys (over the experiment's)
    unlearn: dict[str, Any] = field(default_factory=dict)  # its own [unlearn] keys
    evaluation: dict[str, Any] = field(default_factory=dict)  # its own [evaluation] keys
    attacks: "tuple[Attack, ...] | None" = None  # its own [[attacks]], instead of the experiment's (None: those)

    @property
    def text(self) -> bool:
        return self.model == "text-to-image"

    @property
    def forget_spec(self):
        from unlearnctl.data import ForgetSpec

        return ForgetSpec.from_dict(self.forget)


@dataclass(frozen=True)
class Attack:
    name: str  # "" when the experiment has one attack (files `<model>-attacked`), else the suffix
    aux: str  # auxiliary data (relearn-attack --aux): retain[:FRACTION], generated[:COUNT], folder:PATH, npz:PATH
    curve_every: int  # relearning curve: forget rate every this many steps (0 = none)
    config: dict[str, Any]  # AttackConfig fields (seed set per run)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file (:func:`load_experiment`)."""

    title: str
    seeds: tuple[int, ...]
    preset: str
    train: dict[str, Any]  # TrainConfig fields (seed set per run)
    scenarios: tuple[Scenario, ...]
    unlearn: dict[str, Any]  # UnlearnConfig fields every method gets (its own parameters win)
    attacks: tuple[Attack, ...]
    evaluation: dict[str, Any]  # EVAL_KEYS
    source: dict[str, Any] = field(default_factory=dict, compare=False)  # the file's data (after --quick)
    autoencoder_steps: int | None = None  # [train] autoencoder_steps (text-to-image scenarios; None: the library's)
    unlearn_seeds: tuple[int, ...] = ()  # seeds of the unlearning runs and their attacks, per base (empty: the base's)

    def train_for(self, scenario: Scenario) -> dict[str, Any]:
        """The ``train`` parameters of ``scenario``'s base: TrainConfig fields, plus ``preset`` (pixel) or
        ``autoencoder_steps`` (text-to-image)."""
        own = dict(scenario.train)
        if not scenario.text:  # the plain form of a pixel scenario: exactly the experiment's (stage digests unchanged)
            return {**self.train, **own, "preset": own.pop("preset", self.preset)}
        from unlearnctl.text_to_image import AUTOENCODER_STEPS

        steps = own.pop("autoencoder_steps", self.autoencoder_steps or AUTOENCODER_STEPS)
        return {**self.train, **own, "autoencoder_steps": steps}

    def unlearn_for(self, scenario: Scenario) -> dict[str, Any]:
        """The loop settings every method of ``scenario`` gets."""
        return {**self.unlearn, **scenario.unlearn}

    def attacks_for(self, scenario: Scenario) -> tuple[Attack, ...]:
        """The attacks on ``scenario``'s models: its own ``attacks``, else the experiment's."""
        return self.attacks if scenario.attacks is None else scenario.attacks

    def evaluation_for(self, scenario: Scenario) -> dict[str, Any]:
        """The ``[evaluation]`` settings of ``scenario``'s models."""
        return {**self.evaluation, **scenario.evaluation}

    def recipe(self) -> dict[str, Any]:
        """Everything the outputs depend on, as JSON (recorded in ``experiment.json``)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return json.loads(json.dumps(data))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file's data; a missing or malformed file raises :class:`BadInputError`."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a dependency there)
        import tomli as tomllib
    path = Path(path)
    require(path.is_file(), f"experiment file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInputError(f"{path} is not valid TOML: {exc}") from None


def load_experiment(path: str | Path, *, quick: bool = False) -> Experiment:
    """Read and validate an experiment file; ``quick`` applies its ``[quick]`` table first."""
    return parse_experiment(read_toml(path), str(path), quick=quick)


def with_quick(data: dict[str, Any], origin: str = "experiment") -> dict[str, Any]:
    """``data`` with its ``[quick]`` table applied (and removed). Its ``train``, ``unlearn`` and ``evaluation`` keys
    also win over a scenario's own, and its ``attacks`` replace a scenario's: ``--quick`` sizes are tiny everywhere
    (unless it replaces the scenarios)."""
    require("quick" in data, f"{origin} has no quick table; --quick needs one")
    quick = _table(data["quick"], f"{origin} table quick")
    require("quick" not in quick, f"{origin}: table quick cannot hold a quick table")
    merged = merge({k: v for k, v in data.items() if k != "quick"}, quick)
    if "scenarios" not in quick and isinstance(merged.get("scenarios"), list):
        for scenario in merged["scenarios"]:
            for key in SETTINGS:
                if isinstance(scenario, dict) and isinstance(scenario.get(key), dict) and isinstance(quick.get(key), dict):
                    scenario[key] = {k: v for k, v in scenario[key].items() if k not in quick[key]}
            if isinstance(scenario, dict) and "attacks" in quick:
                scenario.pop("attacks", None)
    return merged


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: tables merge key by key, everything else (arrays too) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _table(value: Any, where: str) -> dict[str, Any]:
    require(isinstance(value, dict), f"{where} must be a table, got {type(value).__name__}")
    return value


def _known(table: dict[str, Any], keys, where: str) -> None:
    unknown = sorted(set(table) - set(keys))
    require(not unknown, f"unknown key {unknown[0]!r} in {where}; its keys are: {', '.join(keys)}" if unknown else "")


def _fields(cls, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


def _build(cls, values: dict[str, Any], where: str, exclude: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
    """``cls(**values)`` after checking every key is one of its fields or ``extra`` (its own checks then run)."""
    _known(values, extra + _fields(cls, exclude), where)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in values.items():
        _check_type(value, defaults.get(key), f"{where}: {key}")
    try:
        return cls(**values)
    except TypeError as exc:  # a wrong type the dataclass' checks trip over
        raise BadInputError(f"{where}: {exc}") from None


def _check_type(value: Any, default: Any, where: str) -> None:
    """A value of the default's kind (numbers for numbers, true/false for flags, text for text)."""
    if isinstance(default, bool):
        require(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}")
    elif isinstance(default, str):
        require(isinstance(value, str), f"{where} must be a string, got {value!r}")


def parse_experiment(data: dict[str, Any], origin: str = "experiment", *, quick: bool = False) -> Experiment:
    """Validate the whole experiment up front; the first problem raises :class:`BadInputError` (one line)."""
    from unlearnctl.models import check_preset
    from unlearnctl.training import TrainConfig
    from unlearnctl.unlearning import UnlearnConfig

    data = _table(data, origin)
    _known(data, TOP_KEYS, origin)
    if quick:
        data = with_quick(data, origin)
    source = {k: v for k, v in data.items() if k != "quick"}
    if "quick" in data:
        _known(_table(data["quick"], f"{origin} table quick"), [k for k in TOP_KEYS if k != "quick"], f"{origin} table quick")

    title = data.get("title", "unlearnctl experiment")
    require(isinstance(title, str), f"title must be a string, got {title!r}")
    seeds = data.get("seeds", [0])
    require(isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds),
            f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    require(len(set(seeds)) == len(seeds), f"a seed is listed twice: {seeds}")
    unlearn_seeds = data.get("unlearn_seeds", [])
    require(isinstance(unlearn_seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                    for s in unlearn_seeds),
            f"unlearn_seeds must be a list of integers >= 0, got {unlearn_seeds!r}")
    require(len(set(unlearn_seeds)) == len(unlearn_seeds), f"an unlearning seed is listed twice: {unlearn_seeds}")

    train = dict(_table(data.get("train", {}), "table train"))
    preset = train.pop("preset", "small")
    require(isinstance(preset, str), f"train.preset must be a string, got {preset!r}")
    check_preset(preset)
    autoencoder_steps = train.pop("autoencoder_steps", None)  # text-to-image scenarios only (pixel ones have none)
    if autoencoder_steps is not None:
        _check_autoencoder_steps(autoencoder_steps, "train.autoencoder_steps")
    _build(TrainConfig, train, "table train", exclude=("seed",), extra=("preset",))

    unlearn_keys = _fields(UnlearnConfig, exclude=("seed", "device", "precision"))
    unlearn = dict(_table(data.get("unlearn", {}), "table unlearn"))
    _build(UnlearnConfig, unlearn, "table unlearn", exclude=("seed", "device", "precision"))
    evaluation = _evaluation(_table(data.get("evaluation", {}), "table evaluation"), "evaluation")

    raw_scenarios = data.get("scenarios")
    require(isinstance(raw_scenarios, list) and raw_scenarios, "the experiment needs at least one scenario (an array of tables named scenarios)")
    scenarios = [_scenario(_table(raw, f"scenario #{i + 1}"), i, unlearn_keys) for i, raw in enumerate(raw_scenarios)]
    for scenario in scenarios:  # its own settings over the experiment's, checked as a whole
        where = f"scenario {scenario.name}"
        own = {k: v for k, v in scenario.train.items() if k not in ("preset", "autoencoder_steps")}
        _build(TrainConfig, {**train, **own}, f"{where}: train", exclude=("seed",))
        _build(UnlearnConfig, {**unlearn, **scenario.unlearn}, f"{where}: unlearn", exclude=("seed", "device", "precision"))
        if scenario.evaluation:
            _evaluation({**evaluation, **scenario.evaluation}, f"{where}: evaluation")
    names = [s.name for s in scenarios]
    require(len(set(names)) == len(names), f"a scenario name is used twice: {', '.join(names)}")
    prefixes = [s.prefix for s in scenarios]
    require(len(set(prefixes)) == len(prefixes), f"two scenarios have the same file prefix: {prefixes}")
    for index, scenario in enumerate(scenarios):
        if scenario.audit_reference is not None:
            other, model = scenario.audit_reference
            require(other in names, f"scenario {scenario.name}: audit_reference names unknown scenario {other!r}; "
                    f"scenarios: {', '.join(names)}")
            require(names.index(other) <= index, f"scenario {scenario.name}: audit_reference {other} must be listed before it")
            target = scenarios[names.index(other)]
            require(model == "base" or target.retrain, f"scenario {scenario.name}: audit_reference {other}.retrain, but "
                    f"scenario {other} has retrain = false")
            require((other, model) != (scenario.name, "base"), f"scenario {scenario.name}: its own base saw its forget set; "
                    "the audit reference must never have seen it")

    attacks = _attacks(data.get("attacks", []))
    experiment = Experiment(title, tuple(seeds), preset, train, tuple(scenarios), unlearn, tuple(attacks), evaluation, source,
                            autoencoder_steps, tuple(unlearn_seeds))
    stems = [stem for stage in build_stages(experiment) for stem in stage.outputs]
    clash = sorted({s for s in stems if stems.count(s) > 1 or Path(s).stem in RESERVED})
    require(not clash, f"two stages would write {clash[0]} (or it is a name the run itself writes); give the scenarios "
            "distinct prefixes" if clash else "")
    return experiment


def _evaluation(table: dict[str, Any], where: str) -> dict[str, Any]:
    """An ``[evaluation]`` table checked, with the defaults filled in (``where``: its name in messages)."""
    evaluation = dict(table)
    _known(evaluation, EVAL_KEYS, f"table {where}" if where == "evaluation" else where)
    for key, value in evaluation.items():
        if key == "metrics":  # metric groups to run (evaluate --metric); absent = every one that applies
            require(isinstance(value, list) and value and all(isinstance(m, str) for m in value),
                    f"{where}.metrics must be a non-empty list of metric groups, got {value!r}")
            continue
        _check_type(value, "ddim" if key == "sampler" else 1, f"{where}.{key}")
    evaluation = {"num_samples": 1000, "steps": 25, "audit_repeats": 4, "audit_max_images": 1000} | evaluation
    require(isinstance(evaluation["num_samples"], int) and evaluation["num_samples"] >= 10,
            f"{where}.num_samples must be at least 10 (one per class), got {evaluation['num_samples']!r}")
    _eval_config(evaluation, seed=0, reference=None, device="cpu")
    return evaluation


def _check_autoencoder_steps(value: Any, where: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{where} must be an integer >= 1, got {value!r}")


def _scenario(raw: dict[str, Any], index: int, unlearn_keys: tuple[str, ...]) -> Scenario:
    from unlearnctl.methods import available_methods, get_method

    where = f"scenario #{index + 1}"
    _known(raw, SCENARIO_KEYS, where)
    name = raw.get("name")
    require(isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum(),
            f"{where}: name must be a word (letters, digits, - or _), got {name!r}")
    where = f"scenario {name}"
    prefix = raw.get("prefix", f"{name}-")
    require(isinstance(prefix, str) and (not prefix or prefix.replace("-", "").replace("_", "").isalnum()),
            f"{where}: prefix must be letters, digits, - or _ (or empty), got {prefix!r}")
    data = raw.get("data")
    require(isinstance(data, str) and data, f"{where}: data (the training data source, e.g. \"digits\") is required")
    model = raw.get("model", "pixel")
    require(model in MODELS, f"{where}: model must be one of {', '.join(MODELS)}, got {model!r}")
    text = model == "text-to-image"
    require(not (text and "conditional" in raw), f"{where}: conditional is for pixel models; a text-to-image model is "
            "conditioned on its prompts (remove the key)")
    conditional = raw.get("conditional", True)
    require(isinstance(conditional, bool), f"{where}: conditional must be true or false, got {conditional!r}")
    forget = _table(raw.get("forget", {}), f"{where}: forget")
    _known(forget, FORGET_KEYS, f"{where}: forget")
    prompts = forget.get("prompts", [])
    require(isinstance(prompts, list) and all(isinstance(p, str) and p.strip() for p in prompts),
            f"{where}: forget.prompts must be a list of prompts, got {prompts!r}")
    require(text or not prompts, f"{where}: forget.prompts names a concept of a text-to-image model; this scenario "
            "trains a pixel model (set model = \"text-to-image\", or forget classes)")
    forget = {"classes": [str(c) for c in forget.get("classes", [])], "indices": list(forget.get("indices", [])),
              "canary": bool(forget.get("canary", False)), "images": forget.get("images")}
    if prompts:  # ForgetSpec.to_dict's form: the key only when there are prompts
        forget["prompts"] = list(prompts)
    require(forget["classes"] or forget["indices"] or forget["canary"] or forget["images"] or prompts,
            f"{where}: forget is empty; give classes, indices, canary = true, images" + (" or prompts" if text else ""))
    retrain = raw.get("retrain", True)
    require(isinstance(retrain, bool), f"{where}: retrain must be true or false, got {retrain!r}")
    settings = {key: dict(_table(raw.get(key, {}), f"{where}: {key}")) for key in SETTINGS}
    if "autoencoder_steps" in settings["train"]:
        require(text, f"{where}: train.autoencoder_steps is for text-to-image scenarios (model = \"text-to-image\"); "
                "a pixel model has no autoencoder")
        _check_autoencoder_steps(settings["train"]["autoencoder_steps"], f"{where}: train.autoencoder_steps")
    if "preset" in settings["train"]:
        require(not text, f"{where}: train.preset sizes a pixel UNet; a text-to-image scenario trains the embedded "
                "text-to-image UNet (remove the key)")
        from unlearnctl.models import check_preset

        require(isinstance(settings["train"]["preset"], str), f"{where}: train.preset must be a string")
        check_preset(settings["train"]["preset"])

    # the registry's scenario kinds (Method.scenarios): pixel models forget a class or training data (canary);
    # text-to-image models forget a concept (classes or prompts) or training data
    kind = ("concept" if text else "class") if forget["classes"] or prompts else "canary"
    methods_raw = raw.get("methods", "all")
    if methods_raw == "all":
        methods = {m: {} for m in available_methods(kind, exact=False)}
    elif isinstance(methods_raw, list):
        require(all(isinstance(m, str) for m in methods_raw), f"{where}: methods must be names, got {methods_raw!r}")
        require(len(set(methods_raw)) == len(methods_raw), f"{where}: a method is listed twice: {', '.join(methods_raw)}")
        methods = {m: {} for m in methods_raw}
    elif isinstance(methods_raw, dict):
        methods = {m: dict(_table(p, f"{where}: methods.{m}")) for m, p in methods_raw.items()}
        for run, params in methods.items():  # a run named other than its method (a grid point): method = "NAME"
            require(run.replace("-", "").replace("_", "").isalnum() and run not in ("base", "retrain"),
                    f"{where}: methods.{run}: a run name must be a word (letters, digits, - or _), not base or retrain")
            method = params.get("method", run)
            require(isinstance(method, str), f"{where}: methods.{run}.method must be a method name, got {method!r}")
            require(method == run or run not in available_methods(),
                    f"{where}: methods.{run} is a method's name; it cannot run method {method!r} (name the run otherwise)")
            if method == run:
                params.pop("method", None)  # the plain form: the run is the method (recipes and stage digests unchanged)
    else:
        raise BadInputError(f"{where}: methods must be \"all\", a list of names or a table of name = {{parameters}}, "
                            f"got {methods_raw!r}")
    for run, params in methods.items():
        method = params.get("method", run)
        require(method != "retrain", f"{where}: retrain is the reference; set retrain = true instead of listing it")
        cls = get_method(method)
        require(not cls.exact, f"{where}: {method} is an exact method; only fine-tuning methods are listed")
        family = "text-to-image" if text else "pixel"
        require(family in cls.models, f"{where}: method {method} runs on {' and '.join(cls.models)} models only, and "
                f"this scenario's model is {family}; list one of: {', '.join(available_methods(exact=False, model=family))}")
        cls.Config.from_dict({k: v for k, v in params.items() if k not in unlearn_keys + ("method",)}, method)

    reference = raw.get("audit_reference")
    if reference is not None:
        require(isinstance(reference, str), f"{where}: audit_reference must be a string, got {reference!r}")
        other, _, which = reference.rpartition(".")
        other = other or name
        require(which in ("base", "retrain"), f"{where}: audit_reference must be SCENARIO.base, SCENARIO.retrain or "
                f"retrain, got {reference!r}")
        reference = (other, which)
    attacks = None if "attacks" not in raw else _attacks(raw["attacks"], where)
    return Scenario(name, prefix, data, True if text else conditional, forget, retrain, methods, reference, model, **settings,
                    attacks=attacks)


def _attacks(raw_attacks: Any, owner: str = "") -> tuple[Attack, ...]:
    """An ``attacks`` array checked: the experiment's, or a scenario's (``owner``: "scenario NAME", for messages)."""
    from unlearnctl.attacks.dimra import AttackConfig

    prefix = f"{owner}: " if owner else ""
    where = f"{prefix}attacks"
    require(isinstance(raw_attacks, list), f"{where} must be an array of tables, one per attack")
    attacks = [_attack(_table(raw, f"{prefix}attack #{i + 1}"), i, len(raw_attacks), prefix)
               for i, raw in enumerate(raw_attacks)]
    names = [a.name for a in attacks]
    require(len(set(names)) == len(names), f"{where}: two attacks have the same name: {names}")
    for attack in attacks:
        AttackConfig(**attack.config)
    return tuple(attacks)


def _attack(raw: dict[str, Any], index: int, count: int, prefix: str = "") -> Attack:
    from unlearnctl.attacks.dimra import AttackConfig

    where = f"{prefix}attack #{index + 1}"
    keys = ATTACK_EXTRA + _fields(AttackConfig, exclude=("seed",))
    _known(raw, keys, where)
    require("curve_samples" not in raw, f"{where}: curve_samples has no effect in an experiment file: each curve regenerates "
            "the forget-condition samples of the evaluation (evaluation.num_samples), so its step 0 is the evaluation's "
            "forget rate; drop it, or set curve_eval_samples to take the samples of another evaluation size")
    config = {k: v for k, v in raw.items() if k not in ATTACK_EXTRA}
    defaults = {f.name: f.default for f in dataclasses.fields(AttackConfig)}
    for key, value in config.items():
        _check_type(value, defaults.get(key), f"{where}: {key}")
    aux = raw.get("aux", "retain")
    require(isinstance(aux, str) and aux, f"{where}: aux must be a source like \"retain\" or \"generated\", got {aux!r}")
    from unlearnctl.attacks import parse_aux_spec

    parse_aux_spec(aux)
    curve_every = raw.get("curve_every", 0)
    require(isinstance(curve_every, int) and curve_every >= 0, f"{where}: curve_every must be an integer >= 0, got {curve_every!r}")
    default = "" if count == 1 else f"{aux.split(':')[0]}-{config.get('steps', AttackConfig.steps)}-lr{config.get('lr', AttackConfig.lr):g}"
    name = raw.get("name", default)
    require(isinstance(name, str) and (name == "" or name.replace("-", "").replace("_", "").replace(".", "").isalnum()),
            f"{where}: name must be letters, digits, -, _ or ., got {name!r}")
    require(name or count == 1, f"{where}: with several attacks each needs a name (or none, for the default)")
    return Attack(name, aux, curve_every, config)


# --------------------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    """One step of the pipeline: a library call that reads ``inputs`` and writes ``outputs`` (file names)."""

    id: str  # unique, file-name safe: "<kind>-<model>"
    name: str  # what the progress line shows
    kind: str  # train, unlearn, attack, evaluate
    params: dict[str, Any]  # everything the outputs depend on besides the inputs (JSON)
    inputs: list[str]  # files of earlier stages it reads
    outputs: list[str]

    @property
    def params_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.params, sort_keys=True, default=str).encode()).hexdigest()


def _stem(scenario: Scenario, model: str, seed: int, seeds: tuple[int, ...]) -> str:
    return f"{scenario.prefix}{model}" + (f"-seed{seed}" if len(seeds) > 1 else "")


def _attacked(stem: str, attack: Attack) -> str:
    return f"{stem}-attacked" + (f"-{attack.name}" if attack.name else "")


def _curve(stem: str, attack: Attack) -> str:
    return f"{stem}-curve" + (f"-{attack.name}" if attack.name else "") + ".json"


def build_stages(experiment: Experiment) -> list["Stage"]:
    """Every stage, in the sequential order: per scenario, per seed, base and retrain, then each method."""
    stages: list[Stage] = []
    by_name = {s.name: s for s in experiment.scenarios}
    for scenario in experiment.scenarios:
        # what every stage of the scenario reads: the data and the kind of model (pixel: as it always was)
        data = {"data": scenario.data, "model": scenario.model} if scenario.text else \
            {"data": scenario.data, "conditional": scenario.conditional}
        kind = "text-to-image" if scenario.text else "conditional" if scenario.conditional else "unconditional"
        for seed in experiment.seeds:
            base = _stem(scenario, "base", seed, experiment.seeds)
            reference = None
            if scenario.audit_reference is not None:
                other, model = scenario.audit_reference
                reference = _stem(by_name[other], model, seed, experiment.seeds)
            stages.append(Stage(f"train-{base}", f"train {base} ({scenario.data}, {kind})", "train",
                                {**data, "train": experiment.train_for(scenario), "seed": seed}, [], [f"{base}.safetensors"]))
            if scenario.retrain:
                retrain = _stem(scenario, "retrain", seed, experiment.seeds)
                stages.append(Stage(f"unlearn-{retrain}", f"unlearn {retrain} (retrain)", "unlearn",
                                    {**data, "method": "retrain", "forget": scenario.forget, "loop": {}, "method_params": {},
                                     "seed": seed}, [f"{base}.safetensors"], [f"{retrain}.safetensors"]))
            stages.append(_evaluate(experiment, scenario, base, reference, seed))
            runs = [("retrain", seed)] if scenario.retrain else []  # retrain is a training run: the base's seed
            runs += [(run, u) for run in scenario.methods for u in experiment.unlearn_seeds or (seed,)]
            for run, run_seed in runs:
                stem = _stem(scenario, run, seed, experiment.seeds)
                if run != "retrain":
                    stem += f"-useed{run_seed}" if experiment.unlearn_seeds else ""
                    params = dict(scenario.methods[run])
                    method = params.pop("method", run)
                    loop = {**experiment.unlearn_for(scenario), **{k: v for k, v in params.items() if k in _unlearn_keys()}}
                    own = {k: v for k, v in params.items() if k not in _unlearn_keys()}
                    stages.append(Stage(f"unlearn-{stem}", f"unlearn {stem} ({method})", "unlearn",
                                        {**data, "method": method, "forget": scenario.forget, "loop": loop,
                                         "method_params": own, "seed": run_seed}, [f"{base}.safetensors"], [f"{stem}.safetensors"]))
                for attack in experiment.attacks_for(scenario):
                    attacked = _attacked(stem, attack)
                    outputs = [f"{attacked}.safetensors"] + ([_curve(stem, attack)] if attack.curve_every else [])
                    label = f"DiMRA, {attack.config.get('steps', 500)} steps" + (f", {attack.name}" if attack.name else "")
                    curve = _curve_matching_evaluation(experiment.evaluation_for(scenario), attack, seed)
                    stages.append(Stage(f"attack-{attacked}", f"attack {stem} ({label})", "attack",
                                        {**data, "forget": scenario.forget, "aux": attack.aux, "curve_every": attack.curve_every,
                                         "attack": {**curve, **attack.config}, "seed": run_seed}, [f"{stem}.safetensors"], outputs))
                for evaluated in [stem] + [_attacked(stem, a) for a in experiment.attacks_for(scenario)]:
                    stages.append(_evaluate(experiment, scenario, evaluated, reference, seed))
    return stages


def _curve_matching_evaluation(evaluation: dict[str, Any], attack: Attack, seed: int) -> dict[str, Any]:
    """A curve that regenerates the evaluation's forget-condition samples (same count, DDIM steps and seed), so its
    step 0 is the evaluation's forget rate of the attacked-from model (an attack's own curve settings win)."""
    if not attack.curve_every:
        return {}
    return {"curve_eval_samples": evaluation["num_samples"], "curve_sample_steps": evaluation["steps"], "curve_seed": seed}


def _unlearn_keys() -> tuple[str, ...]:
    from unlearnctl.unlearning import UnlearnConfig

    return _fields(UnlearnConfig, exclude=("seed", "device", "precision"))


def _evaluate(experiment: Experiment, scenario: Scenario, stem: str, reference: str | None, seed: int) -> Stage:
    outputs = [f"{stem}.json", f"{stem}.png"] + ([f"{stem}-forget.png"] if scenario.conditional else [])
    inputs = [f"{stem}.safetensors"] + ([f"{reference}.safetensors"] if reference else [])
    return Stage(f"evaluate-{stem}", f"evaluate {stem}" + (f" (audit: {reference})" if reference else ""), "evaluate",
                 {"data": scenario.data, "forget": scenario.forget, "evaluation": experiment.evaluation_for(scenario), "seed": seed,
                  "audit_reference": reference is not None}, inputs, outputs)


def compared_files(experiment: Experiment) -> list[str]:
    """The evaluation JSONs and relearning curves ``compare`` reads, in table order."""
    evaluations, curves = [], []
    for stage in build_stages(experiment):
        if stage.kind == "evaluate":
            evaluations.append(stage.outputs[0])
        elif stage.kind == "attack":
            curves.extend(o for o in stage.outputs if o.endswith(".json"))
    return evaluations + curves


def plan(experiment: Experiment) -> list[str]:
    """The stage names, in order (``--dry-run``)."""
    return [stage.name for stage in build_stages(experiment)] + ["compare and write the report"]


# --------------------------------------------------------------------------------------------- running one stage


class _Context:
    """What a process keeps between the stages it runs: loaded models (by path) and data splits."""

    def __init__(self, out: Path, device: str, progress: ProgressFn = None):
        self.out, self.device, self.progress = out, device, progress
        self.models: dict[str, Any] = {}
        self.splits: dict[str, Any] = {}

    def model(self, name: str):
        """The checkpoint in ``name``: the one this process made, else read from the file."""
        from unlearnctl.checkpoint import load_checkpoint

        if name not in self.models:
            self.models[name] = load_checkpoint(self.out / name)
        return self.models[name]

    def save(self, name: str, checkpoint) -> None:
        from unlearnctl.checkpoint import save_checkpoint
        from unlearnctl.distributed import is_main_process

        save_checkpoint(checkpoint, self.out / name)  # written by the main process only (accelerate launch)
        self.models[name] = checkpoint
        if is_main_process():
            _SHA[(str(self.out / name), *_file_key(self.out / name))] = checkpoint.sha256

    def split(self, source: str):
        from unlearnctl.data import load_data

        if source not in self.splits:
            self.splits[source] = load_data(source)
        return self.splits[source]


_SHA: dict[tuple, str] = {}  # (path, size, mtime) → sha256: a file is hashed once per process


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def file_sha(path: Path) -> str | None:
    from unlearnctl.checkpoint import file_sha256

    try:
        key = (str(path), *_file_key(path))
    except OSError:
        return None
    if key not in _SHA:
        _SHA[key] = file_sha256(path)
    return _SHA[key]


def _record_path(out: Path, stage: Stage) -> Path:
    return out / STAGES / f"{stage.id}.json"


def stage_done(out: Path, stage: Stage) -> bool:
    """The stage's record matches its parameters, its outputs exist and its inputs are the files it read."""
    try:
        record = json.loads(_record_path(out, stage).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("schema") != STAGE_SCHEMA or record.get("params_digest") != stage.params_digest:
        return False
    if not all((out / name).is_file() for name in stage.outputs):
        return False
    inputs = record.get("inputs") or {}
    return all(inputs.get(name) == file_sha(out / name) for name in stage.inputs)


def run_stage(stage: Stage, context: _Context) -> float:
    """Run ``stage`` (outputs written atomically), then write its record; returns the seconds it took."""
    from unlearnctl.checkpoint import atomic_write_text

    started = time.perf_counter()
    inputs = {name: file_sha(context.out / name) for name in stage.inputs}  # before: what the stage reads
    globals()[f"_run_{stage.kind}"](stage, context)
    seconds = time.perf_counter() - started
    record = {"schema": STAGE_SCHEMA, "stage": stage.name, "params_digest": stage.params_digest, "params": stage.params,
              "inputs": inputs, "outputs": stage.outputs}
    (context.out / STAGES).mkdir(exist_ok=True)
    atomic_write_text(_record_path(context.out, stage), json.dumps(record, indent=2, default=str) + "\n")
    return seconds


def _run_train(stage: Stage, context: _Context) -> None:
    from unlearnctl.training import TrainConfig, train_model

    params = dict(stage.params["train"])
    preset = params.pop("preset", None)
    autoencoder_steps = params.pop("autoencoder_steps", None)
    # warm-up never longer than the run (a short --quick training)
    params["warmup_steps"] = min(params.get("warmup_steps", TrainConfig.warmup_steps), params.get("steps", TrainConfig.steps))
    config = TrainConfig(**params, seed=stage.params["seed"])
    if stage.params.get("model") == "text-to-image":
        from unlearnctl.text_to_image import train_text_to_image

        checkpoint = train_text_to_image(context.split(stage.params["data"]), config=config, autoencoder_steps=autoencoder_steps,
                                         device=context.device, progress=context.progress)
        context.save(stage.outputs[0], checkpoint)
        return
    checkpoint = train_model(context.split(stage.params["data"]), conditional=stage.params["conditional"], preset=preset,
                             config=config, device=context.device, progress=context.progress)
    context.save(stage.outputs[0], checkpoint)


def _run_unlearn(stage: Stage, context: _Context) -> None:
    from unlearnctl.data import ForgetSpec
    from unlearnctl.unlearning import UnlearnConfig, unlearn

    p = stage.params
    loop = UnlearnConfig(**p["loop"], seed=p["seed"], device=context.device)
    checkpoint, _ = unlearn(context.model(stage.inputs[0]), p["method"], ForgetSpec.from_dict(p["forget"]), loop,
                            method_params=p["method_params"], data=context.split(p["data"]), progress=context.progress)
    context.save(stage.outputs[0], checkpoint)


def _run_attack(stage: Stage, context: _Context) -> None:
    from unlearnctl.attacks.dimra import AttackConfig, relearn_attack
    from unlearnctl.checkpoint import atomic_write_text
    from unlearnctl.data import ForgetSpec

    p = stage.params
    config = AttackConfig(**p["attack"], seed=p["seed"])
    checkpoint, curve = relearn_attack(context.model(stage.inputs[0]), p["aux"], config,
                                       curve_forget_spec=ForgetSpec.from_dict(p["forget"]), curve_every=p["curve_every"],
                                       data=context.split(p["data"]), device=context.device, progress=context.progress)
    if p["curve_every"]:
        require(curve is not None, f"{stage.name}: the attack recorded no relearning curve")
    context.save(stage.outputs[0], checkpoint)
    if p["curve_every"]:
        curve.attacked_sha256 = checkpoint.sha256  # compare attaches each budget's curve to its own attacked model
        atomic_write_text(context.out / stage.outputs[1], json.dumps(curve.to_json_dict(), indent=2) + "\n")


def _run_evaluate(stage: Stage, context: _Context) -> None:
    from unlearnctl.checkpoint import atomic_write_text
    from unlearnctl.data import ForgetSpec
    from unlearnctl.metrics.evaluate import run_evaluation

    p = stage.params
    reference = str(context.out / stage.inputs[1]) if p["audit_reference"] else None
    config = _eval_config(p["evaluation"], p["seed"], reference, context.device)
    evaluation = run_evaluation(context.model(stage.inputs[0]), ForgetSpec.from_dict(p["forget"]), config, context.progress,
                                split=context.split(p["data"]))
    json_path, grid = context.out / stage.outputs[0], context.out / stage.outputs[1]
    evaluation.grids(grid)
    atomic_write_text(json_path, json.dumps(evaluation.result, indent=2, default=str) + "\n")


def _agreed(done: bool) -> bool:
    """Under ``accelerate launch``: the main process's answer, so that every process runs the same stages."""
    from unlearnctl.distributed import launched, state

    if not launched():
        return done
    from accelerate.utils import broadcast_object_list

    state()
    box = [done]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def _eval_config(evaluation: dict[str, Any], seed: int, reference: str | None, device: str):
    """The :class:`~unlearnctl.metrics.evaluate.EvalConfig` of the ``[evaluation]`` table (its checks run here)."""
    from unlearnctl.metrics.evaluate import EvalConfig
    from unlearnctl.metrics.membership import AuditConfig

    settings = dict(evaluation)
    if "metrics" in settings:
        settings["metrics"] = tuple(settings["metrics"])
    audit = {"repeats": settings.pop("audit_repeats"), "max_images": settings.pop("audit_max_images"), "seed": seed}
    if "bootstrap_rounds" in settings:  # every interval of the evaluation, the audit's included
        audit["bootstrap_rounds"] = settings["bootstrap_rounds"]
    return EvalConfig(**settings, seed=seed, audit=AuditConfig(**audit), audit_reference=reference, device=device)


# worker processes (jobs > 1): one context per process, models read from the files
_WORKER: dict[str, Any] = {}


def _worker_init(out: str, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["context"] = _Context(Path(out), device)


def _worker_run(stage: Stage) -> float:
    return run_stage(stage, _WORKER["context"])


# --------------------------------------------------------------------------------------------- the whole run


@dataclass
class StageEvent:
    """One finished stage (what the progress line shows)."""

    index: int  # 1-based, in finishing order
    total: int
    name: str
    seconds: float
    reused: bool  # outputs were already there and current: nothing ran
    outputs: list[Path]


@dataclass
class ExperimentResult:
    out: Path
    report: Path
    comparison: Any  # unlearnctl.report.Comparison (None in a non-main process of accelerate launch)
    stages: list[StageEvent]
    seconds: float
    files: list[Path] = field(default_factory=list)


def run_experiment(
    experiment: Experiment,
    out: str | Path,
    *,
    jobs: int = 1,
    device: str = "auto",
    progress: ProgressFn = None,
    on_stage: Callable[[StageEvent], None] | None = None,
    describe: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Run (or resume) ``experiment`` into ``out``; returns the comparison and the report path.

    Args:
        experiment: a validated experiment (:func:`load_experiment`).
        out: output folder (created; its parent must exist). Finished stages in it are reused.
        jobs: worker processes for independent stages (1 = in this process, in order).
        device: torch device of every stage.
        progress: progress callback of the loops inside each stage (``jobs = 1`` only).
        on_stage: called with a :class:`StageEvent` after every stage, reused or run.
        describe: the recipe in words for the report (default: :func:`describe_experiment`).
    """
    from unlearnctl.checkpoint import atomic_write_text, now_utc, reproducible
    from unlearnctl.fileio import claim_output
    from unlearnctl.report import compare, load_runs, write_report

    from unlearnctl.distributed import is_main_process, launched

    out = Path(out)
    require(isinstance(jobs, int) and jobs >= 1, f"--jobs must be at least 1, got {jobs}")
    require(jobs == 1 or not launched(), "--jobs runs worker processes of its own; under accelerate launch use --jobs 1 "
            "(the launched processes share each stage)")
    require(not out.exists() or out.is_dir(), f"--out {out} exists and is not a folder")
    require(out.parent.is_dir(), f"folder {out.parent} does not exist; create it first")
    stages = build_stages(experiment)
    out.mkdir(exist_ok=True)
    # one run per folder; temporary files of a killed run's stages are removed
    claim_output(out / MANIFEST, *[out / name for stage in stages for name in stage.outputs],
                 *[_record_path(out, stage) for stage in stages])
    recipe = experiment.recipe()
    atomic_write_text(out / MANIFEST, json.dumps({"schema": MANIFEST_SCHEMA, "recipe": recipe, "stages": None}, indent=2) + "\n")

    total = len(stages) + 1
    started = time.perf_counter()
    events: list[StageEvent] = []

    def finished(stage: Stage, seconds: float, reused: bool) -> None:
        event = StageEvent(len(events) + 1, total, stage.name, seconds, reused, [out / name for name in stage.outputs])
        events.append(event)
        if on_stage is not None:
            on_stage(event)

    if jobs == 1:
        context = _Context(out, device, progress)
        for stage in stages:
            tick = time.perf_counter()
            if _agreed(stage_done(out, stage)):
                finished(stage, time.perf_counter() - tick, True)
            else:
                finished(stage, run_stage(stage, context), False)
    else:
        _run_parallel(stages, out, jobs, device, finished)

    if not is_main_process():  # accelerate launch: the other processes helped with the stages; one writes the report
        return ExperimentResult(out, out / "report.html", None, events, time.perf_counter() - started)

    # the comparison and the report: always redone (seconds), from the files on disk
    tick = time.perf_counter()
    paths = [out / name for name in compared_files(experiment)]
    comparison = compare(load_runs([p for p in paths if p.suffix != ".json" or p.is_file()]))
    report = out / "report.html"
    report_recipe = {**(describe if describe is not None else describe_experiment(experiment)),
                     "stage seconds": None if reproducible() else {e.name: round(e.seconds, 1) for e in events if not e.reused}}
    written = write_report(comparison, report, title=experiment.title, recipe=report_recipe)
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
    return ExperimentResult(out, report, comparison, events, seconds, [p for e in events for p in e.outputs])


def _run_parallel(stages: list[Stage], out: Path, jobs: int, device: str,
                  finished: Callable[[Stage, float, bool], None]) -> None:
    """Run the stages in ``jobs`` worker processes, each once the stages making its inputs are done and a worker is
    free, the longest remaining chain first (:func:`critical_path`)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    needs = _needs(stages)
    priority = critical_path(stages)
    complete: set[str] = set()
    waiting = list(stages)
    import torch

    threads = max(1, torch.get_num_threads() // jobs)  # this process' threads (OMP_NUM_THREADS, else the cores), shared
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(str(out), device, threads)) as pool:
        running: dict[Any, Stage] = {}
        while waiting or running:
            ready = [s for s in waiting if needs[s.id] <= complete]
            reused = [s for s in ready if stage_done(out, s)]
            for stage in reused:
                waiting.remove(stage)
                complete.add(stage.id)
                finished(stage, 0.0, True)
            if reused:
                continue
            # a stage starts only when a worker is free, the longest remaining chain first
            for stage in sorted(ready, key=lambda s: -priority[s.id])[:jobs - len(running)]:
                waiting.remove(stage)
                running[pool.submit(_worker_run, stage)] = stage
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                seconds = future.result()  # a stage's error ends the run (the finished stages stay done)
                complete.add(stage.id)
                finished(stage, seconds, False)


# rough relative costs of the stage kinds (an exact method's run, retrain, is a training run), for the order of
# parallel stages only
STAGE_COSTS = {"train": 10.0, "unlearn": 3.0, "attack": 1.0, "evaluate": 1.0}


def _needs(stages: list[Stage]) -> dict[str, set[str]]:
    """Each stage's id → the ids of the stages writing its inputs."""
    producer = {name: stage.id for stage in stages for name in stage.outputs}
    return {stage.id: {producer[name] for name in stage.inputs if name in producer} for stage in stages}


def critical_path(stages: list[Stage]) -> dict[str, float]:
    """Each stage's longest chain of rough costs (:data:`STAGE_COSTS`) from it to the end of the run, itself
    included. ``--jobs`` starts the ready stage with the longest chain first, so a long chain (a text-to-image
    base, then its retrain) is not left for the end while the workers clear short stages (list scheduling).
    ``stages`` are in a runnable order (each after the stages it needs), as :func:`build_stages` makes them."""
    from unlearnctl.methods import get_method

    users: dict[str, list[str]] = {stage.id: [] for stage in stages}
    for user, needed in _needs(stages).items():
        for producer in needed:
            users[producer].append(user)
    chain: dict[str, float] = {}
    for stage in reversed(stages):
        training = stage.kind == "unlearn" and get_method(stage.params["method"]).exact
        cost = STAGE_COSTS["train"] if training else STAGE_COSTS.get(stage.kind, 1.0)
        chain[stage.id] = cost + max((chain[u] for u in users[stage.id]), default=0.0)
    return chain


def describe_experiment(experiment: Experiment) -> dict[str, Any]:
    """The recipe in words, for the report."""
    from unlearnctl.training import TrainConfig

    train = TrainConfig(**experiment.train)
    scenarios = {}
    for s in experiment.scenarios:
        forget = ", ".join(f"{k} {v}" for k, v in s.forget.items() if v)
        methods = ", ".join((["retrain (reference)"] if s.retrain else []) + [
            m + (f" {json.dumps(p, sort_keys=True)}" if p else "") for m, p in s.methods.items()])
        audit = f"; audit calibrated by {'.'.join(s.audit_reference)}" if s.audit_reference else ""
        kind = "text-to-image (the embedded latent model)" if s.text else "conditional" if s.conditional else "unconditional"
        own = "; ".join(f"its {key}: " + ", ".join(f"{k} {v}" for k, v in getattr(s, key).items())
                        for key in SETTINGS if getattr(s, key))
        if s.attacks is not None:
            own += ("; " if own else "") + f"its attacks: {_describe_attacks(s.attacks)}"
        scenarios[f"scenario {s.name}"] = f"{s.data}, {kind}; forget {forget}: {methods}{audit}" + (f"; {own}" if own else "")
    attacks = _describe_attacks(experiment.attacks)
    text = any(s.text for s in experiment.scenarios)
    models = ", ".join(([f"UNet2DModel preset {experiment.preset!r}"] if not all(s.text for s in experiment.scenarios) else [])
                       + (["the embedded latent text-to-image model (autoencoder, CLIP text encoder, UNet2DConditionModel)"]
                          if text else []))
    autoencoder = (f"; text-to-image: autoencoder {experiment.autoencoder_steps} steps first"
                   if text and experiment.autoencoder_steps else "")
    return {
        "models": models,
        "base training": f"{train.steps} steps × batch {train.batch_size}, AdamW lr {train.lr:g} (warm-up "
                         f"{min(train.warmup_steps, train.steps)}, {train.lr_schedule}), EMA {train.ema_decay:g}{autoencoder}",
        **scenarios,
        "seeds": ", ".join(str(s) for s in experiment.seeds),
        "unlearning": ", ".join(f"{k} {v}" for k, v in experiment.unlearn.items()) or "each method's tuned defaults",
        "attacks": attacks,
        "evaluation": ", ".join(f"{k} {v}" for k, v in experiment.evaluation.items()),
        "recipe fields": experiment.source,
    }


def _describe_attacks(attacks: tuple[Attack, ...]) -> str:
    return "; ".join(f"{a.name or 'DiMRA'}: aux {a.aux}, " + ", ".join(f"{k} {v}" for k, v in a.config.items())
                     + (f", curve every {a.curve_every} steps" if a.curve_every else "") for a in attacks) or "none"
