import sys

from p2pgan.cli import main

sys.exit(main())
