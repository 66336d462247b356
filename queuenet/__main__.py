import sys

from queuenet.cli import main

sys.exit(main())
