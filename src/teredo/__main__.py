import sys

from teredo.cli.main import main

sys.exit(main())
