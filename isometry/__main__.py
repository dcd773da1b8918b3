"""`python -m isometry` is the `isometry` command."""

import sys

from isometry.cli import main

sys.exit(main())
