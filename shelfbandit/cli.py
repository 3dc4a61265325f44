"""The `shelfbandit` command. Subcommands live beside the code they drive and load on demand."""

from __future__ import annotations

import importlib
import sys

import click

from bandit.errors import ShelfBanditError

# subcommand name -> "module:attribute" of a click command
COMMANDS = {
    "rank": "shelfbandit.commands:rank",
    "demo": "shelfbandit.demo:demo",
    "evaluate": "offline_eval.commands:evaluate",
    "serve": "service.commands:serve",
    "join": "service.commands:join",
    "doctor": "service.commands:doctor",
    "openapi": "service.commands:openapi",
    "train": "service.training.commands:train",
    "arms": "service.experiments.commands:arms",
    "ab-report": "service.experiments.commands:ab_report",
    "simulate": "simulator.commands:simulate",
    "simulate-log": "simulator.commands:simulate_log",
    "sweep": "simulator.commands:sweep",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (keeps `--help` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="shelf-bandit")
def cli() -> None:
    """shelf-bandit: order a home page's shelves with a Vowpal Wabbit contextual bandit,
    log what was shown with its probability, learn from rewards, and prove a policy offline."""


def main() -> None:
    """Entry point: project errors become one clear line on stderr and exit status 2."""
    try:
        status = cli.main(standalone_mode=False)  # a command's `Exit(n)` comes back as n, not raised
        if isinstance(status, int) and status:
            sys.exit(status)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ShelfBanditError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        click.echo(f"error: {err.strerror}: {err.filename}", err=True)
        sys.exit(2)
