-- background-processing schema. Idempotent: safe to apply any number of times.
-- `background-processing migrate` applies it (it is embedded in the binary);
-- it also adds the columns and indexes below to a `jobs` table created by an
-- earlier version, so rows written by the original service keep working.

CREATE TABLE IF NOT EXISTS jobs (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    object_id    BIGINT          NULL,
    -- Task duration in nanoseconds; NULL never finishes by itself.
    sleep        BIGINT          NULL,
    -- NULL (new), QUEUED!, STARTED!, DONE!, CANCELLED! or FAILED!.
    status       VARCHAR(32)     NULL,
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
    PRIMARY KEY (id),
    -- Claims: new rows, those due now (run_at NULL) by priority then age,
    -- and scheduled ones by when they fell due; rows scheduled for later
    -- sit apart, past the range a claim reads.
    KEY jobs_claim_due (status, run_at, priority DESC, id),
    -- Canceller: STARTED! jobs by deadline (and by start time for rows
    -- started before deadlines were recorded).
    KEY jobs_deadline (status, deadline_at, started_at),
    -- Rescuer and shutdown release: a worker's QUEUED!/STARTED! jobs.
    KEY jobs_status_owner (status, owner),
    -- stats (recent throughput) and the pruner (old final rows).
    KEY jobs_status_finished_at (status, finished_at)
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
    PRIMARY KEY (name),
    KEY workers_heartbeat_at (heartbeat_at)
) ENGINE = InnoDB;
