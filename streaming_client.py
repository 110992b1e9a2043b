#!/usr/bin/env python3
"""Ditto streaming client. See README.md, or run with --help."""

import sys

from ditto.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
