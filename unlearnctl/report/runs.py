"""Runs to compare: evaluation JSONs, checkpoints evaluated on the fly, and relearning curves.

A :class:`Run` is one evaluated model. Everything the report says about it comes from the evaluation
result (``unlearnctl.evaluate/1``, docs/metrics.md) — its metrics and its provenance, whose lineage tells
what the model is:

* **base** — the lineage holds only ``train`` (or ``import``) entries;
* **reference** — exact unlearning: ``retrain``, or ``train --exclude-*`` (a ``train`` entry with a forget block);
* **unlearned** — the newest entry names a ``method`` (``unlearn``);
* **attacked** — the newest entry is ``relearn-attack``; its ``parent_sha256`` names the model attacked.

Sample grids ride along by file name: ``X.json`` picks up ``X.png`` (retained conditions) and
``X-forget.png`` (forget condition) — what ``unlearnctl evaluate --json X.json --grid X.png`` writes.
Relearning curves (``unlearnctl.relearn-curve``, docs/attack.md) are given as inputs of their own, or read
from an attacked checkpoint's lineage; they attach to runs by sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnctl.errors import BadInputError, require
from unlearnctl.jsonfile import read_json_object
from unlearnctl.progress import ProgressFn

if TYPE_CHECKING:
    from unlearnctl.data import ForgetSpec
    from unlearnctl.metrics.evaluate import EvalConfig

EVALUATE_SCHEMA = "unlearnctl.evaluate/1"
CURVE_SCHEMA = "unlearnctl.relearn-curve"


@dataclass
class Run:
    """One evaluated model.

    Attributes:
        name: short label (the file stem, made unique among the inputs).
        source: the file it came from (evaluation JSON or checkpoint).
        result: the evaluation dict (schema ``unlearnctl.evaluate/1``).
        grids: PNG bytes of sample grids: ``"retained"`` and ``"forget"`` when available.
        curve: the relearning curve of the attack that produced this model (attacked runs) or that was run
            on it (unlearned runs), as the ``unlearnctl.relearn-curve`` dict; ``None`` if none was given.
    """

    name: str
    source: str
    result: dict[str, Any]
    grids: dict[str, bytes] = field(default_factory=dict)
    curve: dict[str, Any] | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        return self.result.get("provenance") or {}

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return list((self.provenance.get("model") or {}).get("lineage") or [])

    @property
    def sha256(self) -> str | None:
        return (self.provenance.get("model") or {}).get("sha256")

    @property
    def parent_sha256(self) -> str | None:
        """The model this one was derived from (``None`` for models trained from scratch)."""
        return self.lineage[-1].get("parent_sha256") if self.lineage else None

    @property
    def attacked(self) -> bool:
        return bool(self.lineage) and self.lineage[-1].get("command") == "relearn-attack"

    @property
    def method(self) -> str | None:
        """The newest unlearning method in the lineage (``retrain`` included)."""
        for entry in reversed(self.lineage):
            if entry.get("method"):
                return str(entry["method"])
        return None

    @property
    def role(self) -> str:
        """``base``, ``reference``, ``unlearned`` or ``attacked`` (see the module docstring)."""
        if self.attacked:
            return "attacked"
        method = self.method
        if method == "retrain" or any(e.get("command") == "train" and e.get("forget") for e in self.lineage):
            return "reference"
        return "unlearned" if method else "base"

    @property
    def group(self) -> str:
        """Rows are grouped by this: the method (``retrain`` for references, ``base`` for base models)."""
        if self.role == "base" or (self.role == "attacked" and self.method is None):
            return "base"
        if self.method is None:  # train --exclude-*
            return "retrain"
        return self.method

    @property
    def text_to_image(self) -> bool:
        return bool((self.provenance.get("model") or {}).get("text_conditional"))

    @property
    def scenario(self) -> tuple[str | None, str | None, bool]:
        """``(training-data fingerprint, forget-set fingerprint, text-to-image)``: runs of one scenario are compared
        (a pixel and a text-to-image model of the same data and forget set are two scenarios)."""
        data = self.provenance.get("data") or {}
        forget = self.provenance.get("forget") or {}
        return data.get("fingerprint"), forget.get("fingerprint"), self.text_to_image

    @property
    def scenario_label(self) -> str:
        data = self.provenance.get("data") or {}
        forget = self.provenance.get("forget")
        return f"{data.get('source', '?')}{' (text-to-image)' if self.text_to_image else ''} — {describe_forget(forget)}"


def describe_forget(forget: dict[str, Any] | None) -> str:
    """``forget class 8``, ``forget the canary``, ``forget 3 indices`` ... from a provenance forget block."""
    if not forget:
        return "no forget set"
    spec = forget.get("spec") or {}
    parts = []
    if spec.get("classes"):
        classes = [str(c) for c in spec["classes"]]
        parts.append(f"class{'es' if len(classes) > 1 else ''} {', '.join(classes)}")
    if spec.get("indices"):
        parts.append(f"{len(spec['indices'])} training images")
    if spec.get("canary"):
        parts.append("the canary")
    if spec.get("images"):
        parts.append(f"images of {Path(str(spec['images'])).name}")
    if spec.get("prompts"):
        parts.append("prompt" + "s" * (len(spec["prompts"]) > 1) + " " + ", ".join(repr(p) for p in spec["prompts"]))
    return "forget " + (" + ".join(parts) or "?")


# --------------------------------------------------------------------------------------------- loading


def read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, hint="; give evaluation JSONs (unlearnctl evaluate --json)")


def check_evaluation(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """``data`` if it is an evaluation result this module can read, else :class:`BadInputError`."""
    schema = data.get("schema")
    require(schema == EVALUATE_SCHEMA, f"{origin} has schema {schema!r}, not {EVALUATE_SCHEMA!r}; "
            "give files written by `unlearnctl evaluate --json`")
    require(isinstance(data.get("provenance"), dict), f"{origin} has no provenance block; re-run `unlearnctl evaluate`")
    return data


def sibling_grids(path: Path) -> dict[str, bytes]:
    """``X.png`` and ``X-forget.png`` next to ``X.json`` (what ``evaluate --grid X.png`` writes)."""
    grids = {}
    for kind, candidate in (("retained", path.with_suffix(".png")), ("forget", path.with_name(f"{path.stem}-forget.png"))):
        if candidate.is_file():
            payload = candidate.read_bytes()
            if payload.startswith(b"\x89PNG\r\n\x1a\n"):
                grids[kind] = payload
    return grids


def run_from_evaluation(evaluation, name: str, source: str) -> Run:
    """A :class:`Run` from an in-memory :class:`~unlearnctl.metrics.evaluate.Evaluation` (grids rendered now)."""
    return Run(name, source, evaluation.result, evaluation.grid_pngs(10))


def curve_from_checkpoint(checkpoint) -> dict[str, Any] | None:
    """The relearning curve an attacked checkpoint's lineage records, as a curve dict (or ``None``)."""
    entry = checkpoint.lineage[-1] if checkpoint.lineage else {}
    record = entry.get("curve") if entry.get("command") == "relearn-attack" else None
    if not isinstance(record, dict) or not record.get("points"):
        return None
    return {"schema": CURVE_SCHEMA, "model": {"sha256": entry.get("parent_sha256")}, "attack": entry.get("params", {}).get("config"),
            "aux": (entry.get("attack") or {}).get("aux"), "attacked_sha256": checkpoint.sha256, **record}


def load_runs(
    paths: list[str | Path],
    *,
    eval_config: "EvalConfig | None" = None,
    forget_spec: "ForgetSpec | None" = None,
    progress: ProgressFn = None,
    on_evaluate=None,
) -> list[Run]:
    """Load every input: evaluation JSONs, checkpoints (evaluated now) and relearning-curve JSONs.

    Args:
        paths: ``.json`` files (evaluation results or relearning curves) and ``.safetensors`` checkpoints.
        eval_config: how checkpoints are evaluated (default :class:`~unlearnctl.metrics.evaluate.EvalConfig`).
        forget_spec: what checkpoints forgot; default: their lineage's (the base needs it given).
        progress: progress callback of the evaluations.
        on_evaluate: called as ``on_evaluate(path)`` before a checkpoint is evaluated (status lines).

    Returns:
        The runs in input order; curves are attached to their runs, not returned as runs.
    """
    require(len(paths) > 0, "nothing to compare; give evaluation JSONs or checkpoints")
    entries, curves = [], []
    for raw in paths:
        path = Path(raw)
        if path.suffix == ".json":
            data = read_json(path)
            if data.get("schema") == CURVE_SCHEMA:
                require(isinstance(data.get("points"), list), f"{path} is a relearning curve without points")
                curves.append((path, data))
                continue
            entries.append((path, check_evaluation(data, str(path))))
        elif path.suffix == ".safetensors":
            entries.append((path, None))
        else:
            raise BadInputError(f"{path}: compare reads evaluation .json files and .safetensors checkpoints")
    require(entries, "only relearning curves were given; add the evaluation JSONs or checkpoints they belong to")
    names = unique_names([path for path, _ in entries])
    runs = []
    for (path, data), name in zip(entries, names):
        if data is not None:
            runs.append(Run(name, str(path), data, sibling_grids(path)))
            continue
        from unlearnctl.checkpoint import load_checkpoint
        from unlearnctl.integrity import require_finite_weights
        from unlearnctl.metrics.evaluate import run_evaluation

        checkpoint = load_checkpoint(path)
        require_finite_weights(checkpoint.state_dict, path)  # a broken model would score, and pass gates
        if on_evaluate is not None:
            on_evaluate(path)
        evaluation = run_evaluation(checkpoint, forget_spec, eval_config, progress)
        run = run_from_evaluation(evaluation, name, str(path))
        run.curve = curve_from_checkpoint(checkpoint)
        runs.append(run)
    for path, curve in curves:
        attach_curve(runs, curve, str(path))
    return runs


def attach_curve(runs: list[Run], curve: dict[str, Any], origin: str) -> None:
    """Give ``curve`` to the attacked model it produced (``attacked_sha256``), else to every attacked run whose
    parent it measured, else to the run it was measured on."""
    sha = (curve.get("model") or {}).get("sha256")
    require(bool(sha), f"{origin}: the curve names no model sha256")
    produced = [r for r in runs if curve.get("attacked_sha256") and r.sha256 == curve["attacked_sha256"]]
    if produced:
        for run in produced:
            run.curve = curve
        return
    attacked = [r for r in runs if r.attacked and r.parent_sha256 == sha]
    target = attacked or [r for r in runs if r.sha256 == sha]
    require(bool(target), f"{origin}: no compared run is the model this curve attacked (sha256 {sha[:12]}); "
            "add its evaluation JSON or its attacked model's")
    for run in target:
        run.curve = curve


def unique_names(paths: list[Path]) -> list[str]:
    """File stems; stems given twice get their parent folder prefixed (``a/base``, ``b/base``)."""
    stems = [p.stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        names.append(stem if stems.count(stem) == 1 else f"{path.parent.name}/{stem}")
    require(len(set(names)) == len(names), "the same file is given twice: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return names
