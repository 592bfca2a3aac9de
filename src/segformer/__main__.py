"""`python -m segformer ...` (also what `torchrun -m segformer train ...` runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
