"""The `auxgen` command line: thin recipes (train, export, verify) over plain components."""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings

import typer

from auxgen import __version__
from auxgen.errors import AuxgenError
from auxgen.paths import one_line

# auxgen no longer writes TorchScript by default, but torch's forward-mode AD (the exact meta-gradient) scripts
# its own JVP decompositions on first use and warns about it: torch's doing, which users cannot act on
warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace).* deprecated", category=FutureWarning)

def _no_bool_metavar(params: list) -> None:
    """A flag takes no value: show none (typer would print `<bool>` next to --help, --force, ...)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        params = super().get_params(ctx)
        _no_bool_metavar(params)  # the help option too, which typer adds here
        return params


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        params = super().get_params(ctx)
        _no_bool_metavar(params)
        return params


app = typer.Typer(
    name="auxgen",
    cls=_Group,
    help="Learned auxiliary labels for your data: train MAXL, export soft labels, verify them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"auxgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Learned auxiliary labels for your data: train MAXL, export soft labels, verify them."""


def _register() -> None:
    from auxgen.recipes.export import export_command
    from auxgen.recipes.train import train_command
    from auxgen.recipes.verify import verify_command

    app.command("train", cls=_Command)(train_command)
    app.command("export", cls=_Command)(export_command)
    app.command("verify", cls=_Command)(verify_command)
    from auxgen.recipes.report import report_command; app.command("report", cls=_Command)(report_command)  # noqa: E702, I001


_register()


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, `kill`): unwound like Ctrl-C, so temporary files are removed.

    A BaseException, as KeyboardInterrupt is, so no `except Exception` on the way swallows it; not a
    KeyboardInterrupt, which typer turns into a bare exit code.
    """


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _one_line(e: BaseException) -> str:
    # messages quote paths and parser errors; whatever they hold, an error is one line
    return one_line(e, 10_000, whole=True)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    from auxgen.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    previous = None
    with contextlib.suppress(ValueError):  # ValueError: not the main thread (an embedding host)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run()
    finally:
        from auxgen.distributed import shutdown

        shutdown()  # leave a torchrun process group, if this command joined one
        if previous is not None:  # a host that calls main() in-process keeps its own handler
            signal.signal(signal.SIGTERM, previous)


def _run() -> None:
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except AuxgenError as e:
        from auxgen.distributed import current

        # under torchrun an error every rank raised alike is printed once, by rank 0
        if not getattr(e, "everywhere", False) or current().is_main:
            rank = current()
            where = f" (rank {rank.rank})" if rank.enabled and not rank.is_main else ""
            print(f"error{where}: {_one_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, Terminated) as e:
        _interrupted("terminated" if isinstance(e, Terminated) else "interrupted")
        sys.exit(128 + signal.SIGTERM if isinstance(e, Terminated) else 130)
    except OSError as e:
        # the file system said no where no check anticipated it (permissions, a full disk, a
        # vanished mount): still the user's environment, not a bug, so one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        # click's usage errors (typer vendors click in newer releases, so match by shape, not type)
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
    if rc == 130:  # typer turns Ctrl-C into this exit code
        _interrupted("interrupted")
    sys.exit(rc if isinstance(rc, int) else 0)


# what an interrupted command leaves behind, by command (only train can be resumed)
_AFTER_INTERRUPT = {
    "train": "finished epochs are saved (continue with auxgen train --resume RUN)",
    "export": "nothing was published at --out (a --format wds export keeps its finished shards: continue with "
              "--resume)",
    "verify": "verify only reads: nothing was written; run it again",
    "report": "the report folder is as it was; run it again",
}


def _interrupted(what: str) -> None:
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    after = _AFTER_INTERRUPT.get(command, "nothing was changed")
    if command == "train":  # true only once an epoch has finished
        from auxgen.recipes.train import after_interrupt

        after = after_interrupt()
    print(f"{what}; {after}", file=sys.stderr)


if __name__ == "__main__":
    main()
