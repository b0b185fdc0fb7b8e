"""The sync engine's SQL, one module per concern: leases and fencing (`leases`), staging and the
set-based diff (`planning`), batches and their claims (`batches`), writers following the planner
(`followers`), plans held by a guard (`holds`), the snapshot and the end of a run
(`finalization`) and what the reaper looks for (`reaper`).

Every write a run makes after it was leased goes through a fence, which locks the run row and
checks the fencing token, so a worker that lost its lease can no longer change anything.
Callers use the package as one namespace: `from shared.repositories import engine as repo`."""

from shared.repositories.engine.batches import (  # noqa: F401
    ClaimedBatch,
    FencedClaim,
    Progress,
    batch_status,
    claim_batch,
    claim_batch_fenced,
    insert_batch,
    park_batch,
    progress,
    read_claim,
    record_batch,
    renew_claim,
)
from shared.repositories.engine.finalization import (  # noqa: F401
    accept_batch,
    end_run,
    resolve_null_key_entry,
    run_failures,
)
from shared.repositories.engine.followers import (  # noqa: F401
    BACKLOG_RING_EVERY_S,
    FOLLOWED_BACKLOG,
    claim_next_pending,
    fence_last_storing,
    followers_channel,
    hand_on,
    pending_batches_after_first,
    promise_to_follow,
    retire_follower,
    send_claim_next_pending,
)
from shared.repositories.engine.holds import (  # noqa: F401
    ReleasedPlan,
    discard_plan,
    hold_run,
    insert_held_batch,
    release_plan,
    snapshot_size,
)
from shared.repositories.engine.leases import (  # noqa: F401
    Lease,
    LeaseLost,
    RunState,
    current_token,
    fence,
    fence_last,
    heartbeat,
    next_queued_run,
    relax,
    release_lease,
    run_state,
    take_lease,
)
from shared.repositories.engine.planning import (  # noqa: F401
    PREVIEW_STAGE,
    DiffCounts,
    Failure,
    Rejected,
    StagedRows,
    add_counts,
    add_failures,
    add_rejects,
    analyze_stage,
    copy_into_stage,
    create_seen,
    create_stage,
    diff_into_ops,
    drop_stage,
    first_keys,
    mark_snapshot_empty,
    outgoing_changes,
    outgoing_keys,
    planning_done,
    refresh_snapshot_statistics,
    removed_keys,
    reset_staging,
    restrict_stage_to_keys,
    run_stage,
    set_key_kind,
    set_plan_counts,
    set_removed,
    set_rows_read,
    size_for_staging,
    snapshot_holds_md5,
    snapshot_is_empty,
    snapshot_key_kind,
    stage_has_rejects,
    stage_rejects,
    stage_removed,
    stage_rows_and_batch,
    stored_field_digests,
)
from shared.repositories.engine.reaper import (  # noqa: F401
    StrandedBatch,
    complete_unfinalized_runs,
    drop_abandoned_stages,
    expired_planning_runs,
    purge_finished_staging,
    stale_queued_runs,
    stranded_batches,
)
