"""``midvary fake-server``: the fake provider's own command, loaded only when chosen.

Its options, handler and help live with the fake provider (``midvary.testing._serve``, also
runnable as ``python -m midvary.testing._serve``); this module only plugs them in, so the
fake provider is imported by this command and ``demo`` and by no other.
"""

from __future__ import annotations

import argparse


def options(parser: argparse.ArgumentParser) -> None:
    """Add the fake server's options to ``parser`` and set its handler."""
    from midvary.testing import _serve  # noqa: PLC0415 - the fake provider, only when chosen

    parser.description = _serve.HELP
    _serve.configure_parser(parser)
    parser.set_defaults(handler=_serve.run_fake_server)
