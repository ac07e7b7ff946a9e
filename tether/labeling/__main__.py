"""``python -m tether.labeling SUBCOMMAND``: the ``tether label`` commands alone."""

import sys

from tether.labeling.cli import main

sys.exit(main())
