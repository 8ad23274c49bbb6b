"""examples/: the shell pipeline and the CI workflow stay in step with the CLI (every command and option they
use exists), without running them (the pipeline itself is the demo test's pipeline, run through the library)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def cli_options() -> dict[str, set[str]]:
    """Every command path (``train``, ``classifier train``) and its option flags, from the Typer app."""
    import typer

    from unlearnctl.cli.app import app

    root = typer.main.get_command(app)
    found: dict[str, set[str]] = {}

    def walk(command, prefix: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            found[path] = {flag for param in sub.params for flag in (*param.opts, *param.secondary_opts)}
            walk(sub, path)

    walk(root, "")
    return found


def script_calls(text: str) -> list[list[str]]:
    """The ``"$UNLEARNCTL" ...`` calls of the script, continuation lines joined, as argument lists."""
    joined = re.sub(r"\\\n\s*", " ", text)
    calls = []
    for line in joined.splitlines():
        if '"$UNLEARNCTL"' in line and not line.lstrip().startswith(("#", "UNLEARNCTL=")):
            calls.append(shlex.split(line.split('"$UNLEARNCTL"', 1)[1]))
    return calls


def test_pipeline_script_uses_only_existing_commands_and_options():
    options = cli_options()
    calls = script_calls((EXAMPLES / "pipeline.sh").read_text())
    used = {call[0] for call in calls}
    assert {"train", "unlearn", "relearn-attack", "evaluate", "compare"} <= used
    for call in calls:
        command = call[0]
        assert command in options, f"unknown command {command}"
        for arg in call[1:]:
            if arg.startswith("--"):
                assert arg in options[command], f"{command} has no option {arg}"


def test_pipeline_option_arrays_belong_to_their_commands():
    options = cli_options()
    text = (EXAMPLES / "pipeline.sh").read_text()
    arrays = {"EVAL": "evaluate", "CANARY_EVAL": "evaluate", "UNLEARN": "unlearn"}
    seen = set()
    for name, body in re.findall(r"\b(EVAL|CANARY_EVAL|UNLEARN)=\(([^)]*)\)", text):
        seen.add(name)
        for arg in shlex.split(body):
            if arg.startswith("--"):
                assert arg in options[arrays[name]], f"{arrays[name]} has no option {arg} (array {name})"
    assert seen == set(arrays)


def test_pipeline_script_gates_every_unlearned_and_attacked_model():
    text = (EXAMPLES / "pipeline.sh").read_text()
    assert '--gate "forget_rate<=$FORGET_MAX"' in text and '--gate "forget_rate<=$ATTACKED_MAX"' in text
    assert "--baseline base.json" in text and "exit 3" in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_pipeline_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(EXAMPLES / "pipeline.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_workflow_runs_the_pipeline_and_keeps_the_report():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((EXAMPLES / "ci-workflow.yml").read_text())
    steps = workflow["jobs"]["unlearn"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "examples/pipeline.sh" in runs
    upload = next(step for step in steps if str(step.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "report.html" in upload["with"]["path"]
