"""The ``dtesn-trio`` command: ``serve`` and ``soak``."""

from __future__ import annotations

import click

from dtesn_trio._version import __version__
from dtesn_trio.soak.cli import soak


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dtesn-trio")
def main() -> None:
    """dtesn-trio: a Trio-native runtime for request-processing servers."""


def _add_serve() -> None:
    from dtesn_trio.server.cli import serve_command

    main.add_command(serve_command)


_add_serve()
main.add_command(soak)
