import sys

from dpfedlora.cli import main

sys.exit(main())
