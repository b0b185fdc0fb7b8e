"""Writers following the planner: a writer of a run still being planned takes the next batches
without a Celery message each, woken by a Postgres NOTIFY."""

from __future__ import annotations

import psycopg

from shared.repositories.engine.batches import FencedClaim, _send_claim, read_claim
from shared.repositories.engine.leases import _FENCE_LAST, LeaseLost

# A writer that has written a batch of a run still being planned may follow the planner: it
# promises (run_progress.writer_until) to take the batches stored from then on, the planner
# stores those without ringing their doorbells (rung false) and wakes the follower with a
# NOTIFY instead, and the follower claims the run's pending batches in order. A message costs
# about 2 ms of CPU across the broker, Celery's parent and the pool process; a follower's
# claim, a fraction. When batches wait for the followers, the planner rings again, so a slow
# destination still gets as many writers as the fleet has.
#
# Safety: the planner decides under the progress row's lock (`fence_last_storing`), and a
# follower withdraws its promise under the same lock after finding no batch left to it
# (`retire_follower`): either it sees the batch, or the planner sees no promise and rings. A
# follower that dies leaves its promise to run out; the reaper rings what it left.

# Batches left to followers and not yet taken, beyond which the planner rings again — at most
# once every BACKLOG_RING_EVERY_S: each writer it adds follows too, so a run gains up to twenty
# writers a second for as long as its followers fall behind (a slow destination), and a worker
# with no process free is not sent a message per batch that it could only take once the
# batches are written. When planning ends, the writers still missing are called at once
# (`pending_batches_after_first`).
FOLLOWED_BACKLOG = 2
BACKLOG_RING_EVERY_S = 0.05


def followers_channel(run_id: str) -> str:
    return f"retl_batches_{run_id}"


def fence_last_storing(
    conn: psycopg.Connection, run_id: str, token: int, batch_no: int, *, read: int | None,
    added: int, changed: int, unchanged: int, failed: int,
) -> bool:
    """`fence_last` for the planner's transaction that stored batch `batch_no`, deciding in the
    same statement whether the batch is left to the run's followers: when a writer follows the
    run and keeps up (or another writer was called lately), the batch is stored with no
    doorbell and the followers are woken at commit (True); else the caller rings it (False).
    The run's row is locked first, then its progress row, the order of every writer; a
    retiring follower takes the progress row's lock before it looks (`retire_follower`).
    Raises LeaseLost if the token is stale."""
    row = conn.execute(
        "WITH fenced AS (" + _FENCE_LAST + "), "
        + _FOLLOWED.format(promise_filter=" AND EXISTS (SELECT 1 FROM fenced)")
        + " SELECT EXISTS (SELECT 1 FROM fenced), " + _WOKEN,
        {"run": run_id, "token": token, "batch": batch_no, "read": read, "added": added,
         "changed": changed, "unchanged": unchanged, "written": 0, "failed": failed,
         "backlog": FOLLOWED_BACKLOG, "every": BACKLOG_RING_EVERY_S,
         "channel": followers_channel(run_id)},
    ).fetchone()
    if not row[0]:
        raise LeaseLost(run_id)
    return bool(row[1])


# Whether followers take batch %(batch)s of run %(run)s (see `fence_last_storing`): the
# statement's CTEs, then what it answers, the number of followers' wake-ups sent (0 or 1).
_FOLLOWED = (
    "promise AS ("
    " SELECT writer_until > clock_timestamp() AS held,"
    "  coalesce(backlog_rung_at > clock_timestamp() - make_interval(secs => %(every)s),"
    "   false) AS rang_lately"
    " FROM run_progress WHERE run_id = %(run)s{promise_filter} FOR UPDATE),"
    " decision AS ("
    " SELECT p.held, p.held AND (p.rang_lately OR (SELECT count(*) FROM run_batches w"
    "  WHERE w.run_id = %(run)s AND w.status = 'pending' AND NOT w.rung) < %(backlog)s)"
    "  AS follow FROM promise p),"
    " followed AS ("
    " UPDATE run_batches SET rung = false FROM decision"
    " WHERE decision.follow AND run_id = %(run)s AND batch_no = %(batch)s RETURNING 1),"
    " backlog_rung AS ("
    " UPDATE run_progress SET backlog_rung_at = clock_timestamp() FROM decision"
    " WHERE decision.held AND NOT decision.follow AND run_id = %(run)s RETURNING 1)"
)
_WOKEN = "(SELECT count(*) FROM (SELECT pg_notify(%(channel)s, '') FROM followed) AS woken)"


def claim_next_pending(
    conn: psycopg.Connection, run_id: str, token: int, owner: str, claim_seconds: float,
    unrung_only: bool = False,
) -> FencedClaim | None:
    """The run's first pending batch, claimed for the holder of `token` (whether or not it was
    rung: a doorbell that finds its batch taken costs little; `unrung_only`: only one left to
    followers); None when there is none free (or the token is stale)."""
    return read_claim(
        send_claim_next_pending(conn, run_id, token, owner, claim_seconds, unrung_only)
    )


def send_claim_next_pending(
    conn: psycopg.Connection, run_id: str, token: int, owner: str, claim_seconds: float,
    unrung_only: bool = False,
) -> psycopg.Cursor:
    """`claim_next_pending` with its answer left unread, for `read_claim`: in a pipeline it
    travels with the answers of the statements sent after it. Skips locked batches, so it
    never waits for another claim."""
    return _send_claim(
        conn,
        "b.batch_no = (SELECT u.batch_no FROM run_batches u"
        "  WHERE u.run_id = %(run)s AND u.status = 'pending'"
        "  AND (u.not_before IS NULL OR u.not_before <= now())"
        + (" AND NOT u.rung" if unrung_only else "")
        + "  ORDER BY u.batch_no LIMIT 1 FOR UPDATE SKIP LOCKED) AND b.status = 'pending'",
        {"owner": owner, "claim_s": claim_seconds, "run": run_id, "token": token},
    )


def promise_to_follow(conn: psycopg.Connection, run_id: str, token: int, seconds: float) -> bool:
    """Promise to take the run's next batches for `seconds` from now; False (no promise) when
    the run is no longer being planned by the holder of `token`."""
    row = conn.execute(
        "UPDATE run_progress p SET writer_until = now() + make_interval(secs => %s)"
        " FROM runs r WHERE p.run_id = %s AND p.phase = 'planning'"
        " AND r.id = p.run_id AND r.fencing_token = %s AND r.status = 'running'"
        " RETURNING 1",
        (seconds, run_id, token),
    ).fetchone()
    return row is not None


def retire_follower(conn: psycopg.Connection, run_id: str) -> bool:
    """Withdraw the run's promise unless a batch is left to followers; True when withdrawn (the
    planner rings its next batch). The lock is taken before the look: a batch stored before it
    is seen, and one stored after it finds no promise."""
    conn.execute("SELECT 1 FROM run_progress WHERE run_id = %s FOR UPDATE", (run_id,))
    left = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM run_batches"
        " WHERE run_id = %s AND status = 'pending' AND NOT rung)",
        (run_id,),
    ).fetchone()[0]
    if left:
        return False
    conn.execute("UPDATE run_progress SET writer_until = NULL WHERE run_id = %s", (run_id,))
    return True


def hand_on(conn: psycopg.Connection, run_id: str) -> int | None:
    """A writer stops taking the run's batches before they ran out (its turn is over, the
    destination asked to wait, its worker is stopping): withdraw the run's promise to follow
    (the planner rings its next batches; a follower still there promises again) and mark the
    first batch left to followers rung. Its number, for the caller to ring; None when no batch
    is left to followers. Under the progress row's lock, as `retire_follower`; the batch is
    looked for skipping locked rows (a writer's claim in flight locks its batch before the
    progress row, so waiting for it here could deadlock), as the claims do."""
    conn.execute("SELECT 1 FROM run_progress WHERE run_id = %s FOR UPDATE", (run_id,))
    conn.execute("UPDATE run_progress SET writer_until = NULL WHERE run_id = %s", (run_id,))
    row = conn.execute(
        "UPDATE run_batches SET rung = true, enqueued_at = now()"
        " WHERE run_id = %(run)s AND batch_no = (SELECT batch_no FROM run_batches"
        "  WHERE run_id = %(run)s AND status = 'pending' AND NOT rung"
        "  ORDER BY batch_no LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " RETURNING batch_no",
        {"run": run_id},
    ).fetchone()
    return None if row is None else row[0]


def pending_batches_after_first(conn: psycopg.Connection, run_id: str, count: int) -> list[int]:
    """The numbers of up to `count` of the run's pending batches left to followers (a batch
    with its own doorbell brings its own writer), after the first one (which the caller takes
    itself): the doorbells that call more writers."""
    if count <= 0:
        return []
    rows = conn.execute(
        "SELECT batch_no FROM run_batches WHERE run_id = %s AND status = 'pending' AND NOT rung"
        " AND (not_before IS NULL OR not_before <= now())"
        " ORDER BY batch_no OFFSET 1 LIMIT %s",
        (run_id, count),
    ).fetchall()
    return [row[0] for row in rows]
