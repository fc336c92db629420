"""Identity forms: real-world LinkedIn URLs, emails and external ids compare as one person."""

from __future__ import annotations

import pytest

from contactsync.identities import email_key, external_key, linkedin_key, parse_external_id

JOHN = "linkedin.com/in/johndoe"


@pytest.mark.parametrize("url", [
    "https://www.linkedin.com/in/johndoe",
    "https://www.linkedin.com/in/johndoe/",
    "http://LinkedIn.com/in/JohnDoe/?trk=x",
    "https://linkedin.com/in/johndoe?originalSubdomain=br",
    "https://br.linkedin.com/in/johndoe",
    "https://m.linkedin.com/in/johndoe#experience",
    "https://WWW.LINKEDIN.COM/in/JOHNDOE",
    "  https://www.linkedin.com/in/johndoe/details/experience/  ",
    "https://www.linkedin.com./in/johndoe",
    "https://www.linkedin.com/in/john%64oe",
])
def test_every_form_of_a_profile_url_is_one_person(url: str) -> None:
    assert linkedin_key(url) == JOHN


def test_a_percent_encoded_slug_is_decoded_and_lower_cased() -> None:
    jose = "linkedin.com/in/josé-silva"
    assert linkedin_key("https://www.linkedin.com/in/Jos%C3%A9-Silva") == jose
    assert linkedin_key("https://www.linkedin.com/in/josé-silva/") == jose


@pytest.mark.parametrize(("url", "other"), [
    ("https://www.linkedin.com/in/johndoe", "https://www.linkedin.com/in/johndoe2"),
    ("https://www.linkedin.com/in/johndoe", "https://notlinkedin.com/in/johndoe"),
    ("https://www.linkedin.com/in/johndoe", "https://linkedin.com.evil.example/in/johndoe"),
    ("https://www.linkedin.com/in/johndoe", "https://www.linkedin.com/company/johndoe"),
])
def test_different_people_stay_different(url: str, other: str) -> None:
    assert linkedin_key(url) != linkedin_key(other)


def test_a_url_that_is_no_profile_compares_by_host_and_path() -> None:
    assert linkedin_key("https://Example.com/People/Ann/?x=1") == "example.com/people/ann"
    assert linkedin_key("http://example.com/people/ann") == "example.com/people/ann"


@pytest.mark.parametrize("email", [
    "John@Example.com", "john@example.com", " JOHN@EXAMPLE.COM ", "john@EXAMPLE.com",
])
def test_emails_compare_case_insensitively(email: str) -> None:
    assert email_key(email) == "john@example.com"


def test_external_ids_compare_exactly() -> None:
    assert external_key("salesforce", "0035e00000AbCdE") != external_key(
        "salesforce", "0035e00000abcde"
    )


@pytest.mark.parametrize(("value", "parsed"), [
    ("hubspot:51", ("hubspot", "51")),
    ("salesforce:0035e00000AbCdE", ("salesforce", "0035e00000AbCdE")),
    ("crm:a:b", ("crm", "a:b")),
    ("HubSpot:51", None),
    ("hubspot:", None),
    ("hubspot", None),
    (":51", None),
    ("hubspot:" + "x" * 256, None),
    ("hub\nspot:1", None),
])
def test_external_id_queries(value: str, parsed: tuple[str, str] | None) -> None:
    assert parse_external_id(value) == parsed


def test_text_that_is_no_url_is_compared_as_text() -> None:
    assert linkedin_key(" http://[Broken ") == "http://[broken"
