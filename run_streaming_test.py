#!/usr/bin/env python3
"""Start the streaming server and/or client. See README.md, or run with --help."""

import sys

from ditto.launcher import main

if __name__ == "__main__":
    sys.exit(main())
