import sys

from ditto.serve.cli import main

sys.exit(main())
