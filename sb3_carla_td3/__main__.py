"""``python -m sb3_carla_td3``: the same command line as ``sb3-carla-td3``."""

import sys

from sb3_carla_td3.cli import main

sys.exit(main())
