"""A fake Iterable API (an email-based project) for connector tests.

It speaks Iterable's wire format: `Api-Key` header, `IterableApiResponse` bodies
(`{"msg", "code", "params"}`) for errors, `users/bulkUpdate` and `events/trackBulk` answers with
`successCount`, `failCount` and `failedUpdates` lists, `users/getFields`, and the single-user
deletes. It validates as Iterable does: unknown key → 401 BadApiKey, body over 4 MB → 413,
malformed emails/userIds → named in `failedUpdates`, a value whose type conflicts with the
project's field schema → the whole request refused with 400 RequestFieldsTypesMismatched and
`params.validationErrors`. New fields are added to the schema (the project allows them)."""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import unquote

from tests.fakes.base import FakeServer, Request, Response

MAX_BODY_BYTES = 4 * 1024 * 1024
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DATE_FORMS = (
    re.compile(r"\d{4}-\d{2}-\d{2}"),
    re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"),
    re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}"),
    re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}([+-]\d{2}:\d{2}|Z)"),
)
# Fields every Iterable project has on its user profiles.
BASE_USER_FIELDS = {
    "email": "string",
    "userId": "string",
    "signupDate": "date",
    "profileUpdatedAt": "date",
}


def api_response(code: str, msg: str, params: Any = None) -> dict[str, Any]:
    return {"msg": msg, "code": code, "params": params}


def type_of(value: Any) -> str:
    """The Iterable field type a new field gets from its first value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "nested" if value and all(isinstance(v, dict) for v in value) else "array"
    if isinstance(value, str) and any(form.fullmatch(value) for form in DATE_FORMS):
        return "date"
    return "string"


def conforms(value: Any, field_type: str) -> bool:
    if value is None:
        return True
    if field_type == "string":
        return isinstance(value, str)
    if field_type == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if field_type == "boolean":
        return isinstance(value, bool)
    if field_type == "date":
        return isinstance(value, str) and any(form.fullmatch(value) for form in DATE_FORMS)
    if field_type == "object":
        return isinstance(value, dict)
    if field_type in ("nested", "array"):
        return isinstance(value, list)
    return True


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """dataFields as Iterable's dotted field names (objects are fields too)."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{prefix}{name}"
        flat[path] = value
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
    return flat


def bad_user_id(user_id: Any) -> bool:
    return (
        not isinstance(user_id, str)
        or not user_id
        or len(user_id) > 512
        or user_id != user_id.rstrip()
        or not user_id.isascii()
        or not user_id.isprintable()
    )


class FakeIterable(FakeServer):
    """`with FakeIterable(api_key="k") as iterable:`; point baseUrl at `iterable.url`.

    `users` holds profiles by lowercased email (`{"email", "userId", "dataFields"}`),
    `events` every tracked event by id, `user_fields` / `event_fields` the project schema.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        user_fields: dict[str, str] | None = None,
        disallowed_event_names: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.user_fields: dict[str, str] = {**BASE_USER_FIELDS, **(user_fields or {})}
        self.event_fields: dict[str, dict[str, str]] = {}  # per event name, as Iterable types them
        self.disallowed_event_names = set(disallowed_event_names or ())
        self.users: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self._users_by_id: dict[str, dict[str, Any]] = {}
        self._state = threading.Lock()
        self._next_event = 0

    # -- helpers for tests ---------------------------------------------------------------------

    def user(self, email: str) -> dict[str, Any] | None:
        return self.users.get(email.lower())

    def user_by_id(self, user_id: str) -> dict[str, Any] | None:
        return self._users_by_id.get(user_id)

    def add_user(
        self, email: str, data: dict[str, Any] | None = None, user_id: str | None = None
    ) -> None:
        with self._state:
            self._store_user(email, user_id, data or {})

    # -- protocol ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.headers.get("api-key") != self.api_key:
            return Response(401, api_response("BadApiKey", "Invalid API key"))
        if len(request.body) > MAX_BODY_BYTES:
            return Response(413, api_response("BatchTooLarge", "Request body is larger than 4MB"))
        route = (request.method, request.path)
        if route == ("GET", "/api/users/getFields"):
            return Response(200, {"fields": dict(self.user_fields)})
        if route == ("POST", "/api/users/bulkUpdate"):
            return self._bulk_update(request)
        if route == ("POST", "/api/events/trackBulk"):
            return self._track_bulk(request)
        if request.method == "DELETE" and request.path.startswith("/api/users/byUserId/"):
            return self._delete_by_user_id(unquote(request.path[len("/api/users/byUserId/") :]))
        if request.method == "DELETE" and request.path.startswith("/api/users/"):
            return self._delete_by_email(unquote(request.path[len("/api/users/") :]))
        return Response(404, api_response("NotFound", f"no route {request.method} {request.path}"))

    def _body(self, request: Request, list_key: str) -> list[Any] | Response:
        try:
            document = json.loads(request.body)
        except ValueError as exc:
            return Response(400, api_response("BadJsonBody", f"Invalid JSON body: {exc}"))
        items = document.get(list_key) if isinstance(document, dict) else None
        if not isinstance(items, list):
            return Response(400, api_response("BadParams", f"{list_key} is required"))
        return items

    def _conflicts(
        self, items: list[dict[str, Any]], schema_of: Any, category: str
    ) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for item in items:
            schema = schema_of(item)
            for name, value in flatten(item.get("dataFields") or {}).items():
                expected = schema.get(name)
                if expected and not conforms(value, expected) and name not in errors:
                    errors[name] = {
                        "incomingTypes": [type_of(value)],
                        "expectedType": expected,
                        "category": category,
                        "offendingValue": value,
                        "_type": "UnexpectedType",
                    }
        return errors

    def _bulk_update(self, request: Request) -> Response:
        users = self._body(request, "users")
        if isinstance(users, Response):
            return users
        if not all(isinstance(u, dict) and (u.get("email") or u.get("userId")) for u in users):
            return Response(400, api_response("BadParams", "Each user needs an email or a userId"))
        with self._state:
            conflicts = self._conflicts(users, lambda _: self.user_fields, "user")
            if conflicts:
                return Response(400, self._mismatch(conflicts))
            failed: dict[str, list[str]] = {}
            success = 0
            created: set[str] = set()
            for user in users:
                reason = self._update_user(user, created)
                if reason is None:
                    success += 1
                else:
                    list_name, value = reason
                    failed.setdefault(list_name, []).append(value)
        fail_count = sum(len(values) for values in failed.values())
        return Response(
            200,
            {
                "successCount": success,
                "failCount": fail_count,
                "invalidEmails": failed.get("invalidEmails", []),
                "invalidUserIds": failed.get("invalidUserIds", []),
                "failedUpdates": {
                    name: failed.get(name, [])
                    for name in (
                        "conflictEmails",
                        "conflictUserIds",
                        "forgottenEmails",
                        "forgottenUserIds",
                        "invalidDataEmails",
                        "invalidDataUserIds",
                        "invalidEmails",
                        "invalidUserIds",
                        "notFoundEmails",
                        "notFoundUserIds",
                    )
                },
                "createdFields": sorted(created),
                "filteredOutFields": [],
            },
        )

    def _update_user(self, user: dict[str, Any], created: set[str]) -> tuple[str, str] | None:
        """Apply one bulkUpdate entry; (failedUpdates list, value) when Iterable refuses it."""
        data = user.get("dataFields") or {}
        if not isinstance(data, dict):
            return ("invalidDataEmails", str(user.get("email") or user.get("userId")))
        email = user.get("email")
        if email:
            if not isinstance(email, str) or not EMAIL.fullmatch(email):
                return ("invalidEmails", str(email))
            if "email" in data and data["email"] != email:
                return ("invalidDataEmails", email)
            target = self.users.get(email.lower())
            new_id = data.get("userId")
            if new_id is not None and new_id in self._users_by_id:
                owner = self._users_by_id[new_id]
                if owner is not target:
                    return ("conflictUserIds", str(new_id))
            self._learn_fields(data, created)
            self._store_user(email, new_id, data, merge=bool(user.get("mergeNestedObjects")))
            return None
        user_id = user.get("userId")
        if bad_user_id(user_id):
            return ("invalidUserIds", str(user_id))
        target = self._users_by_id.get(user_id)
        if target is None and not user.get("preferUserId"):
            return ("notFoundUserIds", user_id)
        new_email = data.get("email")
        if isinstance(new_email, str):
            if not EMAIL.fullmatch(new_email):
                return ("invalidEmails", new_email)
            owner = self.users.get(new_email.lower())
            if owner is not None and owner is not target:
                return ("conflictEmails", new_email)
        self._learn_fields(data, created)
        if target is None:
            # Email-based projects give a user created by userId a placeholder email.
            email = new_email or f"{user_id}@placeholder.email"
            self._store_user(email, user_id, data)
        else:
            self._apply(target, data, merge=bool(user.get("mergeNestedObjects")))
            if isinstance(new_email, str) and new_email.lower() != target["email"]:
                self.users.pop(target["email"], None)
                target["email"] = new_email.lower()
                self.users[target["email"]] = target
        return None

    def _learn_fields(self, data: dict[str, Any], created: set[str]) -> None:
        for name, value in flatten(data).items():
            if name not in self.user_fields and value is not None:
                self.user_fields[name] = type_of(value)
                created.add(name)

    def _store_user(
        self, email: str, user_id: str | None, data: dict[str, Any], merge: bool = False
    ) -> None:
        key = email.lower()
        user = self.users.get(key)
        if user is None:
            user = self.users[key] = {"email": key, "userId": None, "dataFields": {}}
        if user_id is not None:
            if user["userId"] and user["userId"] != user_id:
                self._users_by_id.pop(user["userId"], None)
            user["userId"] = user_id
            self._users_by_id[user_id] = user
        self._apply(user, data, merge)

    @staticmethod
    def _apply(user: dict[str, Any], data: dict[str, Any], merge: bool) -> None:
        fields = user["dataFields"]
        for name, value in data.items():
            if name in ("email", "userId"):
                continue
            if merge and isinstance(value, dict) and isinstance(fields.get(name), dict):
                fields[name] = {**fields[name], **value}
            else:
                fields[name] = value

    def _mismatch(self, conflicts: dict[str, Any]) -> dict[str, Any]:
        names = ", ".join(sorted(conflicts))
        return api_response(
            "RequestFieldsTypesMismatched",
            f"Project 1: The request does not have the same data types as the project's "
            f"existing fields: {names}",
            {"validationErrors": conflicts},
        )

    def _track_bulk(self, request: Request) -> Response:
        events = self._body(request, "events")
        if isinstance(events, Response):
            return events
        if not all(isinstance(e, dict) and e.get("eventName") for e in events):
            return Response(400, api_response("BadParams", "eventName is required for every event"))
        for event in events:
            created_at = event.get("createdAt")
            if created_at is not None and (
                isinstance(created_at, bool) or not isinstance(created_at, int)
            ):
                return Response(
                    400,
                    api_response(
                        "BadParams", f"createdAt must be a unix timestamp: {created_at!r}"
                    ),
                )
        with self._state:
            conflicts = self._conflicts(
                events, lambda e: self.event_fields.get(e["eventName"], {}), "event"
            )
            if conflicts:
                return Response(400, self._mismatch(conflicts))
            failed: dict[str, list[str]] = {}
            disallowed: list[str] = []
            success = 0
            for event in events:
                reason = self._track(event)
                if reason is None:
                    success += 1
                elif reason[0] == "disallowedEventNames":
                    if reason[1] not in disallowed:
                        disallowed.append(reason[1])
                else:
                    failed.setdefault(reason[0], []).append(reason[1])
        fail_count = len(events) - success
        return Response(
            200,
            {
                "successCount": success,
                "failCount": fail_count,
                "disallowedEventNames": disallowed,
                "invalidEmails": failed.get("invalidEmails", []),
                "invalidUserIds": failed.get("invalidUserIds", []),
                "failedUpdates": {
                    name: failed.get(name, [])
                    for name in (
                        "forgottenEmails",
                        "forgottenUserIds",
                        "invalidEmails",
                        "invalidUserIds",
                        "notFoundEmails",
                        "notFoundUserIds",
                    )
                },
                "createdFields": [],
                "filteredOutFields": [],
            },
        )

    def _track(self, event: dict[str, Any]) -> tuple[str, str] | None:
        name = event["eventName"]
        if name in self.disallowed_event_names:
            return ("disallowedEventNames", name)
        email = event.get("email")
        user_id = event.get("userId")
        if email:
            if not isinstance(email, str) or not EMAIL.fullmatch(email):
                return ("invalidEmails", str(email))
            if email.lower() not in self.users:
                self._store_user(email, None, {})
        elif user_id is not None:
            if bad_user_id(user_id):
                return ("invalidUserIds", str(user_id))
            if user_id not in self._users_by_id:
                return ("notFoundUserIds", user_id)
        else:
            return ("invalidEmails", "")
        schema = self.event_fields.setdefault(name, {})
        for field_name, value in flatten(event.get("dataFields") or {}).items():
            if field_name not in schema and value is not None:
                schema[field_name] = type_of(value)
        event_id = event.get("id")
        if not event_id:
            self._next_event += 1
            event_id = f"generated-{self._next_event}"
        stored = dict(event)
        stored["id"] = event_id
        self.events[str(event_id)] = stored
        return None

    def _delete_by_email(self, email: str) -> Response:
        with self._state:
            user = self.users.pop(email.lower(), None)
            if user is None:
                return Response(
                    400,
                    api_response("UnknownEmailError", f"User with email {email} does not exist"),
                )
            if user.get("userId"):
                self._users_by_id.pop(user["userId"], None)
        return Response(200, api_response("Success", f"User {email} deleted"))

    def _delete_by_user_id(self, user_id: str) -> Response:
        with self._state:
            user = self._users_by_id.pop(user_id, None)
            if user is None:
                return Response(
                    400,
                    api_response(
                        "UnknownUserIdError", f"User with userId {user_id} does not exist"
                    ),
                )
            self.users.pop(user["email"], None)
        return Response(200, api_response("Success", f"User {user_id} deleted"))
