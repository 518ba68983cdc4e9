"""`python -m tfrec_proxy.cli`: the same as the `tfrec-proxy` console script."""

import sys

from tfrec_proxy.cli.commands import main

sys.exit(main())
