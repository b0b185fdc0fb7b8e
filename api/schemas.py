"""Marshmallow schemas: request bodies and query strings (camelCase as the API documents them)
and resource attributes (snake_case). The OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared import schedules
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.services.alerts import KINDS as ALERT_KINDS
from shared.services.alerts import AlertEvent
from shared.services.syncs import MODES, MODES_NEEDING_KEY
from shared.settings import get_settings
from shared.templates import check_template

NAME = validate.Length(min=1, max=200)
ID = validate.Length(min=1, max=100)
QUERY_TEXT = validate.Length(min=1, max=200_000)
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "held")
MAX_PREVIEW_SAMPLE = 100


@lru_cache(maxsize=8192)
def _utc_text(value: dt.datetime) -> str:
    """Formatting a timestamp costs fifty times looking it up: list pages repeat the same few
    (every row's created and updated times) request after request. Equal instants format alike
    whatever their zone, so the cache answers rightly for any of them."""
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


class UtcDateTime(fields.DateTime):
    """ISO 8601 in UTC with a `Z`, as every timestamp of the API; input may carry any offset."""

    @staticmethod
    def format_value(value: dt.datetime | None) -> str | None:
        return None if value is None else _utc_text(value)

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return self.format_value(value)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dt.datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class JsonBoolean(fields.Boolean):
    """A boolean in a JSON body: `true` or `false` only, not `"no"`, `"1"` or `0`."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Strict(Schema):
    class Meta:
        unknown = RAISE


# ---- request bodies -------------------------------------------------------------------------


class FieldMappingSchema(Strict):
    source = fields.String(validate=validate.Length(min=1, max=500))
    static = fields.Raw(allow_none=True)
    template = fields.String(validate=validate.Length(min=1, max=10_000))
    destination = fields.String(required=True, validate=validate.Length(min=1, max=500))
    key = JsonBoolean(load_default=False)

    @validates_schema
    def _one_value(self, data: dict[str, Any], **_: Any) -> None:
        given = [name for name in ("source", "static", "template") if name in data]
        if len(given) != 1:
            raise ValidationError("give exactly one of source, static, template", "source")
        if data.get("key") and "source" not in data:
            raise ValidationError("a key mapping takes its value from a source column", "key")
        if "template" in data:
            try:
                check_template(data["template"])
            except Exception as exc:  # syntax, unknown filter, over a limit: the client's
                raise ValidationError(f"not a valid template: {exc}", "template") from None


class ScheduleSchema(Strict):
    type = fields.String(required=True, validate=validate.OneOf(["cron", "interval", "manual"]))
    expression = fields.String(validate=validate.Length(max=200))
    timezone = fields.String(validate=validate.Length(max=100))
    every = fields.String(validate=validate.Length(max=50))

    @validates_schema
    def _valid(self, data: dict[str, Any], **_: Any) -> None:
        if "type" not in data:
            return
        try:
            schedules.validate(data, get_settings().min_schedule_interval_s)
        except schedules.ScheduleError as exc:
            raise ValidationError(str(exc), exc.field) from None


class GuardSchema(Strict):
    """What one run may do to the destination before it is held (see shared.guards)."""

    maxRemovedPercent = fields.Float(
        validate=validate.Range(min=0, max=100), allow_none=True,
        metadata={"description": "hold a run that would remove more than this percent of the"
                  " records the destination holds for the sync (per its snapshot)"},
    )
    maxChangedPercent = fields.Float(
        validate=validate.Range(min=0, max=100), allow_none=True,
        metadata={"description": "hold a run that would change more than this percent of them"},
    )
    minSourceRows = fields.Integer(
        validate=validate.Range(min=0, max=2**62), allow_none=True,
        metadata={"description": "hold a run whose query returns fewer records than this"},
    )


class SyncBodySchema(Strict):
    name = fields.String(required=True, validate=NAME)
    sourceQuery = fields.String(required=True, validate=QUERY_TEXT)
    destinationId = fields.String(required=True, validate=ID)
    sourceId = fields.String(validate=ID, allow_none=True)
    objectName = fields.String(required=True, validate=validate.Length(min=1, max=200))
    fieldMappings = fields.List(
        fields.Nested(FieldMappingSchema), required=True, validate=validate.Length(min=1, max=1000)
    )
    syncMode = fields.String(required=True, validate=validate.OneOf(MODES))
    schedule = fields.Nested(ScheduleSchema)
    enabled = JsonBoolean()
    guard = fields.Nested(
        GuardSchema, allow_none=True,
        metadata={"description": "null: mirror and delete syncs hold a run that would remove"
                  " more than 50% of more than 100 records; {} holds nothing"},
    )

    @validates_schema
    def _key_mapping(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        mode, mappings = data.get("syncMode"), data.get("fieldMappings")
        if mode in MODES_NEEDING_KEY and mappings is not None:
            keys = [m for m in mappings if m.get("key")]
            if len(keys) != 1:
                raise ValidationError(
                    f"sync mode {mode} needs exactly one key mapping (\"key\": true)", "fieldMappings"
                )


class TriggerRunSchema(Strict):
    syncId = fields.String(validate=ID)
    syncIds = fields.List(fields.String(validate=ID), validate=validate.Length(min=1, max=500))
    fullRefresh = JsonBoolean(load_default=False)

    @validates_schema
    def _one_of(self, data: dict[str, Any], **_: Any) -> None:
        if ("syncId" in data) == ("syncIds" in data):
            raise ValidationError("give syncId or syncIds", "syncId")


class PreviewSampleQuery(Strict):
    sample = fields.Integer(load_default=10, validate=validate.Range(min=0, max=MAX_PREVIEW_SAMPLE))


class PreviewBodySchema(Strict):
    """The body of a saved sync's preview (optional): the sample size."""

    sample = fields.Integer(validate=validate.Range(min=0, max=MAX_PREVIEW_SAMPLE))


class ToggleSchema(Strict):
    syncId = fields.String(required=True, validate=ID)
    enabled = JsonBoolean(required=True)


class DlqFilterSchema(Strict):
    syncId = fields.String(validate=ID)
    errorCode = fields.String(validate=validate.Length(min=1, max=100))

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give syncId, errorCode or both", "syncId")


class ResolveSchema(Strict):
    """`entryIds`, or a `filter` that resolves every matching open entry."""

    entryIds = fields.List(fields.String(validate=ID), validate=validate.Length(min=1, max=1000))
    filter = fields.Nested(DlqFilterSchema)
    resolution = fields.String(required=True, validate=validate.Length(min=1, max=100))
    replay = JsonBoolean(load_default=False)

    @validates_schema
    def _one_of(self, data: dict[str, Any], **_: Any) -> None:
        if ("entryIds" in data) == ("filter" in data):
            raise ValidationError("give entryIds or filter", "entryIds")


class _AlertChannelOptions(Strict):
    events = fields.List(
        fields.String(validate=validate.OneOf([str(e) for e in AlertEvent])),
        validate=validate.Length(min=1, max=len(AlertEvent)),
    )
    dlqThreshold = fields.Integer(validate=validate.Range(min=1, max=10_000_000), allow_none=True)
    enabled = JsonBoolean()


class AlertChannelBodySchema(_AlertChannelOptions):
    name = fields.String(required=True, validate=NAME)
    kind = fields.String(required=True, validate=validate.OneOf(sorted(ALERT_KINDS)))
    config = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), required=True)


class AlertChannelUpdateSchema(_AlertChannelOptions):
    """Any subset of the create fields but `kind` (a channel keeps its kind); `config` is
    merged, so the secret URL may be left out."""

    name = fields.String(validate=NAME)
    config = fields.Dict(keys=fields.String(validate=validate.Length(max=100)))


class ConnectionBodySchema(Strict):
    name = fields.String(required=True, validate=NAME)
    connector = fields.String(required=True, validate=validate.Length(min=1, max=50))
    config = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), required=True)


class ConnectionUpdateSchema(Strict):
    name = fields.String(validate=NAME)
    config = fields.Dict(keys=fields.String(validate=validate.Length(max=100)))


class ApiKeyBodySchema(Strict):
    """Creating a key takes no fields: the key belongs to the caller's workspace."""


# ---- query strings --------------------------------------------------------------------------


class PageQuery(Strict):
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))
    cursor = fields.String(validate=validate.Length(max=500))


class SyncListQuery(PageQuery):
    destination_id = fields.String(validate=ID)
    enabled = fields.Boolean()


class RunListQuery(PageQuery):
    sync_id = fields.String(validate=ID)
    status = fields.String(validate=validate.OneOf(RUN_STATUSES))


class DlqListQuery(PageQuery):
    sync_id = fields.String(validate=ID)
    resolved = fields.Boolean(load_default=False)


class DlqStatsQuery(Strict):
    sync_id = fields.String(validate=ID)
    since = UtcDateTime()


class ConnectionListQuery(PageQuery):
    connector = fields.String(validate=validate.Length(max=50))


class ObjectsQuery(Strict):
    destination_id = fields.String(required=True, validate=ID)
    search = fields.String(validate=validate.Length(max=200))


class FieldsQuery(Strict):
    destination_id = fields.String(required=True, validate=ID)
    object_name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class EmptyQuery(Strict):
    """For routes that take no query parameters: any parameter is refused."""


# ---- resource attributes --------------------------------------------------------------------


class SyncAttributes(Schema):
    name = fields.String()
    source_query = fields.String()
    source_id = fields.String()
    destination_id = fields.String()
    object_name = fields.String()
    field_mappings = fields.List(fields.Dict())
    sync_mode = fields.String()
    enabled = fields.Boolean()
    schedule = fields.Dict()
    guard = fields.Nested(GuardSchema, allow_none=True)
    next_run_at = UtcDateTime(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class DeletedAttributes(Schema):
    deleted = fields.Boolean()
    deleted_at = UtcDateTime()


class RunAttributes(Schema):
    sync_id = fields.String()
    status = fields.String(
        metadata={"enum": list(RUN_STATUSES), "description": "held: the plan crossed the sync's"
                  " guard and waits, unwritten, for POST /runs/{id}/approve or /cancel"}
    )
    trigger = fields.String()
    full_refresh = fields.Boolean()
    scheduled_for = UtcDateTime(allow_none=True)
    rows_read = fields.Integer()
    rows_written = fields.Integer()
    rows_failed = fields.Integer()
    rows_added = fields.Integer()
    rows_changed = fields.Integer()
    rows_removed = fields.Integer()
    rows_unchanged = fields.Integer()
    error = fields.String(allow_none=True)
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    waiting_until = UtcDateTime(
        allow_none=True,
        metadata={"description": "While the run waits for its destination (a Retry-After, a"
                  " quota answer, a backoff, its rate or concurrency limit), when its next"
                  " parked batch is tried again; null when it is not waiting."},
    )


class PreviewCounts(Schema):
    added = fields.Integer()
    changed = fields.Integer()
    removed = fields.Integer()
    unchanged = fields.Integer()
    rejected = fields.Integer()


class PreviewRecord(Schema):
    key = fields.String(allow_none=True)
    operation = fields.String(metadata={"description": "upsert, insert, update or delete"})
    record = fields.Dict(metadata={"description": "the record as it would be sent: mapped,"
                                   " cast, in the destination's field names"})
    changed_fields = fields.List(
        fields.String(), allow_none=True,
        metadata={"description": "changed records only: the destination field names whose"
                  " value differs from what the destination last accepted for the record (a"
                  " field new to the mapping counts as changed), sorted; [] when every field"
                  " sent is as it was (the source changed a column the record does not send,"
                  " or one a cast hides); null when not known (the record was last sent"
                  " before per-field digests were kept, or as a delete)"},
    )


class PreviewRejected(Schema):
    key = fields.String(allow_none=True)
    reason = fields.String(metadata={"enum": ["NULL_KEY", "DUPLICATE_KEY", "MAPPING"]})
    message = fields.String()


class PreviewSamples(Schema):
    added = fields.List(fields.Nested(PreviewRecord))
    changed = fields.List(fields.Nested(PreviewRecord))
    removed = fields.List(fields.Nested(PreviewRecord))
    rejected = fields.List(fields.Nested(PreviewRejected))


class PreviewAttributes(Schema):
    counts = fields.Nested(PreviewCounts)
    rejected_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    samples = fields.Nested(PreviewSamples)


class DlqEntryAttributes(Schema):
    sync_id = fields.String()
    run_id = fields.String()
    error_code = fields.String()
    message = fields.String()
    record_keys = fields.Dict()
    attempts = fields.Integer()
    first_seen_at = UtcDateTime()
    last_seen_at = UtcDateTime()
    resolved = fields.Boolean()
    resolved_at = UtcDateTime(allow_none=True)
    resolution = fields.String(allow_none=True)


class DlqStatsAttributes(Schema):
    open_count = fields.Integer()
    resolved_count = fields.Integer()
    by_error_code = fields.Dict(keys=fields.String(), values=fields.Integer())
    computed_at = UtcDateTime()


class DlqResolveAttributes(Schema):
    resolved_ids = fields.List(fields.String())
    replay_run_id = fields.String(allow_none=True)
    replay_run_ids = fields.List(fields.String())
    resolved_at = UtcDateTime()


class ConnectionAttributes(Schema):
    name = fields.String()
    connector = fields.String()
    status = fields.String()
    status_message = fields.String(allow_none=True)
    objects_discoverable = fields.Boolean()
    config = fields.Dict()
    secrets_set = fields.List(fields.String())
    checked_at = UtcDateTime(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class ObjectAttributes(Schema):
    label = fields.String()
    api_name = fields.String()
    supports_upsert = fields.Boolean()
    writable = fields.Boolean()


class FieldAttributes(Schema):
    label = fields.String()
    data_type = fields.String()
    required = fields.Boolean()
    updateable = fields.Boolean()
    external_id = fields.Boolean()


class ApiKeyAttributes(Schema):
    display_hint = fields.String()
    key = fields.String()
    created_at = UtcDateTime()
    revoked_at = UtcDateTime(allow_none=True)


class AlertChannelAttributes(Schema):
    name = fields.String()
    kind = fields.String()
    config = fields.Dict()
    secrets_set = fields.List(fields.String())
    events = fields.List(fields.String())
    dlq_threshold = fields.Integer()
    enabled = fields.Boolean()
    last_delivery_at = UtcDateTime(allow_none=True)
    last_delivery_status = fields.String(allow_none=True)
    last_delivery_error = fields.String(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
