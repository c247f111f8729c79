//! The scheduler: enqueues the jobs of the `schedules` table, one per fire
//! time across all replicas.
//!
//! Every replica runs one. A look is one plain read (the server's clocks,
//! how many rows need a look, the next fire time); only when a row is due
//! (within [`LOOKAHEAD`]), new or edited does it open a transaction, lock
//! those rows (`FOR UPDATE SKIP LOCKED`, so two replicas never fire the same
//! row at once), and for each, in that transaction, insert its jobs and move
//! `next_run_at` on. A replica that dies mid-fire rolls both back and
//! another fires; each fired job carries a `unique_key` of the schedule's
//! name and the fire time (`nightly@2026-12-01T00:00:00Z`), so even a
//! second fire of one time could not enqueue it twice while it waits.
//!
//! Between looks it sleeps until the next fire time it knows of, less the
//! lookahead, and at most `SCHEDULER_INTERVAL` (default 10s: how soon a new
//! or edited row is seen). Jobs of fire times within the lookahead are
//! enqueued with `run_at` at their fire time, so they are claimed at it, not
//! at the moment of the look. After a downtime in which more than one fire
//! time passed, the schedule fires once (the catch-up), counts the others
//! as skipped, and goes on from the next fire time after now.
//!
//! Cron expressions are evaluated in UTC (by the `croner` crate: 5 fields,
//! or 6 with seconds first); the columns hold the server's time, like every
//! other timestamp of the service. A row that cannot fire (an expression
//! that does not parse or never matches, a kind or queue that is not a
//! name, a name too long for the key) is disabled with the reason in
//! `error`; a row whose jobs no live replica would run keeps firing, and
//! says so in `error`.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use crossbeam_channel::Receiver;

use crate::config::{Config, is_name};
use crate::db::error::DbResult;
use crate::db::queues::worker_served;
use crate::db::schedules::{
    Schedule, ScheduleClock, ScheduleUpdate, schedule_clock, schedule_enqueue, schedule_update,
    schedules_due_locked,
};
use crate::db::{Connection, Db};
use crate::metrics::Counter;
use crate::runtime::tick::{Pace, TickLoop, Trigger};

/// How far ahead of its fire time a job is enqueued (with `run_at` at the
/// fire time).
pub const LOOKAHEAD: Duration = Duration::from_secs(1);

/// A fire time counts as missed (a downtime) once the fire time after it is
/// this overdue too; a look a little late still fires every time.
pub const LATE_AFTER: Duration = Duration::from_secs(1);

/// At most this many fires of one schedule per look (a schedule every
/// second, looked at a little late, fires the one or two due).
const MAX_FIRES_PER_LOOK: usize = 10;

/// The longest name whose keys (`name@YYYY-MM-DDTHH:MM:SSZ`) fit in
/// `unique_key` (255 characters).
pub const MAX_NAME_CHARS: usize = 255 - "@2026-12-01T00:00:00Z".len();

/// What the scheduler reads of the configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How often it looks for new or edited rows (`SCHEDULER_INTERVAL`).
    pub interval: Duration,
    /// A replica silent this long no longer counts as running a kind
    /// (`WORKER_DEAD_AFTER`).
    pub dead_after: Duration,
}

impl From<&Config> for SchedulerConfig {
    fn from(c: &Config) -> Self {
        SchedulerConfig {
            interval: c.scheduler_interval,
            dead_after: c.worker_dead_after,
        }
    }
}

/// The cron dialect of `schedules.cron`: 5 fields, or 6 with seconds first;
/// no year field.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

/// One job a look enqueues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Its `run_at` (server time); `None`: now (a catch-up).
    pub run_at: Option<NaiveDateTime>,
    /// Its `unique_key`.
    pub key: String,
}

/// What a look does to one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It cannot fire: disabled, with this reason.
    Disable(String),
    /// Nothing is due: (re)computes its next fire time.
    Wait {
        /// The next fire time (server time).
        next: NaiveDateTime,
    },
    /// Fires.
    Fire {
        /// The jobs to enqueue.
        fires: Vec<Fire>,
        /// Fire times passed over (a downtime).
        skipped: u64,
        /// The next fire time after them (server time); `None`: never.
        next: Option<NaiveDateTime>,
    },
}

/// The server's clocks: converts between its time and UTC.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    now: NaiveDateTime,
    utc: DateTime<Utc>,
    offset: TimeDelta,
}

impl Clocks {
    fn new(clock: &ScheduleClock) -> Clocks {
        Clocks {
            now: clock.now,
            utc: clock.utc.and_utc(),
            offset: clock.now - clock.utc,
        }
    }

    fn to_utc(self, server: NaiveDateTime) -> DateTime<Utc> {
        (server - self.offset).and_utc()
    }

    fn to_server(self, utc: DateTime<Utc>) -> NaiveDateTime {
        utc.naive_utc() + self.offset
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The key of the job of `name`'s fire at `at`.
pub fn fire_key(name: &str, at: DateTime<Utc>) -> String {
    format!("{name}@{}", at.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// What a look at `s` does, at the server time `clock` read.
pub fn plan(s: &Schedule, clock: &ScheduleClock) -> Plan {
    let clocks = Clocks::new(clock);
    if !is_name(&s.kind) {
        return Plan::Disable(format!(
            "kind {:?} is not a kind name (at most 64 letters, digits and . _ - : @)",
            s.kind
        ));
    }
    if !is_name(&s.queue) {
        return Plan::Disable(format!(
            "queue {:?} is not a queue name (at most 64 letters, digits and . _ - : @)",
            s.queue
        ));
    }
    if s.name.chars().count() > MAX_NAME_CHARS {
        return Plan::Disable(format!(
            "the name is longer than {MAX_NAME_CHARS} characters: its jobs' unique_key \
             (name@fire time) would not fit"
        ));
    }
    let cron = match parse_cron(&s.cron) {
        Ok(c) => c,
        Err(e) => return Plan::Disable(format!("cron {:?} does not parse: {e}", s.cron)),
    };
    let after = |t: DateTime<Utc>| cron.find_next_occurrence(&t, false).ok();
    let never = || Plan::Disable(format!("cron {:?} never fires (again)", s.cron));
    let edited = s.cron_seen.as_ref().is_some_and(|seen| *seen != s.cron);
    let due = match s.next_run_at {
        Some(due) if !edited => due,
        _ => {
            return match after(clocks.utc) {
                Some(next) => Plan::Wait {
                    next: clocks.to_server(next),
                },
                None => never(),
            };
        }
    };
    if due > clocks.now + delta(LOOKAHEAD) {
        return Plan::Wait { next: due };
    }
    let late_limit = clocks.utc - delta(LATE_AFTER);
    let ahead_limit = clocks.utc + delta(LOOKAHEAD);
    let mut fires = Vec::new();
    let mut at = clocks.to_utc(due);
    loop {
        let following = after(at);
        if let Some(f) = following.filter(|f| *f <= late_limit) {
            // A downtime: `at`, `f` and maybe more passed unfired. One
            // catch-up fire now stands for them all.
            let mut last = f;
            let mut missed: u64 = 2;
            while let Some(n) = after(last).filter(|n| *n <= clocks.utc) {
                last = n;
                missed += 1;
                if missed >= 1_000_000 {
                    break;
                }
            }
            fires.push(Fire {
                run_at: None,
                key: fire_key(&s.name, last),
            });
            return Plan::Fire {
                fires,
                skipped: missed - 1,
                next: after(clocks.utc.max(last)).map(|n| clocks.to_server(n)),
            };
        }
        fires.push(Fire {
            run_at: Some(clocks.to_server(at)),
            key: fire_key(&s.name, at),
        });
        match following {
            Some(f) if f <= ahead_limit && fires.len() < MAX_FIRES_PER_LOOK => at = f,
            other => {
                return Plan::Fire {
                    fires,
                    skipped: 0,
                    next: other.map(|n| clocks.to_server(n)),
                };
            }
        }
    }
}

/// The scheduler duty.
pub struct Scheduler {
    cfg: SchedulerConfig,
    db: Db,
}

/// What one look did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Looked {
    /// Jobs enqueued.
    pub fired: u64,
    /// Rows disabled.
    pub disabled: u64,
    /// Rows that needed a look but another replica held them.
    pub held_elsewhere: bool,
    /// When to look again.
    pub again_in: Option<Duration>,
}

impl Scheduler {
    /// A scheduler on `db`.
    pub fn new(cfg: SchedulerConfig, db: Db) -> Scheduler {
        Scheduler { cfg, db }
    }

    fn lookahead_us() -> i64 {
        LOOKAHEAD.as_micros() as i64
    }

    /// One look: reads the clocks, and fires what is due.
    pub fn run_once(&self) -> DbResult<Looked> {
        let mut conn = self.db.conn()?;
        let clock = schedule_clock(&mut conn, Self::lookahead_us())?;
        if clock.attention == 0 {
            return Ok(Looked {
                again_in: until_next(&clock),
                ..Looked::default()
            });
        }
        let mut looked = conn.transaction(|c| self.fire_due(c))?;
        // Read the clocks again at once: the rows just written moved on.
        looked.again_in = Some(if looked.held_elsewhere {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        });
        Ok(looked)
    }

    /// Locks the rows that need a look and acts on each (in the caller's
    /// transaction).
    fn fire_due(&self, c: &mut Connection) -> DbResult<Looked> {
        let rows = schedules_due_locked(c, Self::lookahead_us())?;
        let mut looked = Looked {
            held_elsewhere: rows.is_empty(),
            ..Looked::default()
        };
        if rows.is_empty() {
            return Ok(looked);
        }
        // The clocks again, now that the rows are ours.
        let clock = schedule_clock(c, Self::lookahead_us())?;
        let served = worker_served(c, self.cfg.dead_after)?;
        let runs = |s: &Schedule| {
            let has =
                |list: &str, name: &str| list.split(',').any(|x| x.eq_ignore_ascii_case(name));
            served
                .iter()
                .any(|(q, k)| has(q, &s.queue) && has(k, &s.kind))
        };
        for s in rows {
            let update = match plan(&s, &clock) {
                Plan::Disable(reason) => {
                    log::warn!("schedule {:?} disabled: {reason}", s.name);
                    self.db.metrics().add(Counter::SchedulesDisabled, 1);
                    looked.disabled += 1;
                    ScheduleUpdate {
                        next_run_at: None,
                        last_job_id: None,
                        error: Some(reason),
                        enabled: false,
                    }
                }
                Plan::Wait { next } => ScheduleUpdate {
                    next_run_at: Some(next),
                    last_job_id: None,
                    error: None,
                    enabled: true,
                },
                Plan::Fire {
                    fires,
                    skipped,
                    next,
                } => {
                    let mut last = None;
                    for fire in &fires {
                        if let Some(id) = schedule_enqueue(c, &s, fire.run_at, &fire.key)? {
                            last = Some(id);
                            looked.fired += 1;
                            self.db.metrics().add(Counter::SchedulesFired, 1);
                        }
                    }
                    if skipped > 0 {
                        log::info!(
                            "schedule {:?}: {skipped} fire times passed while no replica \
                             fired them; fired once to catch up",
                            s.name
                        );
                        self.db.metrics().add(Counter::SchedulesSkipped, skipped);
                    }
                    let error = match next {
                        None => Some(format!("cron {:?} never fires again", s.cron)),
                        Some(_) if !runs(&s) => Some(format!(
                            "no live replica serves queue {} and runs kind {}: its jobs wait",
                            s.queue, s.kind
                        )),
                        Some(_) => None,
                    };
                    ScheduleUpdate {
                        next_run_at: next,
                        last_job_id: last,
                        enabled: next.is_some(),
                        error,
                    }
                }
            };
            schedule_update(c, &s.name, &s.cron, &update)?;
        }
        if looked.fired > 0 {
            log::debug!("scheduler enqueued {} jobs", looked.fired);
        }
        Ok(looked)
    }

    /// Looks on every tick, and at each fire time it knows of, until `stop`
    /// closes.
    pub fn run(self, stop: Receiver<()>) {
        let ticks = TickLoop {
            what: "firing schedules",
            interval: self.cfg.interval,
            stop: &stop,
            health: self.db.health(),
        };
        let wake = crossbeam_channel::never();
        ticks.run_paced(&wake, |_: Trigger| {
            let looked = self.run_once()?;
            Ok(Pace {
                eager: false,
                again_in: looked.again_in,
            })
        });
    }
}

/// How long until the next fire time less the lookahead (`None`: no
/// schedule is enabled).
fn until_next(clock: &ScheduleClock) -> Option<Duration> {
    let next = clock.next_due?;
    let wait = next - clock.now - delta(LOOKAHEAD);
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 1)
            .unwrap()
            .and_hms_opt(h, m, s)
            .unwrap()
    }

    /// The server two hours ahead of UTC.
    fn clock(now: NaiveDateTime) -> ScheduleClock {
        ScheduleClock {
            now,
            utc: now - TimeDelta::hours(2),
            attention: 1,
            next_due: None,
        }
    }

    fn schedule(cron: &str, next: Option<NaiveDateTime>) -> Schedule {
        Schedule {
            name: "nightly".into(),
            cron: cron.into(),
            kind: "sleep".into(),
            queue: "default".into(),
            payload: None,
            sleep: Some(0),
            priority: 0,
            next_run_at: next,
            cron_seen: next.map(|_| cron.to_string()),
            last_job_id: None,
            error: None,
        }
    }

    #[test]
    fn a_new_row_waits_for_its_first_fire_time_in_utc() {
        // 14:00:30 on the server is 12:00:30 UTC: "0 13 * * *" (13:00 UTC)
        // is 15:00 on the server.
        let p = plan(&schedule("0 13 * * *", None), &clock(at(14, 0, 30)));
        assert_eq!(p, Plan::Wait { next: at(15, 0, 0) });
    }

    #[test]
    fn a_due_row_fires_its_time_and_those_within_the_lookahead() {
        let p = plan(
            &schedule("*/1 * * * * *", Some(at(14, 0, 30))),
            &clock(at(14, 0, 30)),
        );
        let Plan::Fire {
            fires,
            skipped,
            next,
        } = p
        else {
            panic!("{p:?}");
        };
        assert_eq!(skipped, 0);
        assert_eq!(
            fires,
            [
                Fire {
                    run_at: Some(at(14, 0, 30)),
                    key: "nightly@2026-12-01T12:00:30Z".into()
                },
                Fire {
                    run_at: Some(at(14, 0, 31)),
                    key: "nightly@2026-12-01T12:00:31Z".into()
                },
            ]
        );
        assert_eq!(next, Some(at(14, 0, 32)));
    }

    #[test]
    fn a_little_late_still_fires_every_time_a_downtime_fires_once() {
        // Half a second late: the time fires, with its own run_at.
        let mut c = clock(at(14, 0, 30));
        c.now += TimeDelta::milliseconds(500);
        c.utc += TimeDelta::milliseconds(500);
        let p = plan(&schedule("*/1 * * * * *", Some(at(14, 0, 30))), &c);
        assert!(
            matches!(&p, Plan::Fire { fires, skipped: 0, .. } if fires[0].run_at == Some(at(14, 0, 30))),
            "{p:?}"
        );
        // Five periods down: one catch-up fire now, four skipped.
        let p = plan(
            &schedule("*/1 * * * * *", Some(at(14, 0, 30))),
            &clock(at(14, 0, 34)),
        );
        assert_eq!(
            p,
            Plan::Fire {
                fires: vec![Fire {
                    run_at: None,
                    key: "nightly@2026-12-01T12:00:34Z".into()
                }],
                skipped: 4,
                next: Some(at(14, 0, 35)),
            }
        );
    }

    #[test]
    fn an_edited_expression_starts_over_from_now() {
        let mut s = schedule("0 0 1 1 *", Some(at(14, 0, 30)));
        s.cron = "*/5 * * * *".into();
        assert_eq!(
            plan(&s, &clock(at(14, 1, 0))),
            Plan::Wait { next: at(14, 5, 0) }
        );
    }

    #[test]
    fn rows_that_cannot_fire_are_disabled_with_the_reason() {
        let now = clock(at(14, 0, 0));
        let reason = |s: &Schedule| match plan(s, &now) {
            Plan::Disable(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(reason(&schedule("every day", None)).contains("does not parse"));
        assert!(reason(&schedule("61 * * * *", None)).contains("does not parse"));
        assert!(reason(&schedule("0 0 31 2 *", None)).contains("never fires"));
        let mut s = schedule("* * * * *", None);
        s.kind = "no such kind!".into();
        assert!(reason(&s).contains("not a kind name"));
        let mut s = schedule("* * * * *", None);
        s.name = "n".repeat(MAX_NAME_CHARS + 1);
        assert!(reason(&s).contains("longer than"));
    }
}
