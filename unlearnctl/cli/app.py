"""The ``unlearnctl`` Typer app and the one place that maps exceptions to exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 3 a ``--gate`` failed, 130 interrupted.
Errors print one red line on stderr; ``UNLEARNCTL_DEBUG=1`` shows the full traceback instead.

Every option of a command can also come from an environment variable ``UNLEARNCTL_<COMMAND>_<OPTION>``
(``UNLEARNCTL_TRAIN_STEPS=30``, ``UNLEARNCTL_RELEARN_ATTACK_STEPS=5``); the command line wins, and each value
taken from the environment is announced on stderr, so a run is never changed silently (the tests use this to
run the README's pipeline with tiny sizes).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from unlearnctl.errors import GateFailed, UnlearnctlError

app = typer.Typer(
    name="unlearnctl",
    help="Make diffusion models forget: train, unlearn, attack, evaluate and compare. "
    "Steps exchange self-describing .safetensors checkpoints, so they chain in shell pipelines and CI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_INTERRUPTED = 130
ENV_PREFIX = "UNLEARNCTL"  # UNLEARNCTL_<COMMAND>_<OPTION> sets an option (see the module docstring)


def _print_version(value: bool) -> None:
    if value:
        import unlearnctl

        typer.echo(f"unlearnctl {unlearnctl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Make diffusion models forget: train, unlearn, attack, evaluate and compare."""


def _announce_environment(group) -> None:
    """Wrap every command so that options taken from ``UNLEARNCTL_<COMMAND>_<OPTION>`` are named on stderr."""
    for param in group.params:
        param.allow_from_autoenv = False  # UNLEARNCTL_VERSION and the like are not options
    for command in group.commands.values():

        def invoke(ctx, __original=command.invoke):
            from unlearnctl.cli.ui import stderr

            for param in ctx.command.params:
                source = ctx.get_parameter_source(param.name) if param.name else None
                if source is not None and source.name == "ENVIRONMENT":
                    value = ctx.params.get(param.name)
                    shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                    stderr.print(f"note: {param.opts[0]} {shown} (from ${ctx.auto_envvar_prefix}_{param.name.upper()})",
                                 highlight=False, soft_wrap=True)
            return __original(ctx)

        command.invoke = invoke


def _fail(message: str, code: int) -> int:
    from rich.markup import escape

    from unlearnctl.cli.ui import stderr

    first_line = " ".join(str(message).split())  # one line, whatever the message held
    stderr.print(f"[red]error:[/red] {escape(first_line)}", highlight=False, soft_wrap=True)  # "[train]" is text
    return code


def _join_processes() -> None:
    """Under ``accelerate launch`` (several processes): join the process group; only the main process prints
    (and writes files, see :mod:`unlearnctl.distributed`). Nothing happens in an ordinary run."""
    from unlearnctl import distributed

    if not distributed.launched():
        return
    distributed.state()
    if not distributed.is_main_process():
        from unlearnctl.cli.ui import stderr, stdout

        stdout.quiet = stderr.quiet = True


def run(args: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the entry point of tests and ``main``)."""
    debug = bool(os.environ.get("UNLEARNCTL_DEBUG"))
    try:
        _join_processes()
        command = typer.main.get_command(app)
        _announce_environment(command)
        result = command.main(args=args, standalone_mode=False, prog_name="unlearnctl", auto_envvar_prefix=ENV_PREFIX)
        if result == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a silent 130; say what happened
            return _fail("interrupted; no output was written", EXIT_INTERRUPTED)
        return result if isinstance(result, int) else 0
    except GateFailed as exc:
        from unlearnctl.cli.ui import stderr

        for failure in exc.failures:
            stderr.print(f"[red]gate failed:[/red] {failure}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except UnlearnctlError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted; no output was written", EXIT_INTERRUPTED)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, missing or bad parameter
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 0
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _fail(message + hint, 2)
    except MemoryError:
        return _fail("out of memory; lower --batch-size or --sample-batch-size", 1)
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        return _fail(f"internal error {type(exc).__name__}: {exc} (set UNLEARNCTL_DEBUG=1 for the traceback)", 1)
    finally:
        if "unlearnctl.fileio" in sys.modules:  # the command claimed an output: release its lock
            sys.modules["unlearnctl.fileio"].release_output_locks()


def main() -> None:
    sys.exit(run())


# Command modules register themselves on ``app``; imported last so ``app`` exists, in pipeline order
# (which is the order of ``--help`` and docs/cli.md).
from unlearnctl.cli import core_cmds  # noqa: E402,F401,I001
from unlearnctl.cli import unlearn_cmds  # noqa: E402,F401
from unlearnctl.cli import attack_cmds  # noqa: E402,F401
from unlearnctl.cli import evaluate_cmds  # noqa: E402,F401
from unlearnctl.cli import compare_cmds  # noqa: E402,F401
