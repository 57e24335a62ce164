"""``python -m convnets`` (what ``torchrun ... -m convnets train`` runs on each process)."""

import sys

from convnets.cli import main

sys.exit(main())
