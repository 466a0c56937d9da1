"""Reading and writing messages in protobuf text format and in binary (Caffe's binaryproto)."""
from __future__ import annotations

import os
import pathlib
import re
from typing import TypeVar

from google.protobuf import message as _message
from google.protobuf import text_format

from .errors import RapaError
from .fileio import atomic_write_bytes
from .proto import pb

M = TypeVar("M", bound=_message.Message)


def _read(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RapaError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RapaError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise RapaError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_text(text: str, message: M, source: str = "<string>") -> M:
    """Parse protobuf text into `message`; errors name the source, line and column."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        where = f"{source}:{line}:{column}" if line else source
        # The parser's own message starts with "line:column : "; keep only what follows.
        detail = str(e).split(" : ", 1)[-1] if line else str(e)
        if 'named "layers"' in detail:
            detail += " (Caffe's old V1 format: upgrade it with Caffe's upgrade_net_proto_text)"
        raise RapaError(f"{where}: {detail} (in a {message.DESCRIPTOR.name})"
                        f"{_other_kind(detail, message)}") from None
    return message


_KINDS = {"NetParameter": "a net", "SolverParameter": "a solver"}


def _other_kind(detail: str, message) -> str:
    """": a solver file? ..." where the unknown field the parser names is one of the other kind
    of file's (a solver given as --model, a net as --solver), else ""."""
    found = re.search(r'has no field named "(\w+)"', detail)
    mine = message.DESCRIPTOR.name
    if not found or mine not in _KINDS:
        return ""
    for other in (pb.NetParameter, pb.SolverParameter):
        name = other.DESCRIPTOR.name
        if name != mine and found.group(1) in other.DESCRIPTOR.fields_by_name:
            return f": {_KINDS[name]} file? it is read as {_KINDS[mine]} here"
    return ""


def read_text(path: str | os.PathLike, message: M) -> M:
    """Read a .prototxt file into `message` (a fresh instance of the expected type)."""
    path = pathlib.Path(path)
    data = _read(path)
    if b"\0" in data:
        raise RapaError(f"{path}: not a text file (it holds NUL bytes: a binary file?)")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        # Caffe reads bytes: a Latin-1 comment (an accent in an author's name) is fine there.
        text = data.decode("latin-1")
    return parse_text(text, message, str(path))


def write_text(path: str | os.PathLike, message: _message.Message) -> None:
    atomic_write_bytes(path, text_format.MessageToString(message).encode())


def read_binary(path: str | os.PathLike, message: M) -> M:
    """Read a binary protobuf file (.caffemodel, .binaryproto, .solverstate)."""
    path = pathlib.Path(path)
    data = _read(path)
    try:
        message.ParseFromString(data)
    except _message.DecodeError as e:
        raise RapaError(f"{path}: not a valid binary {message.DESCRIPTOR.name} ({e})") from None
    return message


def write_binary(path: str | os.PathLike, message: _message.Message) -> None:
    atomic_write_bytes(path, message.SerializeToString())
