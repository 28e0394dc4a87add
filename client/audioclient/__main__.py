"""``python -m audioclient``: the same as the ``audio-client`` command."""

import sys

from .cli import main

sys.exit(main())
