"""``python -m agentmesh.bench``: run the registered benches, write JSON and the docs.

python -m agentmesh.bench                 # every bench, full length
python -m agentmesh.bench --small         # short runs: a smoke test
python -m agentmesh.bench --only core     # a selection (comma-separated)
python -m agentmesh.bench --out-json r.json --no-write-docs
"""

from __future__ import annotations

from agentmesh.bench.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
