"""Error kinds shared by the CLI and the serve loop.

Every failure the engine reports is one of three kinds, so the plug-in and the CLI can
say something actionable: the input was wrong (the user can fix it), the engine broke
(a bug or an environment problem: report it), or the user cancelled.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base of all errors the engine reports; ``kind`` goes on the wire."""

    kind = "engine"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(EngineError):
    """The request or the image cannot be processed as given."""

    kind = "bad-input"


class Cancelled(EngineError):
    """The user asked to stop."""

    kind = "cancelled"

    def __init__(self, message: str = "cancelled by the user", partial: object = None) -> None:
        super().__init__(message)
        # What the op had computed when it stopped (e.g. DIP's averaged output so far), for
        # callers that offer to keep it; None when there is nothing usable.
        self.partial = partial
