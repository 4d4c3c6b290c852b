"""The spawn page's choices and their server-side check (pure functions)."""

from __future__ import annotations

import re

import pytest

from dockyard.settings import DEFAULT_NOTEBOOK_PROFILES
from spawner.notebooks.images import NotebookImage
from spawner.notebooks.options import (
    InvalidChoice,
    asks_for_last_choice,
    choose_profile,
    last_choice,
    memory_bytes,
    options_from_form,
    render_form,
    requested_image,
)
from spawner.notebooks.profiles import NotebookProfile

SMALL, LARGE = DEFAULT_NOTEBOOK_PROFILES
TEAM = NotebookImage("team/nb:1", "Team image", default=True)
SPARK = NotebookImage("team/spark:1", "With Spark <b>3</b>", profiles=("large",))


def test_form_fields_become_user_options() -> None:
    assert options_from_form({"image": ["team/nb:1"], "profile": ["large"]}) == {
        "image": "team/nb:1", "profile": "large"}
    assert options_from_form({}) == {}
    with pytest.raises(InvalidChoice, match="profile: choose one value"):
        options_from_form({"profile": ["small", "large"]})


def test_defaults_when_nothing_is_asked() -> None:
    assert requested_image({}, [SPARK, TEAM]) == "team/nb:1"  # the catalog's default
    assert requested_image({}, [SPARK]) == "team/spark:1"  # else the first
    assert choose_profile({}, TEAM, DEFAULT_NOTEBOOK_PROFILES) == SMALL
    assert choose_profile({}, SPARK, DEFAULT_NOTEBOOK_PROFILES) == LARGE


@pytest.mark.parametrize(
    ("options", "image", "message"),
    [
        ({"profile": "huge"}, TEAM, "no profile named 'huge'; choose one of: small, large"),
        ({"profile": "small"}, SPARK, "'small' is not offered with image 'team/spark:1'"),
        ({"profile": 2}, TEAM, "profile: must be a string"),
        ({"cpu": "64"}, TEAM, "cpu: unknown option"),
    ],
)
def test_anything_not_on_offer_is_refused_with_the_field_named(
    options: dict, image: NotebookImage, message: str
) -> None:
    with pytest.raises(InvalidChoice) as caught:
        choose_profile(options, image, DEFAULT_NOTEBOOK_PROFILES)
    assert message in str(caught.value)


def test_an_image_whose_profiles_are_all_gone_says_so() -> None:
    orphan = NotebookImage("team/gpu:1", "", profiles=("gpu",))
    with pytest.raises(InvalidChoice, match="allows profiles gpu, none of which"):
        choose_profile({}, orphan, DEFAULT_NOTEBOOK_PROFILES)


def test_no_image_on_offer_is_explained() -> None:
    with pytest.raises(InvalidChoice, match="no image is enabled for notebooks"):
        requested_image({}, [])
    assert 'id="dockyard-no-image"' in render_form([], DEFAULT_NOTEBOOK_PROFILES)


def test_user_options_must_be_an_object() -> None:
    with pytest.raises(InvalidChoice, match="must be an object"):
        requested_image(["team/nb:1"], [TEAM])  # type: ignore[arg-type]


def test_form_lists_images_and_profiles_with_default_checked_and_text_escaped() -> None:
    html = render_form([TEAM, SPARK], DEFAULT_NOTEBOOK_PROFILES)
    assert re.search(r'value="team/nb:1" checked', html)
    assert 'value="team/spark:1">' in html
    assert "With Spark &lt;b&gt;3&lt;/b&gt;" in html and "<b>3</b>" not in html
    assert re.search(r'value="small" checked', html)
    assert "Profiles: Large: 8 GB memory, 2 CPUs</small>" in html  # Spark's narrowed list
    assert "<script" not in html


def test_form_remembers_the_last_choice() -> None:
    html = render_form([TEAM, SPARK], DEFAULT_NOTEBOOK_PROFILES,
                       previous={"image": "team/spark:1", "profile": "large"})
    assert 'value="team/spark:1" checked' in html and 'value="large" checked' in html
    stale = render_form([TEAM], DEFAULT_NOTEBOOK_PROFILES, previous={"image": "gone/img:1"})
    assert 'value="team/nb:1" checked' in stale


@pytest.mark.parametrize(
    ("previous", "started"),
    [
        (None, {"image": "team/nb:1", "profile": "small"}),  # first start: the defaults
        ({"image": "team/spark:1", "profile": "large"}, {"image": "team/spark:1",
                                                         "profile": "large"}),
        ({"image": "team/nb:1", "profile": "large"}, {"image": "team/nb:1", "profile": "large"}),
        # The image is no longer offered: the default, keeping a profile it allows.
        ({"image": "gone/img:1", "profile": "large"}, {"image": "team/nb:1", "profile": "large"}),
        # The profile is not allowed with the image (or no longer exists): its first.
        ({"image": "team/spark:1", "profile": "small"}, {"image": "team/spark:1",
                                                         "profile": "large"}),
        ({"image": "team/nb:1", "profile": "huge"}, {"image": "team/nb:1", "profile": "small"}),
        ({"image": ["not", "a", "string"]}, {"image": "team/nb:1", "profile": "small"}),
    ],
)
def test_one_click_starts_the_last_choice_while_it_is_offered(
    previous: dict | None, started: dict
) -> None:
    assert last_choice(previous, [SPARK, TEAM], DEFAULT_NOTEBOOK_PROFILES) == started


def test_one_click_with_nothing_on_offer_is_explained() -> None:
    with pytest.raises(InvalidChoice, match="no image is enabled for notebooks"):
        last_choice({"image": "team/nb:1"}, [], DEFAULT_NOTEBOOK_PROFILES)


def test_the_one_click_query_asks_for_nothing_else() -> None:
    assert asks_for_last_choice({"choice": ["last"]})
    assert not asks_for_last_choice({"choice": ["last"], "image": ["team/nb:1"]})
    assert not asks_for_last_choice({"choice": ["first"]})
    assert not asks_for_last_choice({"image": ["team/nb:1"], "profile": ["small"]})


def test_memory_sizes() -> None:
    assert memory_bytes("512M") == 512 * 1024**2
    assert memory_bytes("2G") == 2 * 1024**3
    profile = NotebookProfile(name="tiny", memory="256M", cpus=0.25)
    assert profile.pids == 1024
