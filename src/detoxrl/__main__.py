"""``python -m detoxrl ...``: the ``detoxrl`` command line (also what ``torchrun -m detoxrl`` and
``accelerate launch -m detoxrl`` start in each process)."""

import sys

from detoxrl.cli import main

if __name__ == "__main__":
    sys.exit(main())
