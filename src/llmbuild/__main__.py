import sys

from llmbuild.cli import main

sys.exit(main())
