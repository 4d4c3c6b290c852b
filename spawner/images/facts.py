"""What an image engine answers about an image, and how it says it cannot.

Plain values with no engine SDK behind them, so that the service can name them (the
catalog's ``ImageEngine`` interface, its build runner) without importing docker.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineUnavailable(Exception):
    """No engine answered; nothing about the image can be known now."""


class BuildFailed(Exception):
    """A build or an inspection failed; the message is the engine's own reason."""


@dataclass(frozen=True)
class ImageFacts:
    reference: str
    image_id: str
    # The registry digest when the image came from a registry, else the image id.
    digest: str
    size_bytes: int
    created: str
