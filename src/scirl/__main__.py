"""`python -m scirl ...` runs the scirl command line (also what `torchrun -m scirl` starts)."""

import sys

from scirl.cli import main

sys.exit(main())
