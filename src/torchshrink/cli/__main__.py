"""``python -m torchshrink.cli``."""

import sys

from torchshrink.cli import main

sys.exit(main())
