"""The spawn page's choices (image and resource profile) and their server-side check.

Pure functions: no Docker, no database, no JupyterHub. The spawner feeds them the
catalog's images and the configured profiles; anything a user sends, by the form or as
``user_options`` in the REST API, is checked here before a container is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from spawner.notebooks.images import NotebookImage
from spawner.notebooks.profiles import NotebookProfile

OPTION_KEYS = ("image", "profile")
# The query of a one-click start (/hub/spawn?opt-choice=last): the user's last choice,
# without the form. JupyterHub strips the "opt-" prefix before the spawner sees it.
LAST_CHOICE_QUERY = {"opt-choice": "last"}
NO_IMAGE = ("image: no image is enabled for notebooks right now; an admin can enable one "
            "on the Images page.")
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class InvalidChoice(ValueError):
    """The user asked for something not on offer; the message says what is."""


@dataclass(frozen=True)
class NotebookChoice:
    image: NotebookImage
    profile: NotebookProfile

    @property
    def memory_bytes(self) -> int:
        return memory_bytes(self.profile.memory)


def memory_bytes(memory: str) -> int:
    return int(memory[:-1]) * _UNITS[memory[-1]]


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Form fields (lists of strings) to ``user_options``; checking comes later, the same
    way for the form and the REST API."""
    options: dict[str, str] = {}
    for key in OPTION_KEYS:
        values = formdata.get(key) or []
        if len(values) > 1:
            raise InvalidChoice(f"{key}: choose one value, not {len(values)}.")
        if values:
            options[key] = values[0]
    return options


def asks_for_last_choice(query: Mapping[str, Sequence[str]]) -> bool:
    return dict(query) == {key[4:]: [value] for key, value in LAST_CHOICE_QUERY.items()}


def requested_image(user_options: Mapping[str, Any], images: Sequence[NotebookImage]) -> str:
    """The image reference the user asked for, or the default one."""
    _check_shape(user_options)
    image = user_options.get("image")
    if image not in (None, ""):
        return str(image)
    if not images:
        raise InvalidChoice(NO_IMAGE)
    return default_of(images).reference


def last_choice(
    previous: Mapping[str, Any] | None,
    images: Sequence[NotebookImage],
    profiles: Sequence[NotebookProfile],
) -> dict[str, str]:
    """What a one-click start uses: the image and profile of the user's last start while
    the catalog still offers them (the profile only with an image that allows it), else
    the default image and its first profile."""
    if not images:
        raise InvalidChoice(NO_IMAGE)
    previous = previous if isinstance(previous, Mapping) else {}
    offered = {image.reference: image for image in images}
    image = offered.get(str(previous.get("image")), default_of(images))
    options = {"image": image.reference}
    allowed = [profile.name for profile in profiles_for(image, profiles)]
    if allowed:  # none: the check before start says what is wrong with the image
        wanted = previous.get("profile")
        options["profile"] = wanted if wanted in allowed else allowed[0]
    return options


def choose_profile(
    user_options: Mapping[str, Any], image: NotebookImage, profiles: Sequence[NotebookProfile]
) -> NotebookProfile:
    """The profile the user asked for if the image allows it; else the image's first."""
    _check_shape(user_options)
    allowed = profiles_for(image, profiles)
    if not allowed:
        raise InvalidChoice(
            f"image: '{image.reference}' allows profiles {', '.join(image.profiles)}, none of "
            "which is configured; ask an admin to fix the image's profiles."
        )
    name = user_options.get("profile")
    if name in (None, ""):
        return allowed[0]
    for profile in allowed:
        if profile.name == name:
            return profile
    names = ", ".join(p.name for p in allowed)
    if any(p.name == name for p in profiles):
        raise InvalidChoice(
            f"profile: '{name}' is not offered with image '{image.reference}'; choose one of: "
            f"{names}."
        )
    raise InvalidChoice(f"profile: no profile named '{name}'; choose one of: {names}.")


def profiles_for(
    image: NotebookImage, profiles: Sequence[NotebookProfile]
) -> list[NotebookProfile]:
    if not image.profiles:
        return list(profiles)
    return [p for p in profiles if p.name in image.profiles]


def default_of(images: Sequence[NotebookImage]) -> NotebookImage:
    for image in images:
        if image.default:
            return image
    return images[0]


def _check_shape(user_options: Mapping[str, Any]) -> None:
    if not isinstance(user_options, Mapping):
        raise InvalidChoice("user_options must be an object with 'image' and 'profile'.")
    unknown = sorted(set(user_options) - set(OPTION_KEYS))
    if unknown:
        raise InvalidChoice(
            f"{unknown[0]}: unknown option; a notebook server takes only "
            f"{' and '.join(OPTION_KEYS)}."
        )
    for key in OPTION_KEYS:
        value = user_options.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidChoice(f"{key}: must be a string, not {type(value).__name__}.")


def describe(profile: NotebookProfile) -> str:
    if profile.description:
        return profile.description
    cpus = f"{profile.cpus:g} CPU" + ("" if profile.cpus == 1 else "s")
    return f"{profile.name}: {profile.memory}B memory, {cpus}"


def render_form(
    images: Sequence[NotebookImage],
    profiles: Sequence[NotebookProfile],
    *,
    previous: Mapping[str, Any] | None = None,
) -> str:
    """The options form: one card per image with its description and profiles, then the
    profile choice. The default image and first profile are preselected (or, when the
    user started before, what they chose last time). Plain HTML, no script: the
    server checks the combination."""
    if not images:
        return f'<p class="alert alert-warning" id="dockyard-no-image">{escape(NO_IMAGE[7:])}</p>'
    previous = previous or {}
    refs = {image.reference for image in images}
    selected_image = previous.get("image") if previous.get("image") in refs else None
    selected_image = selected_image or default_of(images).reference
    names = {p.name for p in profiles}
    selected_profile = previous.get("profile") if previous.get("profile") in names else None
    selected_profile = selected_profile or profiles[0].name

    parts = ['<fieldset class="mb-4" id="dockyard-images">',
             '<legend class="h5">Image</legend>']
    for index, image in enumerate(images):
        field_id = f"dockyard-image-{index}"
        allowed = ", ".join(describe(p) for p in profiles_for(image, profiles))
        badge = ' <span class="badge bg-secondary">default</span>' if image.default else ""
        parts.append(
            '<div class="card mb-2"><div class="card-body"><div class="form-check">'
            f'<input class="form-check-input" type="radio" name="image" id="{field_id}" '
            f'value="{escape(image.reference)}"'
            f'{" checked" if image.reference == selected_image else ""}>'
            f'<label class="form-check-label" for="{field_id}">'
            f'<strong>{escape(image.reference)}</strong>'
            f"{badge}"
            f'<br><span class="text-muted">{escape(image.description)}</span>'
            f'<br><small>Profiles: {escape(allowed)}</small></label></div></div></div>'
        )
    parts.append("</fieldset>")
    parts.append('<fieldset class="mb-2" id="dockyard-profiles">'
                 '<legend class="h5">Resources</legend>')
    for index, profile in enumerate(profiles):
        field_id = f"dockyard-profile-{index}"
        parts.append(
            '<div class="form-check">'
            f'<input class="form-check-input" type="radio" name="profile" id="{field_id}" '
            f'value="{escape(profile.name)}"'
            f'{" checked" if profile.name == selected_profile else ""}>'
            f'<label class="form-check-label" for="{field_id}">{escape(describe(profile))}'
            f' <small class="text-muted">(at most {profile.pids} processes)</small></label>'
            "</div>"
        )
    parts.append("</fieldset>")
    return "\n".join(parts)
