"""The ``sinecompress`` console script. It lives outside the package so that Ctrl-C while the package
imports (torch and transformers take seconds) ends quietly with exit 130 instead of a traceback."""

import sys


def main() -> None:
    try:
        from sinecompress.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (SIGINT) while starting; nothing was written\n")
        sys.exit(130)
    run()
