-- background-processing schema. Idempotent: safe to apply any number of times.
-- `background-processing migrate` applies it (it is embedded in the binary);
-- it also adds the columns and indexes below to a `jobs` table created by an
-- earlier version, so rows written by the original service keep working.

CREATE TABLE IF NOT EXISTS jobs (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    object_id    BIGINT          NULL,
    -- Task duration in nanoseconds; NULL never finishes by itself.
    sleep        BIGINT          NULL,
    -- NULL (new), QUEUED!, STARTED!, DONE!, CANCELLED! or FAILED!; compared
    -- exactly (binary), so a client's own 'queued!' is not 'QUEUED!'.
    status       VARCHAR(32)     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    created_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    queued_at    DATETIME(6)     NULL,
    started_at   DATETIME(6)     NULL,
    finished_at  DATETIME(6)     NULL,
    cancelled_at DATETIME(6)     NULL,
    -- Why the job failed or was cancelled, in words.
    error        TEXT            NULL,
    -- Name of the worker (replica) holding the claim.
    owner        VARCHAR(255)    NULL,
    -- Fencing token: incremented by every claim; every later write checks it.
    lease        BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- Task kind: which registered task runs the job.
    kind         VARCHAR(64)     NOT NULL DEFAULT 'sleep',
    -- The task's input, as JSON.
    payload      JSON            NULL,
    -- Higher runs first; then oldest first.
    priority     INT             NOT NULL DEFAULT 0,
    -- Not claimed before this time; NULL: as soon as possible.
    run_at       DATETIME(6)     NULL,
    -- Attempts started so far.
    attempts     INT UNSIGNED    NOT NULL DEFAULT 0,
    -- Attempts allowed; NULL: the service's MAX_ATTEMPTS.
    max_attempts INT UNSIGNED    NULL,
    -- Milliseconds a run may take; NULL: the service's JOB_TIMEOUT.
    timeout      BIGINT UNSIGNED NULL,
    -- When the running attempt times out (set when it starts).
    deadline_at  DATETIME(6)     NULL,
    -- Every failed attempt's error, one line each.
    errors       TEXT            NULL,
    -- The queue it waits in: a replica claims only from the queues it
    -- serves (QUEUES), and only kinds it runs.
    queue        VARCHAR(64)     NOT NULL DEFAULT 'default',
    -- Set by a client (or `background-processing cancel`) to cancel the job:
    -- a new or queued one never starts, a running one is interrupted.
    cancel_requested_at DATETIME(6) NULL,
    -- While the job is not final, no other job that is not final has the
    -- same key (INSERT fails with 1062; INSERT IGNORE enqueues if absent).
    unique_key   VARCHAR(255)    NULL,
    -- Derived columns (computed on read, never stored) for the indexes
    -- below. Each is NULL except in the statuses where some query looks
    -- for the row, so a transition moves only the index entries whose value
    -- changes: 4 per job, where indexes that begin with status would move 4
    -- on every transition.
    -- 1 while the row is new (status NULL).
    is_new       TINYINT         AS (IF(status IS NULL, 1, NULL)) VIRTUAL,
    -- 1 while its task runs (STARTED!).
    is_running   TINYINT         AS (IF(status = 'STARTED!', 1, NULL)) VIRTUAL,
    -- The owner while the job is held (QUEUED! or STARTED!); '' for a held
    -- row without an owner (written by the original service).
    held_by      VARCHAR(255)    AS (IF(status IN ('QUEUED!', 'STARTED!'),
                                        COALESCE(owner, ''), NULL)) VIRTUAL,
    -- finished_at once the row is final (DONE!, CANCELLED!, FAILED!).
    final_at     DATETIME(6)     AS (IF(status IN ('DONE!', 'CANCELLED!', 'FAILED!'),
                                        finished_at, NULL)) VIRTUAL,
    -- 1 while a cancel requested since the job's last run ended waits to be
    -- carried out (or, on a final row, to be forgotten: a cancel of a final
    -- job changes nothing, not even a later re-run).
    cancel_pending TINYINT       AS (IF(cancel_requested_at IS NOT NULL
                                        AND (finished_at IS NULL OR cancel_requested_at > finished_at)
                                        AND (status IS NULL OR status IN ('QUEUED!', 'STARTED!',
                                             'DONE!', 'CANCELLED!', 'FAILED!')),
                                        1, NULL)) VIRTUAL,
    -- unique_key while the job is not final: what jobs_unique keeps unique.
    unique_live  VARCHAR(255)    AS (IF(status IN ('DONE!', 'CANCELLED!', 'FAILED!'),
                                        NULL, unique_key)) VIRTUAL,
    PRIMARY KEY (id),
    -- Claims: new rows of one queue and kind, those due now (run_at NULL)
    -- by priority then age, and scheduled ones by when they fell due; rows
    -- of other queues and kinds, and rows scheduled for later, sit apart,
    -- past the range a claim reads.
    KEY jobs_new_routed (is_new, queue, kind, run_at, priority DESC, id),
    -- Rescuer and shutdown release: a worker's QUEUED!/STARTED! jobs; the
    -- canceller and the max_running counts: the running jobs among all held
    -- ones (a few per consumer and channel slot of each replica). A start
    -- keeps its owner, so it moves no entry here: a job moves 4 index
    -- entries in all (claimed: 2, started: 0, done: 2).
    KEY jobs_held_by (held_by),
    -- stats (recent throughput) and the pruner (old final rows).
    KEY jobs_final_at (final_at),
    -- The canceller: jobs whose cancel was requested, oldest request first.
    KEY jobs_cancel (cancel_pending, cancel_requested_at),
    -- Unique jobs: one job that is not final per key. Rows without a key
    -- hold NULL here through every transition, so they never move in it.
    UNIQUE KEY jobs_unique (unique_live)
) ENGINE = InnoDB;

-- Live replicas. A worker whose heartbeat_at is older than WORKER_DEAD_AFTER
-- is dead: its jobs are rescued and its row removed.
CREATE TABLE IF NOT EXISTS workers (
    name         VARCHAR(255)    NOT NULL,
    host         VARCHAR(255)    NOT NULL,
    pid          INT UNSIGNED    NOT NULL,
    version      VARCHAR(64)     NOT NULL,
    started_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    heartbeat_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    -- The queues it serves and the kinds it runs, comma-separated.
    queues       VARCHAR(1024)   NOT NULL DEFAULT '',
    kinds        VARCHAR(1024)   NOT NULL DEFAULT '',
    PRIMARY KEY (name),
    KEY workers_heartbeat_at (heartbeat_at)
) ENGINE = InnoDB;

-- Steering a queue. A queue without a row is unpaused and unlimited
-- (beyond each replica's RATE_LIMIT).
CREATE TABLE IF NOT EXISTS queues (
    name         VARCHAR(64)     NOT NULL,
    -- 1: no replica claims from it; running and queued jobs go on.
    paused       TINYINT         NOT NULL DEFAULT 0,
    -- Tasks started per second from it across all replicas together.
    rate_limit   DOUBLE          NULL,
    -- Jobs of it STARTED! at once across all replicas.
    max_running  INT UNSIGNED    NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB;

-- Recurring jobs: each row enqueues one job per fire time of its cron
-- expression (5 fields, or 6 with seconds first; UTC), across all replicas.
CREATE TABLE IF NOT EXISTS schedules (
    name         VARCHAR(255)    NOT NULL,
    cron         VARCHAR(255)    NOT NULL,
    -- What each fired job is: its kind, queue, payload, sleep and priority.
    kind         VARCHAR(64)     NOT NULL DEFAULT 'sleep',
    queue        VARCHAR(64)     NOT NULL DEFAULT 'default',
    payload      JSON            NULL,
    sleep        BIGINT          NULL,
    priority     INT             NOT NULL DEFAULT 0,
    -- 0: not fired (a bad expression sets it, with the reason in error).
    enabled      TINYINT         NOT NULL DEFAULT 1,
    -- The next fire time (in the server's time, like NOW()); NULL: computed
    -- from cron at the next look. Set it to NOW(6) to fire at once.
    next_run_at  DATETIME(6)     NULL,
    -- The job the last fire enqueued.
    last_job_id  BIGINT UNSIGNED NULL,
    -- Why the row was disabled, or what its jobs wait for.
    error        TEXT            NULL,
    -- The expression next_run_at was computed from: an edited cron is seen.
    cron_seen    VARCHAR(255)    NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB;
