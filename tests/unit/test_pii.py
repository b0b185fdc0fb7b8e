"""PII normalization and hashing per each ad platform's rules, against vectors computed from
the platforms' documented examples (SHA-256 hex of the normalized form the docs show)."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors import pii
from connectors.pii import GOOGLE_RULES, META_RULES, PiiError, normalize

# sha256 of the normalized forms, computed independently of the module under test.
CUSTOMER_EMAIL = "e233d4a29013e9d87150c6237c6777bedf379ebf1acdc5d6126fec7e8bb74fb5"
JOHN = "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
DOE = "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
E164_US = "d360a79e746532a6a1e7b8164440b04cdd8797e23126f7a4de7a4b67fdcdba98"  # +12125650000
E164_UK = "f3d7e96c73fb0de1b66acfce541d7af758fbd4f3fa3af0ea4e10110000d3625e"  # +442070313000
META_PHONE = "bb2fa2e6d2cea4746530c99686d0c7886ab2019875dca2d7e9e171c0e6ada00d"  # 16169547888
MARYJANE = "f08f448a5e7a9dc3619bb7c129f6a7d5fc6af002cea17ad71dfdc1c68f4d4e0e"
OBRIEN = "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
MARY_ANN = "343b97011010c3549fe7fcd6c226ed9431ea37b0b77ed78f6300a0098925faf1"
GENDER_M = "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"
GENDER_F = "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"
YEAR_1990 = "a7be8e1fe282a37cd666e0632b17d933fa13f21addf4798fc0455bc166e2488c"
MONTH_05 = "c97550ce8213ef5cf6ed4ba48790c137df3ef6a5da20b48961001a634b6cead2"
DAY_01 = "938db8c9f82c8cb58d3f3ef4fd250036a48d26a712753d2fde5abd03a85cabf4"
COUNTRY_US = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
ZIP_94025 = "b9a9cf3cd3723a2e91b7c23ecf68456e872b6e5d86e5cab7f3d45a7302da32c7"
ZIP_SW1A1 = "949af780a19e6f6d4b99d7044743348dbbb7ab2245fe146863573b23d02c5890"
MONTREAL = "94a2d00996233e393e547a3ad49fa82efeeac1210a8fdf11dde35a23b7333ac0"
STATE_CA = "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126"
GMAIL_WITH_DOTS = "831f6494ad6be4fcb3a724c3d5fef22d3ceffa3c62ef3a7984e45a0ea177f982"


@pytest.mark.parametrize(("key", "raw", "expected"), [
    ("EMAIL", "  Customer@Example.COM ", CUSTOMER_EMAIL),
    ("PHONE", "+1 (616) 954-78 88", META_PHONE),
    ("PHONE", "001 616 954 7888", META_PHONE),  # the 00 prefix is a leading zero too
    ("FN", "Mary-Jane", MARYJANE),
    ("LN", "O'Brien", OBRIEN),
    ("FN", " JOHN ", JOHN),
    ("GEN", "Male", GENDER_M),
    ("GEN", "f", GENDER_F),
    ("DOBY", "1990", YEAR_1990),
    ("DOBY", dt.date(1990, 5, 1), YEAR_1990),
    ("DOBM", "5", MONTH_05),
    ("DOBM", "1990-05-01", MONTH_05),
    ("DOBD", 1, DAY_01),
    ("COUNTRY", "US", COUNTRY_US),
    ("ZIP", "94025-1234", ZIP_94025),
    ("ZIP", "SW1A 1AA", ZIP_SW1A1),
    ("CT", "Montréal", pii.sha256_hex("montréal")),
    ("CT", "Montreal ", MONTREAL),
    ("ST", "CA", STATE_CA),
    ("EMAIL", "Jane.Doe@gmail.com", GMAIL_WITH_DOTS),
])
def test_meta_identifiers_are_normalized_then_hashed(key: str, raw: object, expected: str) -> None:
    assert normalize(META_RULES, key, raw) == expected


def test_meta_sends_extern_id_and_madid_in_clear() -> None:
    assert normalize(META_RULES, "EXTERN_ID", " crm-42 ") == "crm-42"
    madid = "AECE52E7-03EE-455A-B3C4-E57283966239"
    assert normalize(META_RULES, "MADID", madid) == madid.lower()


@pytest.mark.parametrize(("field", "raw", "expected"), [
    ("hashedEmail", " Customer@Example.com", CUSTOMER_EMAIL),
    # Google: removing the dots of gmail.com addresses is not required; they are kept.
    ("hashedEmail", "Jane.Doe@gmail.com", GMAIL_WITH_DOTS),
    ("hashedPhoneNumber", "+1 212-565-0000", E164_US),
    ("hashedPhoneNumber", "0044 20 7031 3000", E164_UK),
    ("addressInfo.hashedFirstName", " John ", JOHN),
    ("addressInfo.hashedFirstName", "Mary   Ann", MARY_ANN),
    ("addressInfo.hashedLastName", "Doe", DOE),
    ("addressInfo.hashedLastName", "O'Brien", OBRIEN),
    ("addressInfo.countryCode", "us", "US"),
    ("addressInfo.postalCode", " 10011 ", "10011"),
    ("mobileId", "AECE52E7-03EE-455A-B3C4-E57283966239", "AECE52E7-03EE-455A-B3C4-E57283966239"),
    ("thirdPartyUserId", "crm-42", "crm-42"),
])
def test_google_identifiers_follow_customer_match_rules(
    field: str, raw: object, expected: str
) -> None:
    assert normalize(GOOGLE_RULES, field, raw) == expected


@pytest.mark.parametrize("rules", [META_RULES, GOOGLE_RULES])
def test_a_value_already_hashed_is_sent_as_it_is_and_hashing_twice_changes_nothing(
    rules: dict,
) -> None:
    field = "EMAIL" if rules is META_RULES else "hashedEmail"
    assert normalize(rules, field, CUSTOMER_EMAIL.upper()) == CUSTOMER_EMAIL
    once = normalize(rules, field, "someone@example.com")
    assert normalize(rules, field, once) == once
    assert normalize(rules, field, None) is None


@pytest.mark.parametrize(("rules", "field", "raw", "rule"), [
    (GOOGLE_RULES, "hashedPhoneNumber", "212 565 0000", "country code"),
    (GOOGLE_RULES, "hashedPhoneNumber", "+1 212 CALL NOW", "E.164"),
    (META_RULES, "GEN", "other", "m, f"),
    (META_RULES, "COUNTRY", "USA", "2-letter"),
    (META_RULES, "DOBM", "13", "between 1 and 12"),
    (META_RULES, "EMAIL", "jane.example.com", "@"),
    (GOOGLE_RULES, "addressInfo.countryCode", "United States", "2-letter"),
    (META_RULES, "FN", "...", "nothing is left"),
    (META_RULES, "NAME", "Jane", "not an identifier"),
])
def test_a_value_that_cannot_be_normalized_is_refused_without_echoing_it(
    rules: dict, field: str, raw: str, rule: str
) -> None:
    with pytest.raises(PiiError) as caught:
        normalize(rules, field, raw)
    assert rule in str(caught.value)
    assert raw not in str(caught.value)
