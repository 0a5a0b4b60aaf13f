"""`python -m haagent` is the `haagent` command."""

import sys

from haagent.cli import main

# Guarded: the daemon's worker process ("spawn") re-imports the main module as __mp_main__,
# and must not run the command line again there.
if __name__ == "__main__":
    sys.exit(main())
