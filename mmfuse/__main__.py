import sys

from mmfuse.cli import main

sys.exit(main())
