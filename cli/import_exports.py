"""The exports `contactsync import` recognises by their header, and `--match` identities.

LinkedIn's `Connections.csv`, HubSpot's contacts export and Salesforce's contact export or
report carry no `cnt_` id; each is upserted by the identities it does carry. Headers are
compared lower-cased and trimmed, as every header is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXTERNAL_PREFIX = "external_ids."
_SYSTEM = re.compile(r"[a-z0-9_]{1,32}")
IDENTITIES_HELP = "email, linkedin_url or external_ids.<system>"


class MatchError(ValueError):
    """A `--match` value that names no identity."""


def parse_match(text: str) -> tuple[str, ...]:
    """Return the identities of a `--match` value (`email,external_ids.hubspot`), in order."""
    names = tuple(part.strip() for part in text.split(","))
    for name in names:
        if name in ("email", "linkedin_url"):
            continue
        system = name.removeprefix(EXTERNAL_PREFIX)
        if name == system or not _SYSTEM.fullmatch(system):
            raise MatchError(f"{name!r} is not an identity: use {IDENTITIES_HELP}")
    if len(set(names)) != len(names):
        raise MatchError(f"{text!r} names an identity twice")
    return names


@dataclass(frozen=True)
class Export:
    """A known export: what its columns become, and how its rows are upserted."""

    name: str
    source: str  # the `source` of a contact it creates
    match: tuple[str, ...]  # the default `--match`
    columns: dict[str, str]  # lower-cased header -> field or `external_ids.<system>`
    name_parts: tuple[str, ...]  # lower-cased headers joined, in order, into `name`
    ignored: frozenset[str] = frozenset()  # known to have no field: left out without a notice

    def name_index(self, label: str) -> int | None:
        """Return the place in `name` of a column (First before Last), or None."""
        for place, part in enumerate(self.name_parts):
            if label == part:
                return place
        return None


LINKEDIN = Export(
    name="LinkedIn connections export", source="linkedin", match=("linkedin_url", "email"),
    columns={"url": "linkedin_url", "email address": "email", "company": "company",
             "position": "position"},
    name_parts=("first name", "last name"), ignored=frozenset({"connected on"}),
)
HUBSPOT = Export(
    name="HubSpot contacts export", source="crm", match=("external_ids.hubspot", "email"),
    columns={"record id": "external_ids.hubspot", "email": "email", "phone number": "phone",
             "company name": "company", "job title": "position"},
    name_parts=("first name", "last name"),
)
SALESFORCE = Export(
    name="Salesforce contacts export", source="crm", match=("external_ids.salesforce", "email"),
    columns={"contact id": "external_ids.salesforce", "id": "external_ids.salesforce",
             "email": "email", "phone": "phone", "account name": "company", "title": "position"},
    # A report says "First Name", the data export (the API's names) "FirstName".
    name_parts=("first name", "firstname", "last name", "lastname"),
)


def recognise(labels: set[str]) -> Export | None:
    """Return the export whose header these lower-cased, trimmed labels are, or None.

    Our own format has an `id` column too; Salesforce's `Id` is told apart by the columns
    beside it, which a file of ours never has.
    """
    last_name = bool(labels & {"last name", "lastname"})
    if last_name and ("contact id" in labels
                      or ("id" in labels and bool(labels & {"account name", "title"}))):
        return SALESFORCE
    if "id" in labels:
        return None
    # Exports from before 2020 have no URL column: recognised all the same, matched by email.
    if {"first name", "last name", "connected on"} <= labels:
        return LINKEDIN
    if "record id" in labels and bool(labels & {"first name", "last name", "email"}):
        return HUBSPOT
    return None

