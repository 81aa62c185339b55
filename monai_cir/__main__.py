"""``python -m monai_cir`` runs the ``monai-cir`` command (useful from a source checkout)."""

import sys

from .cli import main

sys.exit(main())
