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
