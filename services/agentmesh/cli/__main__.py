"""``python -m agentmesh.cli``: the same as the ``agentmesh`` script."""

import os

from agentmesh.cli.app import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
raise SystemExit(main())
