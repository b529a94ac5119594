"""What in a folder tree other users of the machine could read or write.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def loose_entries(root: Path) -> list[str]:
    """Files and folders under `root` (itself included) with any group/other permission bit, as "path mode".

    Skipped, with reason: symbolic links (their own mode is always 0777 and never checked by the kernel; the
    target is checked, and is itself in the walk when it lies under `root`) and sockets (a Unix socket's access is
    governed by its folder, which is checked)."""
    found = []
    for entry in [root, *(Path(r, n) for r, dirs, files in os.walk(root) for n in (*dirs, *files))]:
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:  # a temporary file removed during the walk
            continue
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            continue
        if mode & 0o077:
            found.append(f"{entry.relative_to(root.parent)} {stat.filemode(mode)}")
    return found
