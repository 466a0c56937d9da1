"""The one exception type for a user's mistake: the tools print its message, never a traceback."""


class RapaError(Exception):
    """Bad input from a user (a file, a layer, an argument); the message says where and what.

    `shared`: every process of a data-parallel run raises the same one (process 0 says it)."""

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared


def os_error_message(e: OSError) -> str:
    """'path: reason' (both paths for a rename), without Python's '[Errno N]'."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"


def first_line(error: BaseException, limit: int = 0) -> str:
    """The first non-blank line of an error's message, stripped, or its type's name where the
    message is empty (EOFError()); cut at a word to at most `limit` characters where limit > 0.
    For one-line reports of errors that come from libraries (torch, gloo, a worker process)."""
    line = next((part.strip() for part in str(error).splitlines() if part.strip()), "")
    if not line:
        return type(error).__name__
    if limit and len(line) > limit:  # whole words where there are blanks, else cut in one
        line = line[:limit - 3].rsplit(" ", 1)[0][:limit - 4] + " ..."
    return line
