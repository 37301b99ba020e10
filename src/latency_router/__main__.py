import sys

from latency_router.cli import main

sys.exit(main())
