"""Before/after figures from one invocation: a benchmark run on this checkout and on an earlier commit, in turns.

A benchmark that takes ``--before REV`` measures itself as usual and, in turns with that, the same script run
in a temporary git worktree of ``REV`` (its package and its bundle configs, this script), so both figures
come from the same minutes of the same machine and drifts of its speed do not bias the ratio. The script
must print its result as one JSON line after ``--json`` and use the package and configs of its working
directory.
"""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[str]:
    """A detached git worktree of ``rev`` in a temporary folder, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="bench-before-")
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", folder, rev], cwd=REPO, check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", folder], cwd=REPO, check=False)


def run_json(script: str, args: list[str], tree: str = REPO) -> dict:
    """Run ``script`` (a path) with ``args`` and ``--json`` on the package and configs of ``tree``; its JSON."""
    result = subprocess.run(
        [sys.executable, script, *args, "--json"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script} in {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def in_turns(script: str, args: list[str], rev: str, rounds: int) -> tuple[list[dict], list[dict]]:
    """``rounds`` results of ``script`` at ``rev`` and on this checkout, the two taking turns."""
    before, now = [], []
    with worktree(rev) as tree:
        for _ in range(rounds):
            before.append(run_json(script, args, tree))
            now.append(run_json(script, args))
    return before, now


def medians_in_turns(script: str, rev: str, rounds: int) -> tuple[dict, dict]:
    """The median figures of ``script`` at ``rev`` and on this checkout, ``rounds`` runs of each in turns, with
    this command line's arguments but ``--before REV``."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--before":
            skip = not skip
            continue
        args.append(arg)
    before, now = in_turns(script, args, rev, rounds)

    def medians(results: list[dict]) -> dict:
        return {key: statistics.median(r[key] for r in results) for key in results[0]}

    return medians(before), medians(now)
