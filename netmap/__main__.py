import sys

from netmap.cli import main

sys.exit(main())
