import sys

from massmech.cli import main

sys.exit(main())
