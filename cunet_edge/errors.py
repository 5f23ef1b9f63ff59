"""One user-facing error family: the CLI prints these as one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "CunetEdgeError",
    "ConfigError",
    "ArtifactError",
    "DatasetError",
    "BackendMissingError",
    "import_backend",
    "OutputPathError",
    "one_line",
]


class CunetEdgeError(Exception):
    """Base class of every error the library raises on bad input or missing setup."""

    exit_code = 1


class ConfigError(CunetEdgeError):
    """A config value, key or option that is not allowed."""


class ArtifactError(CunetEdgeError):
    """An artifact directory that is missing, incomplete, corrupted or of the wrong kind."""


class DatasetError(CunetEdgeError):
    """A dataset that is unknown, not installed, or holds files that are not images."""


class OutputPathError(CunetEdgeError):
    """An output path that cannot be written."""


def one_line(exc: BaseException) -> str:
    """An error's message as the one line the CLI prints, whatever it quotes (a file name or key with a newline)."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


class BackendMissingError(CunetEdgeError):
    """An optional backend that is not installed; the message says how to install it."""

    def __init__(self, package: str, hint: str):
        super().__init__(f"{package} is not installed: {hint}")
        self.package = package
        self.hint = hint


def import_backend(module: str, package: str, hint: str):
    """Import an optional backend module, or raise BackendMissingError(package, hint) in one line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendMissingError(package, hint) from None
