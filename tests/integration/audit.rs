//! The audit trigger: every status change of every job recorded by an
//! `AFTER UPDATE` trigger into an `audit` table the test creates, so "started
//! at most once" and "nothing changes a final row" are checked on the full
//! history, not on a snapshot.

use crate::testdb::*;
use mysql::prelude::Queryable;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------
// The audit trigger
// ---------------------------------------------------------------------------

/// Creates `audit` and the trigger that records every status change of a
/// job (with the owner and lease the row has after the change).
pub fn install_audit(db: &TestDb) {
    db.exec(
        "CREATE TABLE audit (
            seq        BIGINT AUTO_INCREMENT PRIMARY KEY,
            job_id     BIGINT,
            old_status VARCHAR(32) NULL,
            new_status VARCHAR(32) NULL,
            owner      VARCHAR(255) NULL,
            lease      BIGINT,
            at         DATETIME(6) DEFAULT NOW(6),
            KEY audit_job (job_id, seq)
        ) ENGINE = InnoDB",
    );
    db.exec(
        "CREATE TRIGGER jobs_audit AFTER UPDATE ON jobs FOR EACH ROW
         BEGIN
           IF NOT (OLD.status <=> NEW.status) THEN
             INSERT INTO audit (job_id, old_status, new_status, owner, lease)
             VALUES (NEW.id, OLD.status, NEW.status, NEW.owner, NEW.lease);
           END IF;
         END",
    );
}

/// One recorded status change.
#[derive(Clone, Debug)]
pub struct Change {
    pub seq: u64,
    pub job_id: u64,
    pub old: Option<String>,
    pub new: Option<String>,
    pub owner: Option<String>,
    pub lease: u64,
    pub at: String,
}

impl Change {
    /// Status before the change (`NULL` for none).
    pub fn before(&self) -> &str {
        self.old.as_deref().unwrap_or("NULL")
    }
    /// Status after the change (`NULL` for none).
    pub fn after(&self) -> &str {
        self.new.as_deref().unwrap_or("NULL")
    }
    pub fn owner(&self) -> &str {
        self.owner.as_deref().unwrap_or("NULL")
    }
}

/// Every job's status changes, oldest first.
pub type Histories = BTreeMap<u64, Vec<Change>>;

pub fn audit(db: &TestDb) -> Vec<Change> {
    db.conn()
        .query_map(
            "SELECT seq, job_id, old_status, new_status, owner, lease, CAST(at AS CHAR) \
             FROM audit ORDER BY seq",
            |mut row: mysql::Row| {
                let col = "audit column";
                Change {
                    seq: row.take(0).expect(col),
                    job_id: row.take(1).expect(col),
                    old: row.take(2).expect(col),
                    new: row.take(3).expect(col),
                    owner: row.take(4).expect(col),
                    lease: row.take(5).expect(col),
                    at: row.take(6).expect(col),
                }
            },
        )
        .expect("read audit")
}

pub fn histories(db: &TestDb) -> Histories {
    let mut h = Histories::new();
    for c in audit(db) {
        h.entry(c.job_id).or_default().push(c);
    }
    h
}

pub fn render_history(job_id: u64, changes: &[Change]) -> String {
    let steps: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "#{} {} -> {} (owner {}, lease {}, at {})",
                c.seq,
                c.before(),
                c.after(),
                c.owner(),
                c.lease,
                c.at
            )
        })
        .collect();
    format!("job {job_id}: {}", steps.join("; "))
}

pub fn is_final_status(s: &str) -> bool {
    matches!(s, DONE | CANCELLED | FAILED)
}

/// The audit promises: every job went to `STARTED!` at most once, and no
/// row ever left a final status. Returns the histories for further checks.
pub fn assert_audit_sound(db: &TestDb) -> Histories {
    let h = histories(db);
    let mut twice = Vec::new();
    let mut left_final = Vec::new();
    for (id, changes) in &h {
        if changes.iter().filter(|c| c.after() == STARTED).count() > 1 {
            twice.push(render_history(*id, changes));
        }
        if changes.iter().any(|c| is_final_status(c.before())) {
            left_final.push(render_history(*id, changes));
        }
    }
    assert!(
        twice.is_empty(),
        "{} jobs went to STARTED! more than once:\n{}",
        twice.len(),
        twice.join("\n")
    );
    assert!(
        left_final.is_empty(),
        "{} rows changed after reaching a final status:\n{}",
        left_final.len(),
        left_final.join("\n")
    );
    h
}

/// Times each job went to `STARTED!`, by id.
pub fn starts(h: &Histories, id: u64) -> Vec<&Change> {
    h.get(&id)
        .map(|cs| cs.iter().filter(|c| c.after() == STARTED).collect())
        .unwrap_or_default()
}
