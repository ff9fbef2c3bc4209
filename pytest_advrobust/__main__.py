"""``python -m pytest_advrobust merge shard-*.json [--json=PATH] ...``: see :mod:`.merge`."""

import sys

from .merge import main

if __name__ == "__main__":
    sys.exit(main())
