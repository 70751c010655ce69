import sys

from deqflow.cli import main

sys.exit(main())
