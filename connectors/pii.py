"""Normalizing and hashing people's identifiers for the ad platforms, per each one's published
rules, so that raw values never leave the worker.

Every function takes a value as the warehouse gives it and returns what goes on the wire: the
SHA-256 hex of the normalized value for the identifiers a platform wants hashed, the normalized
value itself for the few it wants in clear (Meta's EXTERN_ID and MADID, Google's country and
postal codes, mobile ids and third-party user ids). A value already hashed (64 hex characters)
is sent as it is, so a warehouse may hash its own columns, and normalizing twice changes
nothing. A value that cannot be normalized raises PiiError, whose message never holds the value.

Meta: "Hashing and normalizing data" in the Marketing API's customer file custom audiences
guide. Google: the Customer Match guide of the Google Ads API and OfflineUserAddressInfo.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from connectors.casting import CastError
from connectors.destinations.base import DestinationField

HASHED = re.compile(r"[0-9a-fA-F]{64}")
_NOT_DIGIT = re.compile(r"\D")
_NOT_LETTER = re.compile(r"[\W\d_]", re.UNICODE)  # keeps letters of every script
_PUNCTUATION = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")
_US_ZIP = re.compile(r"(\d{5})(?:-?\d{4})?")
# A full UK postcode: outward code (area + district), then sector digit and unit letters.
_UK_POSTCODE = re.compile(r"([a-z]{1,2}\d[a-z\d]?)(\d)[a-z]{2}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_GENDERS = {"m": "m", "male": "m", "f": "f", "female": "f"}


class PiiError(ValueError):
    """A value that cannot be normalized; the message names the rule, never the value."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_hashed(value: Any) -> bool:
    return isinstance(value, str) and HASHED.fullmatch(value.strip()) is not None


def _text(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return unicodedata.normalize("NFC", str(value)).strip()


def _hashed(normalize: Callable[[str], str]) -> Callable[[Any], str]:
    """A hashing rule: a hash passes (lower-cased hex), anything else is normalized, checked
    non-empty and hashed."""

    def rule(value: Any) -> str:
        text = _text(value)
        if HASHED.fullmatch(text):
            return text.lower()
        normalized = normalize(text)
        if not normalized:
            raise PiiError("nothing is left once normalized")
        return sha256_hex(normalized)

    rule.__doc__ = normalize.__doc__
    return rule


def _clear(normalize: Callable[[str], str]) -> Callable[[Any], str]:
    """A rule for an identifier the platform takes in clear."""

    def rule(value: Any) -> str:
        normalized = normalize(_text(value))
        if not normalized:
            raise PiiError("nothing is left once normalized")
        return normalized

    rule.__doc__ = normalize.__doc__
    return rule


# -- normalizations --------------------------------------------------------------------------


def email(text: str) -> str:
    """Trimmed and lower-cased. Gmail's dots are kept: Google states that removing them is not
    required for Customer Match, and Meta asks for nothing more."""
    normalized = text.strip().lower()
    if normalized and "@" not in normalized:
        raise PiiError("an email address needs an @")
    return normalized


def meta_phone(text: str) -> str:
    """Digits only, with the country code, without leading zeros (a `00` international
    prefix goes with them)."""
    return _NOT_DIGIT.sub("", text).lstrip("0")


def e164_phone(text: str) -> str:
    """E.164: `+`, country code and number, 15 digits at most. The number must carry its
    country code (a leading `+` or `00`); retl does not guess countries."""
    compact = re.sub(r"[\s().\-/]", "", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not compact.startswith("+"):
        raise PiiError("a phone number needs its country code (+ or 00) for E.164")
    digits = _NOT_DIGIT.sub("", compact)
    if len(digits) != len(compact) - 1 or not 8 <= len(digits) <= 15 or digits[0] == "0":
        raise PiiError("not a phone number in E.164 form (+, then 8 to 15 digits)")
    return "+" + digits


def meta_name(text: str) -> str:
    """Lower-case letters only (any script): punctuation, digits and spaces removed."""
    return _NOT_LETTER.sub("", text.lower())


def meta_initial(text: str) -> str:
    """The first letter, lower-cased."""
    return meta_name(text)[:1]


def meta_state(text: str) -> str:
    """US states as their 2-letter code, others spelt out: lower case, letters only."""
    return meta_name(text)


def meta_zip(text: str) -> str:
    """Lower case without spaces; a US ZIP+4 keeps its first 5 digits, a full UK postcode
    keeps area, district and sector (its last two letters go)."""
    compact = _SPACES.sub("", text.lower())
    us = _US_ZIP.fullmatch(compact)
    if us:
        return us.group(1)
    uk = _UK_POSTCODE.fullmatch(compact)
    if uk:
        return uk.group(1) + uk.group(2)
    return compact


def meta_country(text: str) -> str:
    """ISO 3166-1 alpha-2, lower case."""
    if not _COUNTRY.fullmatch(text):
        raise PiiError("a country must be its 2-letter ISO 3166-1 code")
    return text.lower()


def meta_gender(text: str) -> str:
    """`m` or `f`."""
    gender = _GENDERS.get(text.lower())
    if gender is None:
        raise PiiError("a gender must be m, f, male or female")
    return gender


def _date_part(text: str, part: str) -> str:
    """One part of a birth date given whole (`1990-05-01`) or alone (`1990`, `5`)."""
    if len(text) >= 10 and text[4] == "-":
        try:
            born = dt.date.fromisoformat(text[:10])
        except ValueError:
            raise PiiError("not a date in YYYY-MM-DD form") from None
        return {"year": f"{born.year:04d}", "month": f"{born.month:02d}",
                "day": f"{born.day:02d}"}[part]
    if not text.isdigit():
        raise PiiError(f"a birth {part} must be digits")
    number = int(text)
    bounds = {"year": (1900, dt.date.today().year), "month": (1, 12), "day": (1, 31)}[part]
    if not bounds[0] <= number <= bounds[1]:
        raise PiiError(f"a birth {part} must be between {bounds[0]} and {bounds[1]}")
    return f"{number:04d}" if part == "year" else f"{number:02d}"


def birth_year(text: str) -> str:
    """YYYY."""
    return _date_part(text, "year")


def birth_month(text: str) -> str:
    """MM, 01 to 12."""
    return _date_part(text, "month")


def birth_day(text: str) -> str:
    """DD, 01 to 31."""
    return _date_part(text, "day")


def mobile_id(text: str) -> str:
    """An advertising id (IDFA, AAID): lower case, hyphens kept."""
    return text.lower()


def as_given(text: str) -> str:
    """Trimmed, otherwise as given."""
    return text


def google_first_name(text: str) -> str:
    """Lower case, spaces trimmed and single between words."""
    return _SPACES.sub(" ", text.lower()).strip()


def google_last_name(text: str) -> str:
    """Lower case without punctuation, spaces trimmed and single between words."""
    return _SPACES.sub(" ", _PUNCTUATION.sub("", text.lower())).strip()


def google_country(text: str) -> str:
    """ISO 3166-1 alpha-2, upper case."""
    if not _COUNTRY.fullmatch(text):
        raise PiiError("a country code must be its 2-letter ISO 3166-1 code")
    return text.upper()


def postal_code(text: str) -> str:
    """Trimmed, spaces single."""
    return _SPACES.sub(" ", text)


# -- the rules of each platform ---------------------------------------------------------------

# Meta's customer file schema keys: what each one is, and how its values go out.
META_RULES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "EMAIL": ("Email", _hashed(email)),
    "PHONE": ("Phone number, with country code", _hashed(meta_phone)),
    "FN": ("First name", _hashed(meta_name)),
    "LN": ("Last name", _hashed(meta_name)),
    "FI": ("First initial", _hashed(meta_initial)),
    "CT": ("City", _hashed(meta_name)),
    "ST": ("State or province", _hashed(meta_state)),
    "ZIP": ("Postal code", _hashed(meta_zip)),
    "COUNTRY": ("Country (ISO 3166-1 alpha-2)", _hashed(meta_country)),
    "DOBY": ("Birth year", _hashed(birth_year)),
    "DOBM": ("Birth month", _hashed(birth_month)),
    "DOBD": ("Birth day", _hashed(birth_day)),
    "GEN": ("Gender (m or f)", _hashed(meta_gender)),
    "MADID": ("Mobile advertiser id (sent in clear)", _clear(mobile_id)),
    "EXTERN_ID": ("Your own id for the person (sent in clear)", _clear(as_given)),
}

# Google's UserIdentifier fields (address parts as `addressInfo.<field>`).
GOOGLE_RULES: dict[str, tuple[str, Callable[[Any], str]]] = {
    "hashedEmail": ("Email", _hashed(email)),
    "hashedPhoneNumber": ("Phone number, E.164 with country code", _hashed(e164_phone)),
    "addressInfo.hashedFirstName": ("First name", _hashed(google_first_name)),
    "addressInfo.hashedLastName": ("Last name", _hashed(google_last_name)),
    "addressInfo.countryCode": ("Country code (ISO 3166-1 alpha-2, sent in clear)",
                                _clear(google_country)),
    "addressInfo.postalCode": ("Postal code (sent in clear)", _clear(postal_code)),
    "mobileId": ("Mobile device id (IDFA or AAID, sent in clear)", _clear(as_given)),
    "thirdPartyUserId": ("Your own user id (sent in clear)", _clear(as_given)),
}


def normalize(rules: dict[str, tuple[str, Callable[[Any], str]]], field: str, value: Any) -> Any:
    """`value` of `field` as it goes on the wire; None stays None. Raises PiiError."""
    if value is None:
        return None
    rule = rules.get(field)
    if rule is None:
        raise PiiError(f"{field} is not an identifier this platform accepts")
    try:
        return rule[1](value)
    except PiiError as exc:
        raise PiiError(f"{field}: {exc}") from None


def identifier_fields(
    rules: dict[str, tuple[str, Callable[[Any], str]]], identifiers: frozenset[str] | set[str],
) -> list[DestinationField]:
    """An audience destination's fields: the same for every audience or list, so they are
    answered without a call and the planner always hashes every value while it maps a row."""
    return [
        DestinationField(name, label, "string", external_id=name in identifiers)
        for name, (label, _) in rules.items()
    ]


def format_identifier(
    rules: dict[str, tuple[str, Callable[[Any], str]]], field: str, value: Any,
) -> Any:
    """`normalize` for a destination's `format_value`: a value that cannot be normalized fails
    its record as a mapping error."""
    try:
        return normalize(rules, field, value)
    except PiiError as exc:
        raise CastError(str(exc)) from None
