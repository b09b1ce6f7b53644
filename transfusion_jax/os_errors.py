"""Operating-system errors a user fixes outside the program (a leaf module).

A full disk, a quota, a missing permission, a read-only file system or a path through a
file is not a bug of this project: the user frees space or picks another path. Orbax and
tensorstore wrap such errors in their own exceptions, so they are looked for along the whole
cause chain.
"""

from __future__ import annotations

import errno

# errno -> the fix a user applies.
USER_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free disk space (or choose a --workdir on another disk)",
    errno.EDQUOT: "free space within your disk quota (or choose another --workdir)",
    errno.EACCES: "choose a path you may write to, or change its permissions",
    errno.EPERM: "choose a path you may write to, or change its permissions",
    errno.EROFS: "choose a --workdir on a writable file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder where a file was expected: choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def _chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and its causes / contexts, outermost first, each once."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def os_problem(error: BaseException) -> OSError | None:
    """The first `OSError` in ``error``'s chain whose errno a user fixes, or None."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in USER_ERRNOS:
            return e
    return None


def describe_os_error(error: OSError) -> str:
    """``<strerror>: <path>; <fix>`` for an `OSError` of `USER_ERRNOS`."""
    what = error.strerror or errno.errorcode.get(error.errno, "OS error")
    where = f": {error.filename}" if error.filename else ""
    return f"{what}{where}; {USER_ERRNOS[error.errno]}"
