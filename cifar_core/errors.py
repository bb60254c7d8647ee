"""One exception type per kind of untrusted input, all under CifarError.

The CLI and the dashboard catch CifarError and show its message as one line;
anything else is a bug.
"""


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its message's first line, or its type's name."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class CifarError(Exception):
    """Base class: a problem a user can fix, with a one-line message."""


class ConfigError(CifarError, ValueError):
    """A training configuration or argument is invalid."""


class DataSourceError(CifarError):
    """A dataset source is missing, unreadable or malformed."""


class UnsafeArchiveError(DataSourceError):
    """An archive member would escape its destination or exceed a cap."""


class UnsafePickleError(DataSourceError):
    """A pickle asks for something a CIFAR batch never contains."""


class ImageDecodeError(CifarError):
    """Bytes that are not an acceptable, decodable image."""


class ModelFileError(CifarError):
    """A saved model is missing, unsafe, or has the wrong shape."""


class RunFolderError(CifarError):
    """A run folder is missing files or holds corrupt ones."""
