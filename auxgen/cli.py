"""The `auxgen` command line: thin recipes (train, export, verify) over plain components."""

from __future__ import annotations

import sys
import warnings

import typer

from auxgen import __version__
from auxgen.errors import AuxgenError

# torch warns on every TorchScript use; the generator export relies on it and users cannot act on it
warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace).* deprecated", category=FutureWarning)

app = typer.Typer(
    name="auxgen",
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

    app.command("train")(train_command)
    app.command("export")(export_command)
    app.command("verify")(verify_command)


_register()


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    from auxgen.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except AuxgenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted; finished epochs are saved (train: continue with --resume)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # click's usage errors (typer vendors click in newer releases, so match by shape, not type)
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
