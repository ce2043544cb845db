"""`python -m flashtensors.cli`: the same as the `flashtensors` command."""

import sys

from . import main

sys.exit(main())
