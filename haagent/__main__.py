"""`python -m haagent` is the `haagent` command."""

import sys

from haagent.cli import main

sys.exit(main())
