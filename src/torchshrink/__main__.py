"""``python -m torchshrink``, and under torchrun: ``torchrun --nproc-per-node N -m torchshrink COMMAND ...``."""

import sys

from torchshrink.cli import main

sys.exit(main())
