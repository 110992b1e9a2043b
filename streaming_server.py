#!/usr/bin/env python3
"""Ditto streaming server. See README.md, or run with --help."""

import sys

from ditto.server.main import main

if __name__ == "__main__":
    sys.exit(main())
