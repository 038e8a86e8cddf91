"""The contract's compatibility gate: `buf breaking` against the contract as it was
before its latest change (`make lint` runs it; docs/adr/0027).

Which contract it compares with:

- proto/ (or buf.yaml) differs from HEAD: the working tree against HEAD, so a change is
  checked before it is committed;
- otherwise: HEAD against the parent of the newest commit that changed them, so CI on a
  fresh clone checks the latest contract change itself.

A deliberate break is let through by naming its commit in `contract/breaking-allowed`
(one full commit id per line, with a comment saying why): the gate then skips that one
comparison and says so. A checkout without the history it needs (a shallow clone) fails
loudly rather than passing by checking nothing.

`python -m agentmesh.devstack.contract_gate [--buf PATH]`; exit 0 when compatible, 1
with buf's findings otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Final

from agentmesh.devstack import paths

CONTRACT_PATHS: Final = ("proto", "buf.yaml")
ALLOWED_FILE: Final = Path("contract") / "breaking-allowed"


class GateError(Exception):
    """The gate could not decide (no git history, no buf)."""


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GateError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def allowed_breaks(root: Path) -> set[str]:
    """Commit ids whose contract break was accepted on purpose."""
    path = root / ALLOWED_FILE
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            ids.add(text)
    return ids


def baseline(root: Path) -> tuple[str, str] | None:
    """(git ref to compare against, why), or None when the change at hand was accepted
    as a break (see the module docstring)."""
    if _git(root, "status", "--porcelain", "--", *CONTRACT_PATHS):
        return "HEAD", "uncommitted contract changes against HEAD"
    newest = _git(root, "log", "-1", "--format=%H", "--", *CONTRACT_PATHS)
    if not newest:
        raise GateError("no commit changed the contract: nothing to compare with")
    if newest in allowed_breaks(root):
        return None
    if _git(root, "rev-parse", "--is-shallow-repository") == "true":
        raise GateError("a shallow clone: the contract's history is missing (fetch it)")
    parents = _git(root, "log", "-1", "--format=%P", newest).split()
    if not parents:
        return None  # the contract's first commit: nothing came before it
    return parents[0], f"the contract change {newest[:12]} against its parent"


def run_gate(root: Path, buf: str) -> int:
    try:
        against = baseline(root)
    except GateError as exc:
        print(f"contract gate: {exc}", file=sys.stderr)
        return 2
    if against is None:
        print(f"contract gate: the latest contract change is listed in {ALLOWED_FILE}; skipped")
        return 0
    ref, why = against
    done = subprocess.run([buf, "breaking", "--against", f".git#ref={ref}"], cwd=root, check=False)
    if done.returncode != 0:
        print(
            f"contract gate: incompatible with the contract before ({why}). Keep the old"
            f" field or method (deprecate it), or, for a deliberate break, add the commit"
            f" id to {ALLOWED_FILE} with the reason (docs/adr/0027).",
            file=sys.stderr,
        )
        return 1
    print(f"contract gate: compatible ({why})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmesh.devstack.contract_gate")
    parser.add_argument("--buf", default="buf", help="the buf executable")
    parser.add_argument("--root", type=Path, default=None, help="the checkout (default: this)")
    args = parser.parse_args(argv)
    return run_gate(args.root or paths.repo_root(), args.buf)


if __name__ == "__main__":
    sys.exit(main())
