"""``python -m aegis_controller.cli``: the same as the ``aegis-controller`` command."""

import sys

from . import main

sys.exit(main())
