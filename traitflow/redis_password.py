"""The embedded Redis's password: generated once into the traitflow home, read after.

Why a password on a Redis that listens on loopback only: anyone who can reach it (any
local user or process, a browser page abusing a local port) could write an API key
record and read every profile. Why generated rather than a fixed default: a default
known to everyone protects nothing. Why a file in the home: the demo's worker and API
are started with the demo's environment, and `traitflow services up` and later
commands run in separate processes; each reads the same file (mode 0600, so other
users of the machine cannot), and a fresh clone needs no step to make one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

FILE_NAME = "redis.password"


def password_file(home: Path) -> Path:
    return home / FILE_NAME


def embedded_password(home: Path) -> str:
    """The password in `home`'s file, generated there first if there is none. Two
    processes starting at once both end up with the one that was written first
    (O_EXCL), never with a half-written one."""
    path = password_file(home)
    with contextlib.suppress(FileNotFoundError):
        if found := path.read_text().strip():
            return found
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        try:
            os.link(temporary, path)  # fails if another process wrote it meanwhile
        except FileExistsError:
            return path.read_text().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return password


def url_with_password(url: str, password: str) -> str:
    """`url` authenticating with `password` (as the default user unless it names one)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]  # as written: already quoted
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
