"""The one exception type for a user's mistake: the tools print its message, never a traceback."""


class RapaError(Exception):
    """Bad input from a user (a file, a layer, an argument); the message says where and what."""
