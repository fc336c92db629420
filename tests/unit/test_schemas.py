"""Request validation (DESIGN §2): one case per rule and boundary of the PUT / POST bodies."""

from __future__ import annotations

from typing import Any

import pytest

from contactsync.errors import ValidationFailed
from contactsync.schemas import (
    MAX_CUSTOM_FIELDS_BYTES,
    ContactCreate,
    ContactFields,
    ContactUpdate,
    custom_fields_bytes,
    parse_body,
)

CLEARABLE = ("email", "phone", "company", "position", "linkedin_url")
SOURCES = ("linkedin", "csv", "crm", "api", "manual", "other")

# A valid address of exactly 254 characters: local part 59 + "@" + domain 194.
DOMAIN_194 = ".".join(["b" * 63, "c" * 63, "d" * 63]) + ".io"
EMAIL_254 = "a" * 59 + "@" + DOMAIN_194
EMAIL_255 = "a" * 60 + "@" + DOMAIN_194
URL_PREFIX = "https://www.linkedin.com/in/"
URL_2048 = URL_PREFIX + "x" * (2048 - len(URL_PREFIX))
URL_2049 = URL_2048 + "x"

assert len(EMAIL_254) == 254
assert len(EMAIL_255) == 255
assert len(URL_2048) == 2048


def rejected(model: type[ContactFields], body: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        parse_body(model, body)
    fields = info.value.fields
    assert info.value.details == {"fields": fields}
    for key, message in fields.items():
        assert isinstance(key, str)
        assert isinstance(message, str)
        assert message.strip(), f"empty message for {key}"
    return fields


def assert_rejects(model: type[ContactFields], body: Any, field: str) -> str:
    fields = rejected(model, body)
    assert set(fields) == {field}, fields
    return fields[field]


def cases(rows: list[Any]) -> list[Any]:
    """`(id, *values)` rows to `pytest.param`s, so each case is named by its rule.

    Rows that are already `pytest.param`s (to carry marks) pass through unchanged.
    """
    return [pytest.param(*row[1:], id=row[0]) if isinstance(row[0], str) else row
            for row in rows]


# --------------------------------------------------------------------------------------
# PUT: accepted bodies and the patch each one yields (only the fields sent, normalized).
# --------------------------------------------------------------------------------------

VALID_UPDATES = cases(
    [
        ("empty-body-noop", {}, {}),
        ("name-1", {"name": "A"}, {"name": "A"}),
        ("name-200", {"name": "n" * 200}, {"name": "n" * 200}),
        ("name-trimmed", {"name": "  Ada Lovelace \t"}, {"name": "Ada Lovelace"}),
        ("name-200-after-trim", {"name": "  " + "n" * 200 + "\n"}, {"name": "n" * 200}),
        ("company-200", {"company": "c" * 200}, {"company": "c" * 200}),
        ("company-trimmed", {"company": " Acme "}, {"company": "Acme"}),
        ("company-200-after-trim", {"company": " " + "c" * 200 + " "}, {"company": "c" * 200}),
        ("position-200", {"position": "p" * 200}, {"position": "p" * 200}),
        ("position-trimmed", {"position": "\tCTO "}, {"position": "CTO"}),
        ("email-valid", {"email": "ada@acme.io"}, {"email": "ada@acme.io"}),
        ("email-trimmed", {"email": "  ada@acme.io "}, {"email": "ada@acme.io"}),
        ("email-plus-and-subdomain", {"email": "a.b+c@mail.acme.io"},
         {"email": "a.b+c@mail.acme.io"}),
        ("email-254", {"email": EMAIL_254}, {"email": EMAIL_254}),
        ("linkedin-https", {"linkedin_url": "https://www.linkedin.com/in/ada"},
         {"linkedin_url": "https://www.linkedin.com/in/ada"}),
        ("linkedin-http", {"linkedin_url": "http://linkedin.com/in/ada"},
         {"linkedin_url": "http://linkedin.com/in/ada"}),
        ("linkedin-trimmed", {"linkedin_url": " https://linkedin.com/in/ada "},
         {"linkedin_url": "https://linkedin.com/in/ada"}),
        ("linkedin-2048", {"linkedin_url": URL_2048}, {"linkedin_url": URL_2048}),
        ("phone-32", {"phone": "1" * 32}, {"phone": "1" * 32}),
        ("phone-32-after-trim", {"phone": " " + "1" * 32 + " "}, {"phone": "1" * 32}),
        ("phone-all-allowed-chars", {"phone": "+1 (555) 010-99.99"},
         {"phone": "+1 (555) 010-99.99"}),
        ("phone-exactly-5-digits", {"phone": "+(1) 2-3.45"}, {"phone": "+(1) 2-3.45"}),
        ("tags-empty-clears", {"tags": []}, {"tags": []}),
        ("tags-trimmed", {"tags": ["  vip ", "\tlead"]}, {"tags": ["vip", "lead"]}),
        ("tags-duplicates-first-kept-order-kept",
         {"tags": ["b", "a", "b", "c", "a"]}, {"tags": ["b", "a", "c"]}),
        ("tags-duplicates-after-trim", {"tags": [" b", "a", "b "]}, {"tags": ["b", "a"]}),
        ("tags-tag-1-char", {"tags": ["x"]}, {"tags": ["x"]}),
        ("tags-tag-64-chars", {"tags": ["t" * 64]}, {"tags": ["t" * 64]}),
        ("tags-100", {"tags": [f"t{i}" for i in range(100)]},
         {"tags": [f"t{i}" for i in range(100)]}),
        ("custom-empty-object", {"custom_fields": {}}, {"custom_fields": {}}),
        ("custom-scalar-values",
         {"custom_fields": {"s": "pro", "i": 3, "f": 2.5, "t": True, "b": False, "n": None}},
         {"custom_fields": {"s": "pro", "i": 3, "f": 2.5, "t": True, "b": False, "n": None}}),
        ("custom-key-1-char", {"custom_fields": {"k": 1}}, {"custom_fields": {"k": 1}}),
        ("custom-key-64-chars", {"custom_fields": {"k" * 64: 1}},
         {"custom_fields": {"k" * 64: 1}}),
        ("custom-100-keys", {"custom_fields": {f"k{i}": i for i in range(100)}},
         {"custom_fields": {f"k{i}": i for i in range(100)}}),
        ("every-field",
         {
             "name": "Ada", "email": "ada@acme.io", "phone": "+44 20 7946 0000",
             "company": "Acme", "position": "CTO",
             "linkedin_url": "https://linkedin.com/in/ada",
             "tags": ["vip"], "custom_fields": {"plan": "pro"},
         },
         {
             "name": "Ada", "email": "ada@acme.io", "phone": "+44 20 7946 0000",
             "company": "Acme", "position": "CTO",
             "linkedin_url": "https://linkedin.com/in/ada",
             "tags": ["vip"], "custom_fields": {"plan": "pro"},
         }),
    ]
)


@pytest.mark.parametrize(("body", "patch"), VALID_UPDATES)
def test_put_accepts(body: dict[str, Any], patch: dict[str, Any]) -> None:
    model = parse_body(ContactUpdate, body)
    assert isinstance(model, ContactUpdate)
    assert model.patch() == patch


@pytest.mark.parametrize("field", CLEARABLE)
def test_put_null_clears_each_clearable_field(field: str) -> None:
    assert parse_body(ContactUpdate, {field: None}).patch() == {field: None}


def test_put_null_clears_all_clearable_fields_at_once() -> None:
    body = dict.fromkeys(CLEARABLE)
    assert parse_body(ContactUpdate, body).patch() == body


def test_put_patch_holds_only_fields_sent() -> None:
    model = parse_body(ContactUpdate, {"position": "CTO", "email": None})
    assert model.patch() == {"position": "CTO", "email": None}
    assert model.model_fields_set == {"position", "email"}
    for absent in ("name", "phone", "company", "linkedin_url", "tags", "custom_fields"):
        assert absent not in model.patch()


def test_put_empty_body_is_an_empty_patch() -> None:
    model = parse_body(ContactUpdate, {})
    assert model.patch() == {}
    assert model.model_fields_set == set()


def test_put_custom_value_json_types_are_kept() -> None:
    patch = parse_body(ContactUpdate, {"custom_fields": {"i": 1, "f": 1.0, "b": True}}).patch()
    assert [type(v) for v in patch["custom_fields"].values()] == [int, float, bool]


def test_put_custom_null_value_is_kept_in_the_patch_to_remove_the_key() -> None:
    patch = parse_body(ContactUpdate, {"custom_fields": {"plan": None, "seats": 2}}).patch()
    assert patch == {"custom_fields": {"plan": None, "seats": 2}}


# --------------------------------------------------------------------------------------
# PUT: rejected bodies, each naming exactly the bad field.
# --------------------------------------------------------------------------------------

INVALID_UPDATES = cases(
    [
        # name
        ("name-201", {"name": "n" * 201}, "name"),
        ("name-201-after-trim", {"name": " " + "n" * 201 + " "}, "name"),
        ("name-empty", {"name": ""}, "name"),
        ("name-blank", {"name": "   "}, "name"),
        ("name-null", {"name": None}, "name"),
        # company / position
        ("company-201", {"company": "c" * 201}, "company"),
        ("company-201-after-trim", {"company": "  " + "c" * 201}, "company"),
        ("position-201", {"position": "p" * 201}, "position"),
        # email
        ("email-no-at", {"email": "ada.acme.io"}, "email"),
        ("email-no-domain", {"email": "ada@"}, "email"),
        ("email-no-local", {"email": "@acme.io"}, "email"),
        ("email-space", {"email": "ada lovelace@acme.io"}, "email"),
        ("email-two-ats", {"email": "a@b@acme.io"}, "email"),
        ("email-no-tld-dot", {"email": "ada@acme"}, "email"),
        ("email-empty", {"email": ""}, "email"),
        ("email-255", {"email": EMAIL_255}, "email"),
        # linkedin_url
        ("linkedin-ftp", {"linkedin_url": "ftp://linkedin.com/in/ada"}, "linkedin_url"),
        ("linkedin-javascript", {"linkedin_url": "javascript:alert(1)"}, "linkedin_url"),
        ("linkedin-no-scheme", {"linkedin_url": "linkedin.com/in/ada"}, "linkedin_url"),
        ("linkedin-scheme-relative", {"linkedin_url": "//linkedin.com/in/ada"},
         "linkedin_url"),
        ("linkedin-no-host", {"linkedin_url": "https://"}, "linkedin_url"),
        ("linkedin-no-host-path", {"linkedin_url": "https:///in/ada"}, "linkedin_url"),
        pytest.param(
            {"linkedin_url": "https://:443/in/ada"}, "linkedin_url",
            id="linkedin-no-host-port-only",
        ),
        pytest.param(
            {"linkedin_url": "https://user@/in/ada"}, "linkedin_url",
            id="linkedin-no-host-userinfo-only",
        ),
        ("linkedin-space", {"linkedin_url": "https://linkedin.com/in/ada lovelace"},
         "linkedin_url"),
        ("linkedin-2049", {"linkedin_url": URL_2049}, "linkedin_url"),
        ("linkedin-empty", {"linkedin_url": ""}, "linkedin_url"),
        # phone
        ("phone-33", {"phone": "1" * 33}, "phone"),
        ("phone-letters", {"phone": "+1 555 CALL NOW"}, "phone"),
        ("phone-extension-word", {"phone": "+1 555 0100 ext 12"}, "phone"),
        ("phone-slash", {"phone": "555/010099"}, "phone"),
        ("phone-hash", {"phone": "#12345"}, "phone"),
        ("phone-4-digits", {"phone": "+(1) 2-3.4"}, "phone"),
        ("phone-no-digits", {"phone": "+-()."}, "phone"),
        ("phone-empty", {"phone": ""}, "phone"),
        ("phone-inner-newline", {"phone": "12345\n67890"}, "phone"),
        # tags
        ("tags-null", {"tags": None}, "tags"),
        ("tags-string", {"tags": "vip"}, "tags"),
        ("tags-object", {"tags": {"vip": True}}, "tags"),
        ("tags-number", {"tags": 1}, "tags"),
        ("tags-item-number", {"tags": ["vip", 1]}, "tags"),
        ("tags-item-null", {"tags": [None]}, "tags"),
        ("tags-item-bool", {"tags": [True]}, "tags"),
        ("tags-item-list", {"tags": [["vip"]]}, "tags"),
        ("tags-item-empty", {"tags": [""]}, "tags"),
        ("tags-item-blank", {"tags": ["   "]}, "tags"),
        ("tags-item-65", {"tags": ["t" * 65]}, "tags"),
        ("tags-101", {"tags": [f"t{i}" for i in range(101)]}, "tags"),
        # custom_fields
        ("custom-null", {"custom_fields": None}, "custom_fields"),
        ("custom-list", {"custom_fields": [["plan", "pro"]]}, "custom_fields"),
        ("custom-string", {"custom_fields": "plan=pro"}, "custom_fields"),
        ("custom-number", {"custom_fields": 1}, "custom_fields"),
        ("custom-bool", {"custom_fields": True}, "custom_fields"),
        ("custom-value-list", {"custom_fields": {"plan": ["pro"]}}, "custom_fields"),
        ("custom-value-empty-list", {"custom_fields": {"plan": []}}, "custom_fields"),
        ("custom-value-object", {"custom_fields": {"plan": {"tier": "pro"}}}, "custom_fields"),
        ("custom-value-empty-object", {"custom_fields": {"plan": {}}}, "custom_fields"),
        ("custom-key-empty", {"custom_fields": {"": 1}}, "custom_fields"),
        ("custom-key-65", {"custom_fields": {"k" * 65: 1}}, "custom_fields"),
        ("custom-101-keys", {"custom_fields": {f"k{i}": i for i in range(101)}},
         "custom_fields"),
        # unknown fields
        ("unknown-source-in-put", {"source": "api"}, "source"),
        ("unknown-field", {"nickname": "Ada"}, "nickname"),
        ("unknown-id", {"id": "cnt_abcdefabcdef"}, "id"),
        ("unknown-created-at", {"created_at": "2024-01-01T00:00:00Z"}, "created_at"),
        ("unknown-case-differs", {"Name": "Ada"}, "Name"),
        ("unknown-dotted-custom", {"custom_fields.plan": "pro"}, "custom_fields.plan"),
        ("unknown-beside-valid", {"name": "Ada", "title": "CTO"}, "title"),
        # wrong types for every field
        ("type-name-int", {"name": 1}, "name"),
        ("type-name-bool", {"name": True}, "name"),
        ("type-name-list", {"name": ["Ada"]}, "name"),
        ("type-name-object", {"name": {"first": "Ada"}}, "name"),
        ("type-email-int", {"email": 1}, "email"),
        ("type-email-list", {"email": ["ada@acme.io"]}, "email"),
        ("type-phone-int", {"phone": 5550100}, "phone"),
        ("type-phone-float", {"phone": 5550100.0}, "phone"),
        ("type-company-float", {"company": 1.5}, "company"),
        ("type-company-bool", {"company": False}, "company"),
        ("type-position-object", {"position": {}}, "position"),
        ("type-position-int", {"position": 3}, "position"),
        ("type-linkedin-list", {"linkedin_url": []}, "linkedin_url"),
        ("type-linkedin-int", {"linkedin_url": 7}, "linkedin_url"),
        ("type-tags-bool", {"tags": False}, "tags"),
        ("type-custom-list-of-objects", {"custom_fields": [{"plan": "pro"}]}, "custom_fields"),
        # the body as a whole
        ("body-list", [], "_body"),
        ("body-list-of-object", [{"name": "Ada"}], "_body"),
        ("body-string", "name=Ada", "_body"),
        ("body-int", 1, "_body"),
        ("body-float", 1.5, "_body"),
        ("body-bool", True, "_body"),
        ("body-null", None, "_body"),
    ]
)


@pytest.mark.parametrize(("body", "field"), INVALID_UPDATES)
def test_put_rejects(body: Any, field: str) -> None:
    assert_rejects(ContactUpdate, body, field)


@pytest.mark.parametrize("model", [ContactUpdate, ContactCreate])
def test_null_name_says_it_cannot_be_cleared(model: type[ContactFields]) -> None:
    message = assert_rejects(model, {"name": None}, "name")
    assert "null" in message.lower()


def test_every_bad_field_is_named_at_once() -> None:
    fields = rejected(
        ContactUpdate,
        {
            "name": None,
            "email": 5,
            "phone": "12",
            "tags": None,
            "custom_fields": {"a": [1]},
            "source": "api",
            "nickname": "x",
            "company": "Acme",  # valid: not named
        },
    )
    assert set(fields) == {"name", "email", "phone", "tags", "custom_fields", "source",
                           "nickname"}


def test_unknown_field_message_says_unknown() -> None:
    assert "unknown" in assert_rejects(ContactUpdate, {"source": "api"}, "source").lower()


def test_custom_keys_that_collide_after_trimming_are_not_silently_merged() -> None:
    body = {"custom_fields": {"plan": "free", " plan": "pro"}}
    try:
        patch = parse_body(ContactUpdate, body).patch()
    except ValidationFailed as exc:
        assert set(exc.fields) == {"custom_fields"}
    else:
        assert len(patch["custom_fields"]) == 2


# --------------------------------------------------------------------------------------
# POST (create): name required, source allowed with a default.
# --------------------------------------------------------------------------------------


def test_create_minimal_body_defaults_source_to_other() -> None:
    model = parse_body(ContactCreate, {"name": "Ada"})
    assert isinstance(model, ContactCreate)
    assert model.name == "Ada"
    assert model.source == "other"
    assert model.patch() == {"name": "Ada"}


@pytest.mark.parametrize("source", SOURCES)
def test_create_accepts_each_source(source: str) -> None:
    model = parse_body(ContactCreate, {"name": "Ada", "source": source})
    assert model.source == source
    assert model.patch() == {"name": "Ada", "source": source}


def test_create_accepts_every_field() -> None:
    body = {
        "name": " Ada ", "email": "ada@acme.io", "phone": "+1 555 0100", "company": "Acme",
        "position": "CTO", "linkedin_url": "https://linkedin.com/in/ada", "tags": ["vip", "vip"],
        "custom_fields": {"plan": "pro"}, "source": "linkedin",
    }
    model = parse_body(ContactCreate, body)
    assert model.patch() == {**body, "name": "Ada", "tags": ["vip"]}


def test_create_accepts_nulls_for_clearable_fields() -> None:
    model = parse_body(ContactCreate, {"name": "Ada", **dict.fromkeys(CLEARABLE)})
    assert model.patch() == {"name": "Ada", **dict.fromkeys(CLEARABLE)}


INVALID_CREATES = cases(
    [
        ("name-missing-empty-body", {}, "name"),
        ("name-missing", {"email": "ada@acme.io"}, "name"),
        ("name-null", {"name": None}, "name"),
        ("name-empty", {"name": ""}, "name"),
        ("name-blank", {"name": "  "}, "name"),
        ("name-201", {"name": "n" * 201}, "name"),
        ("name-int", {"name": 1}, "name"),
        ("source-unknown", {"name": "Ada", "source": "facebook"}, "source"),
        ("source-wrong-case", {"name": "Ada", "source": "LinkedIn"}, "source"),
        ("source-empty", {"name": "Ada", "source": ""}, "source"),
        ("source-null", {"name": "Ada", "source": None}, "source"),
        ("source-int", {"name": "Ada", "source": 1}, "source"),
        ("source-list", {"name": "Ada", "source": ["api"]}, "source"),
        ("unknown-field", {"name": "Ada", "nickname": "A"}, "nickname"),
        ("unknown-id", {"name": "Ada", "id": "cnt_abcdefabcdef"}, "id"),
        ("email-invalid", {"name": "Ada", "email": "nope"}, "email"),
        ("phone-invalid", {"name": "Ada", "phone": "12"}, "phone"),
        ("linkedin-invalid", {"name": "Ada", "linkedin_url": "ftp://x.io"}, "linkedin_url"),
        ("company-201", {"name": "Ada", "company": "c" * 201}, "company"),
        ("tags-null", {"name": "Ada", "tags": None}, "tags"),
        ("tags-101", {"name": "Ada", "tags": [f"t{i}" for i in range(101)]}, "tags"),
        ("custom-null", {"name": "Ada", "custom_fields": None}, "custom_fields"),
        ("custom-nested", {"name": "Ada", "custom_fields": {"a": {"b": 1}}}, "custom_fields"),
        ("body-list", [{"name": "Ada"}], "_body"),
        ("body-null", None, "_body"),
        ("body-string", "Ada", "_body"),
    ]
)


@pytest.mark.parametrize(("body", "field"), INVALID_CREATES)
def test_create_rejects(body: Any, field: str) -> None:
    assert_rejects(ContactCreate, body, field)


# --------------------------------------------------------------------------------------
# Custom field sizes (issue 11, item 2): a value at most 1,000 characters, the object at
# most 16 KiB as compact JSON.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [ContactUpdate, ContactCreate])
def test_a_custom_value_of_1000_characters_is_accepted_1001_refused(
    model: type[ContactFields]
) -> None:
    base = {"name": "Ada"} if model is ContactCreate else {}
    parse_body(model, {**base, "custom_fields": {"note": "é" * 1000}})
    message = assert_rejects(model, {**base, "custom_fields": {"note": "n" * 1001}},
                             "custom_fields")
    assert "'note'" in message and "1000 characters" in message


@pytest.mark.parametrize("model", [ContactUpdate, ContactCreate])
def test_custom_fields_over_16_kib_of_json_are_refused(model: type[ContactFields]) -> None:
    base = {"name": "Ada"} if model is ContactCreate else {}
    # 17 values of 1,000 characters, each valid alone: 17,154 bytes as compact JSON.
    big = {f"k{i:02}": "v" * 1000 for i in range(17)}
    assert custom_fields_bytes(big) > MAX_CUSTOM_FIELDS_BYTES
    message = assert_rejects(model, {**base, "custom_fields": big}, "custom_fields")
    assert "16384 bytes" in message
    # Non-ASCII counts in UTF-8 bytes: 9 values of 1,000 "é" are 18 KB, 9,000 characters.
    accented = {f"k{i}": "é" * 1000 for i in range(9)}
    assert_rejects(model, {**base, "custom_fields": accented}, "custom_fields")
    parse_body(model, {**base, "custom_fields": dict(list(big.items())[:16])})


# --------------------------------------------------------------------------------------
# Messages (issue 11, item 7): plain words about the client's input, never pydantic's.
# --------------------------------------------------------------------------------------

INTERNALS = ("function-after", "constrained", "[", "]", "pydantic", "Value error",
             "Input should", "nullable", "union", "dict[", "list[", "str,", "Field required")
MORE_BAD_BODIES = cases(
    [
        ("tags-item-object", {"tags": [{"a": 1}]}, "tags", "item 0 must be a string"),
        ("tags-item-too-long", {"tags": ["ok", "t" * 65]}, "tags", "item 1"),
        ("custom-key-empty", {"custom_fields": {"": 1}}, "custom_fields", "key ''"),
        ("custom-key-65", {"custom_fields": {"k" * 65: 1}}, "custom_fields", "64 characters"),
        ("custom-101", {"custom_fields": {f"k{i}": 1 for i in range(101)}}, "custom_fields",
         "at most 100 keys"),
        ("custom-key-named-str", {"custom_fields": {"str": [1]}}, "custom_fields",
         "the value of 'str' must be"),
        ("custom-value-nested", {"custom_fields": {"plan": {"x": 1}}}, "custom_fields",
         "the value of 'plan' must be a string, number, boolean or null"),
        ("custom-number-too-big", {"custom_fields": {"n": 2**60}}, "custom_fields",
         "the value of 'n' must be within"),
        ("custom-float-too-big", {"custom_fields": {"n": -1e300}}, "custom_fields", "within"),
        ("custom-array", {"custom_fields": [1]}, "custom_fields", "must be an object"),
        ("tags-object", {"tags": {"a": 1}}, "tags", "must be an array"),
        ("name-number", {"name": 1}, "name", "must be a string"),
        ("name-empty", {"name": " "}, "name", "may not be empty"),
        ("company-long", {"company": "c" * 201}, "company", "at most 200 characters"),
        ("email-number", {"email": 5}, "email", "must be a string"),
        ("unknown", {"nick": "x"}, "nick", "Unknown field."),
    ]
)


@pytest.mark.parametrize(("body", "field", "says"), MORE_BAD_BODIES)
def test_a_bad_body_is_explained_in_plain_words(body: Any, field: str, says: str) -> None:
    message = assert_rejects(ContactUpdate, body, field)
    assert says in message


def test_no_message_shows_the_validation_library() -> None:
    bodies = [(ContactUpdate, p.values[0]) for p in (*INVALID_UPDATES, *MORE_BAD_BODIES)]
    bodies += [(ContactCreate, p.values[0]) for p in INVALID_CREATES]
    for model, body in bodies:
        for field, message in rejected(model, body).items():
            assert not any(marker in message for marker in INTERNALS), (body, field, message)
            assert len(message) < 200, message


def test_source_names_its_values() -> None:
    message = assert_rejects(ContactCreate, {"name": "Ada", "source": "fax"}, "source")
    assert all(s in message for s in SOURCES)


def test_a_missing_name_says_it_is_required() -> None:
    assert assert_rejects(ContactCreate, {}, "name") == "Required."


# --------------------------------------------------------------------------------------
# Unicode normalisation (issue 11, item 8): every string NFC after trimming.
# --------------------------------------------------------------------------------------

COMPOSED = "caf\u00e9"
DECOMPOSED = "cafe\u0301"


def test_tags_that_differ_only_in_unicode_form_are_one_tag() -> None:
    patch = parse_body(ContactUpdate, {"tags": [COMPOSED, f" {DECOMPOSED} ", "x"]}).patch()
    assert patch["tags"] == [COMPOSED, "x"]


def test_every_string_field_is_stored_composed() -> None:
    body = {
        "name": f" Ren{DECOMPOSED} ", "company": DECOMPOSED, "position": DECOMPOSED,
        "email": f"{DECOMPOSED}@example.com", "phone": "+1 555 0100",
        "linkedin_url": f"https://www.linkedin.com/in/{DECOMPOSED}",
        "custom_fields": {DECOMPOSED: DECOMPOSED, "n": 1},
    }
    fields = parse_body(ContactCreate, body).model_dump()
    assert fields["name"] == f"Ren{COMPOSED}"
    assert fields["company"] == fields["position"] == COMPOSED
    assert fields["email"] == f"{COMPOSED}@example.com"
    assert fields["linkedin_url"] == f"https://www.linkedin.com/in/{COMPOSED}"
    assert fields["custom_fields"] == {COMPOSED: COMPOSED, "n": 1}


def test_a_length_counts_composed_characters() -> None:
    # 64 decomposed "é" are 128 code points, 64 characters once composed.
    patch = parse_body(ContactUpdate, {"tags": ["e\u0301" * 64]}).patch()
    assert patch["tags"] == ["\u00e9" * 64]


def test_custom_keys_that_differ_only_in_unicode_form_are_refused() -> None:
    body = {"custom_fields": {COMPOSED: 1, DECOMPOSED: 2}}
    message = assert_rejects(ContactUpdate, body, "custom_fields")
    assert "twice" in message
