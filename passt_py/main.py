# SPDX-License-Identifier: MIT
"""Entry point: command line -> Config -> logging -> the service.

Exit statuses: 0 on success (including --help, --version, --print-capabilities and
--check-config), 1 on any configuration error, reported as one line on stderr, never a
traceback. The service (passt_py.service.run) owns everything after configuration: binding the
socket, calling passt_py.config.daemon at the right moments, and running the event loop.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from passt_py.config import cli
from passt_py.config.conf import Config, ConfigError, build_config
from passt_py.config.log import setup_logging

log = logging.getLogger(__name__)

# What QEMU expects from a vhost-user network back-end asked for its capabilities.
CAPABILITIES = {"type": "net"}


def _fail(message: str) -> int:
    """Report a configuration error the way every other error is reported here."""
    print(f"{cli.PROG}: {message}", file=sys.stderr)
    return 1


def start_logging(config: Config) -> None:
    """Set up logging from the configuration and replay what resolution noticed."""
    setup_logging(
        foreground=config.foreground,
        debug=config.debug,
        trace=config.trace,
        quiet=config.quiet,
        log_file=config.log_file,
        log_size=config.log_size,
    )
    for note in config.notes:
        log.warning("%s", note)
    for line in config.describe():
        log.debug("%s", line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run passt-py with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    try:
        args = cli.parse_args(argv)
    except cli.ParseError as e:
        return _fail(str(e))
    except SystemExit as e:  # --help and --version print and exit through argparse
        return int(e.code or 0)
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES, indent=2))
        return 0
    try:
        config = build_config(args)
    except ConfigError as e:
        return _fail(str(e))
    try:
        start_logging(config)
    except OSError as e:
        return _fail(f"-l/--log-file: {e.strerror}")
    if config.check_config:
        print("\n".join(config.describe()))
        return 0
    # Imported only now, by design (not to dodge a cycle): --help, --version and
    # --check-config answer without loading the C core and the data path.
    from passt_py.service import run

    return run(config)
