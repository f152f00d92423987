"""``python -m threestudio_dreambooth3d.cli`` = the ``dreambooth3d`` command."""
import sys

from . import main

sys.exit(main())
