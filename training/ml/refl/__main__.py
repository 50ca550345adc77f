from __future__ import annotations

import sys

from training.ml.refl.cli import main

if __name__ == "__main__":
    sys.exit(main())
