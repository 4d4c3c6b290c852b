"""Image references checked against Docker's own grammar (distribution/reference).

Built from the same pieces, in the same order, as ``reference/regexp.go`` so that what
Dockyard accepts is exactly what the engine accepts:

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain '/'] path-component ['/' path-component]*
    domain           := host [':' port-number]
    host             := domain-name | IPv6address
    domain-name      := domain-component ['.' domain-component]*
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    path-component   := alpha-numeric [separator alpha-numeric]*
    alpha-numeric    := /[a-z0-9]+/
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" hex (32 or more)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

REFERENCE_PATTERN = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII)
NAME_TOTAL_LENGTH_MAX = 255


class InvalidReference(ValueError):
    """Not a Docker image reference; the message says which part is wrong."""


@dataclass(frozen=True)
class ImageReference:
    name: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """Parse ``text`` or raise InvalidReference with a message a person can act on.

    A reference with neither tag nor digest gets ``latest``, as the engine would give
    it, so that the catalog, the spawner and the job backends all name the same image.
    """
    text = text.strip()
    if not text:
        raise InvalidReference("give an image reference such as 'dockyard/notebook:2024.06'")
    match = REFERENCE_PATTERN.match(text)
    if match is None:
        lowered = text.lower()
        if lowered != text and REFERENCE_PATTERN.match(lowered):
            raise InvalidReference(
                f"'{text}' has upper-case letters; repository names must be lower-case"
            )
        raise InvalidReference(
            f"'{text}' is not a Docker image reference; expected "
            "[registry[:port]/]name[/name...][:tag][@digest], e.g. 'team/spark:3.5'"
        )
    name, tag, digest = match.groups()
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"repository name is {len(name)} characters long; Docker allows at most "
            f"{NAME_TOTAL_LENGTH_MAX}"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(name=name, tag=tag, digest=digest)


def normalize_reference(text: str) -> str:
    return str(parse_reference(text))
