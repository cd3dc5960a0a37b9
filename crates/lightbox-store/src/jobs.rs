//! Jobs: one row per (input, pipeline, version), so a pipeline never runs twice on the same
//! input. A job is `queued`, then `running` under a lease held by the process that runs it, then
//! `done`, `failed`, `cancelled` or `waiting`. A job that found its input incomplete (a dynamic
//! series whose later phases have not arrived) is `waiting`, not failed: the rest arriving makes
//! a new input, and that input's job, once taken, marks the waiting ones of the same series
//! `superseded`. The runner renews its lease while it works; a job whose lease
//! lapsed (its process crashed or was killed) is claimed again by the next runner, and only the
//! lease holder can finish it, so a job completes once. Pipelines write deterministic UIDs, so a
//! re-run duplicates nothing.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// Now, in Unix seconds, as SQLite computes it (one clock for every process).
const NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";
const STAMP: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: i64,
    pub key: String,
    /// The pipeline.
    pub kind: String,
    /// `queued`, `running`, `done`, `failed`, `cancelled`, `waiting` (its input is incomplete:
    /// `stage` says what is missing) or `superseded` (a newer input of its series took over).
    pub state: String,
    /// The pipeline's input and parameters (JSON).
    pub payload: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The device class it runs on: `cpu` or `gpu`.
    pub device: String,
    /// What it is doing now (while running) or did last.
    pub stage: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// How many times it was started (more than 1 after a crash or a re-run).
    pub runs: i64,
    /// Seconds the last run took (or has taken so far).
    pub seconds: Option<f64>,
}

/// What [`Store::job_claim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Run it: a new job, one whose runner's lease lapsed, or one that failed before.
    Run(i64),
    /// Done already: do not run again.
    Done(i64),
    /// Another live runner holds it now.
    Busy(i64),
}

const COLUMNS: &str = "id, coalesce(key, ''), kind, state, payload, result, error, created_at, updated_at, device, stage, \
     started_at, finished_at, runs, \
     (coalesce(julianday(finished_at), julianday('now')) - julianday(started_at)) * 86400.0";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        key: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        payload: r.get(4)?,
        result: r.get(5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        device: r.get(9)?,
        stage: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        runs: r.get(13)?,
        seconds: r.get(14)?,
    })
}

impl Store {
    /// Adds the job `key` as `queued` unless it exists; returns its id and state. A job that
    /// exists keeps its state (a failed, cancelled or waiting one runs again only by
    /// [`Store::job_requeue`]).
    pub fn job_enqueue(&self, key: &str, kind: &str, device: &str, payload: &str) -> Result<(i64, String), StoreError> {
        self.db
            .execute(
                &format!(
                    "INSERT INTO jobs (key, kind, state, stage, payload, device, created_at, updated_at) \
                     VALUES (?1, ?2, 'queued', 'queued', ?3, ?4, {STAMP}, {STAMP}) ON CONFLICT (key) DO NOTHING"
                ),
                params![key, kind, payload, device],
            )
            .map_err(self.sql())?;
        self.db
            .query_row("SELECT id, state FROM jobs WHERE key = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql())
    }

    /// Takes job `id` for `owner` for `lease_secs`, if it is queued or its last runner's lease
    /// lapsed. Atomic: of several claimers, one wins.
    pub fn job_take(&self, id: i64, owner: &str, lease_secs: f64) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                &format!(
                    "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_until = {NOW} + ?3, runs = runs + 1, \
                     stage = 'started', started_at = {STAMP}, finished_at = NULL, error = NULL, updated_at = {STAMP} \
                     WHERE id = ?1 AND (state = 'queued' OR (state = 'running' AND coalesce(lease_until, 0) < {NOW}))"
                ),
                params![id, owner, lease_secs],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Enqueues and takes the job `key` in one go (what `lightbox run` does). A failed,
    /// cancelled or waiting job is queued again first.
    pub fn job_claim(
        &self,
        key: &str,
        kind: &str,
        device: &str,
        payload: &str,
        owner: &str,
        lease_secs: f64,
    ) -> Result<Claim, StoreError> {
        let (id, state) = self.job_enqueue(key, kind, device, payload)?;
        match state.as_str() {
            "done" => return Ok(Claim::Done(id)),
            "failed" | "cancelled" | "waiting" => {
                self.job_requeue(id)?;
            }
            _ => {}
        }
        Ok(if self.job_take(id, owner, lease_secs)? { Claim::Run(id) } else { Claim::Busy(id) })
    }

    /// Renews `owner`'s lease and records the stage. False when the job is no longer theirs
    /// (cancelled, or taken over after their lease lapsed): the runner must stop.
    pub fn job_heartbeat(
        &self,
        id: i64,
        owner: &str,
        lease_secs: f64,
        stage: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                &format!(
                    "UPDATE jobs SET lease_until = {NOW} + ?3, stage = coalesce(?4, stage), updated_at = {STAMP} \
                     WHERE id = ?1 AND state = 'running' AND lease_owner = ?2"
                ),
                params![id, owner, lease_secs, stage],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Finishes `owner`'s run. False when the job was not theirs any more (nothing changed).
    pub fn job_done(&self, id: i64, owner: &str, result: &str) -> Result<bool, StoreError> {
        self.job_finish(id, owner, "done", None, Some(result), None)
    }

    pub fn job_failed(&self, id: i64, owner: &str, error: &str) -> Result<bool, StoreError> {
        self.job_finish(id, owner, "failed", None, None, Some(error))
    }

    /// Ends `owner`'s run as `waiting`: its input is incomplete (`missing` says what is missing;
    /// it becomes the stage). Not a failure: the rest arriving is a new input, a new job. When
    /// that job was queued while this one ran, this one is `superseded` by it at once (nothing
    /// would supersede it later). False when the job was not theirs any more.
    pub fn job_waiting(&self, id: i64, owner: &str, missing: &str) -> Result<bool, StoreError> {
        let theirs = self.job_finish(id, owner, "waiting", Some(missing), None, None)?;
        if theirs && let Some(newer) = self.job_newer(id)? {
            self.jobs_supersede_waiting(newer)?;
        }
        Ok(theirs)
    }

    /// Ends `owner`'s run as `superseded`, `why` as its stage: its input changed after it was
    /// queued (the newer input is another job's). False when the job was not theirs any more.
    pub fn job_superseded(&self, id: i64, owner: &str, why: &str) -> Result<bool, StoreError> {
        self.job_finish(id, owner, "superseded", Some(why), None, None)
    }

    /// The jobs of the same pipeline, input and parameters as job `id`, whatever instances
    /// they saw: a key is `<input>/<pipeline and parameters…>/<digest of the instances>`, and
    /// these share all of it but the last part. The SQL condition, with its two parameters.
    fn same_input(&self, id: i64) -> Result<Option<(String, String, i64)>, StoreError> {
        let found: Option<(String, String)> = self
            .db
            .query_row("SELECT kind, coalesce(key, '') FROM jobs WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.sql())?;
        Ok(found.and_then(|(kind, key)| {
            let (input, _) = key.rsplit_once('/')?;
            let prefix = format!("{input}/");
            let chars = i64::try_from(prefix.chars().count()).ok()?;
            Some((kind, prefix, chars))
        }))
    }

    /// The newest job after `id` of the same pipeline, input and parameters (see
    /// [`Store::jobs_supersede_waiting`]).
    pub fn job_newer(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let Some((kind, prefix, chars)) = self.same_input(id)? else { return Ok(None) };
        self.db
            .query_row(
                "SELECT max(id) FROM jobs WHERE id > ?1 AND kind = ?2 AND substr(key, 1, ?4) = ?3 \
                 AND instr(substr(key, ?4 + 1), '/') = 0",
                params![id, kind, prefix, chars],
                |r| r.get(0),
            )
            .map_err(self.sql())
    }

    /// Marks `superseded` by job `by` the `waiting` jobs before it of the same pipeline, input
    /// (series; for a study-wide pipeline, study) and parameters (model…): `by` has the newer
    /// input, the same series or study with more instances. Returns their ids.
    pub fn jobs_supersede_waiting(&self, by: i64) -> Result<Vec<i64>, StoreError> {
        let Some((kind, prefix, chars)) = self.same_input(by)? else { return Ok(Vec::new()) };
        let mut s = self
            .db
            .prepare(&format!(
                "UPDATE jobs SET state = 'superseded', stage = 'superseded by job ' || ?1, updated_at = {STAMP} \
                 WHERE state = 'waiting' AND id < ?1 AND kind = ?2 AND substr(key, 1, ?4) = ?3 \
                 AND instr(substr(key, ?4 + 1), '/') = 0 RETURNING id"
            ))
            .map_err(self.sql())?;
        let ids = s.query_map(params![by, kind, prefix, chars], |r| r.get(0)).map_err(self.sql())?;
        ids.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Fails the jobs that have waited more than `limit_secs` for the rest of their input (it
    /// was not sent, or what is there was not recognised): `failed`, the error naming what is
    /// still missing, so that the failure is seen. Returns (id, error).
    pub fn jobs_expire_waiting(&self, limit_secs: f64) -> Result<Vec<(i64, String)>, StoreError> {
        let after =
            if limit_secs >= 3600.0 { format!("{:.1} h", limit_secs / 3600.0) } else { format!("{limit_secs:.0} s") };
        let mut s = self
            .db
            .prepare(&format!(
                "UPDATE jobs SET state = 'failed', error = 'still incomplete after ' || ?2 || ': ' || stage, \
                 stage = 'failed', updated_at = {STAMP} \
                 WHERE state = 'waiting' AND julianday(finished_at) < julianday('now') - ?1 / 86400.0 \
                 RETURNING id, error"
            ))
            .map_err(self.sql())?;
        let rows = s.query_map(params![limit_secs, after], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Ends `owner`'s run in `state`; its stage says `stage`, or else the state.
    fn job_finish(
        &self,
        id: i64,
        owner: &str,
        state: &str,
        stage: Option<&str>,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                &format!(
                    "UPDATE jobs SET state = ?3, result = ?5, error = ?6, lease_owner = NULL, lease_until = NULL, \
                     stage = coalesce(?4, ?3), finished_at = {STAMP}, updated_at = {STAMP} \
                     WHERE id = ?1 AND state = 'running' AND lease_owner = ?2"
                ),
                params![id, owner, state, stage, result, error],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Replaces a finished job's result (e.g. after sign-off).
    pub fn job_set_result(&self, id: i64, result: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                &format!("UPDATE jobs SET result = ?2, updated_at = {STAMP} WHERE id = ?1 AND state = 'done'"),
                params![id, result],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Cancels a queued, running or waiting job (a person decides the rest of a waiting one's
    /// series will not come). A running one stops at its next heartbeat and cannot finish.
    /// False when it had ended already.
    pub fn job_cancel(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                &format!(
                    "UPDATE jobs SET state = 'cancelled', stage = 'cancelled', lease_owner = NULL, lease_until = NULL, \
                     finished_at = {STAMP}, updated_at = {STAMP} WHERE id = ?1 AND state IN ('queued', 'running', 'waiting')"
                ),
                [id],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Queues a failed, cancelled or waiting job again (a re-run). False when it is queued,
    /// running, done or superseded.
    pub fn job_requeue(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute(
                &format!(
                    "UPDATE jobs SET state = 'queued', stage = 'queued', error = NULL, updated_at = {STAMP} \
                     WHERE id = ?1 AND state IN ('failed', 'cancelled', 'waiting')"
                ),
                [id],
            )
            .map_err(self.sql())?;
        Ok(n == 1)
    }

    /// Jobs a runner may take now: queued ones, and running ones whose lease lapsed, oldest first.
    pub fn jobs_runnable(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs_where(&format!(
            "state = 'queued' OR (state = 'running' AND coalesce(lease_until, 0) < {NOW}) ORDER BY id"
        ))
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        self.db
            .query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], job_row)
            .optional()
            .map_err(self.sql())
    }

    /// The jobs in `state`, oldest first.
    pub fn jobs_in_state(&self, state: &str) -> Result<Vec<Job>, StoreError> {
        let mut s =
            self.db.prepare(&format!("SELECT {COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id")).map_err(self.sql())?;
        let rows = s.query_map([state], job_row).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// How many jobs are in each state (states with none are absent).
    pub fn job_counts(&self) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        let mut s = self.db.prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state").map_err(self.sql())?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs_where("1 ORDER BY id DESC")
    }

    fn jobs_where(&self, condition: &str) -> Result<Vec<Job>, StoreError> {
        let mut s = self.db.prepare(&format!("SELECT {COLUMNS} FROM jobs WHERE {condition}")).map_err(self.sql())?;
        let rows = s.query_map([], job_row).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

impl Store {
    /// A value the engine keeps between runs (e.g. how far it has dispatched).
    pub fn engine_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.db
            .query_row("SELECT value FROM engine_state WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.sql())
    }

    pub fn set_engine_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO engine_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                params![key, value],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// The arrival number of the newest instance (0 for an empty store). Instances are
    /// numbered 1, 2, … as their index rows are written; writers take turns, so an instance
    /// committed later always has a higher number than any a reader could see before. Unlike a
    /// clock, this cannot step back or repeat, as long as no index row is ever deleted (none
    /// is today; should that change, the numbers must come from a counter that never goes
    /// down, or a deleted newest row's number would be handed out again).
    pub fn last_arrival(&self) -> Result<i64, StoreError> {
        self.db.query_row("SELECT coalesce(max(arrival), 0) FROM instances", [], |r| r.get(0)).map_err(self.sql())
    }

    /// Series that received instances after arrival number `after` (by any route: push,
    /// retrieval, import), with the newest arrival of each, oldest first.
    pub fn series_arrived_after(&self, after: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let mut s = self
            .db
            .prepare_cached(
                // `+series_uid`: look the new rows up by their number, not every row by series.
                "SELECT series_uid, max(arrival) FROM instances WHERE arrival > ?1 GROUP BY +series_uid ORDER BY 2",
            )
            .map_err(self.sql())?;
        let rows = s.query_map([after], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_job_is_never_claimed_again_and_a_crashed_one_is_after_its_lease() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let claim =
            |owner: &str, lease: f64| store.job_claim("series-1/threshold@1", "threshold", "cpu", "{}", owner, lease);
        let Claim::Run(id) = claim("a", 0.2)? else {
            anyhow::bail!("a new job must run");
        };
        // While a's lease holds, b cannot take it.
        assert_eq!(claim("b", 0.2)?, Claim::Busy(id));
        assert!(store.job_heartbeat(id, "a", 0.2, Some("segmenting"))?);
        assert_eq!(store.job(id)?.map(|j| j.stage), Some("segmenting".into()));
        // a dies: its lease lapses and b takes the same row over.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(store.jobs_runnable()?.len(), 1);
        assert_eq!(claim("b", 30.0)?, Claim::Run(id));
        // a, come back to life, can neither renew nor finish it.
        assert!(!store.job_heartbeat(id, "a", 30.0, None)?);
        assert!(!store.job_done(id, "a", "{\"seg\":\"a\"}")?);
        assert!(store.job_done(id, "b", "{\"seg\":\"1.2\"}")?);
        assert_eq!(claim("c", 30.0)?, Claim::Done(id));
        let jobs = store.jobs()?;
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].state.as_str(), jobs[0].runs), ("done", 2));
        assert_eq!(jobs[0].result.as_deref(), Some("{\"seg\":\"1.2\"}"));
        assert!(jobs[0].seconds.is_some_and(|s| s >= 0.0));
        assert!(store.jobs_runnable()?.is_empty());
        Ok(())
    }

    #[test]
    fn cancel_stops_a_running_job_and_rerun_queues_it_again() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let (id, state) = store.job_enqueue("k", "threshold", "gpu", "{}")?;
        assert_eq!(state, "queued");
        assert_eq!(store.job_enqueue("k", "threshold", "gpu", "{}")?, (id, "queued".into()));
        assert!(store.job_take(id, "a", 30.0)?);
        assert!(!store.job_take(id, "b", 30.0)?, "a live lease is exclusive");
        assert!(store.job_cancel(id)?);
        assert!(!store.job_heartbeat(id, "a", 30.0, None)?, "the runner learns it was cancelled");
        assert!(!store.job_done(id, "a", "{}")?);
        assert_eq!(store.job(id)?.map(|j| j.state), Some("cancelled".into()));
        assert!(!store.job_cancel(id)?);
        assert!(store.job_requeue(id)?);
        assert_eq!(store.jobs_runnable()?.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
        assert!(store.job_take(id, "b", 30.0)?);
        assert!(store.job_failed(id, "b", "out of memory")?);
        let job = store.job(id)?.ok_or_else(|| anyhow::anyhow!("gone"))?;
        assert_eq!(
            (job.state.as_str(), job.error.as_deref(), job.device.as_str()),
            ("failed", Some("out of memory"), "gpu")
        );
        Ok(())
    }

    #[test]
    fn an_incomplete_input_waits_until_a_newer_one_of_its_series_supersedes_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        // Keys: input / pipeline and parameters / digest of the instances seen.
        let (first, _) = store.job_enqueue("s1/dce@2/model=/four-phases", "breast-dce", "cpu", "{}")?;
        let (other, _) = store.job_enqueue("s2/dce@2/model=/three-phases", "breast-dce", "cpu", "{}")?;
        let (model, _) = store.job_enqueue("s1/dce@2/model=m/four-phases", "breast-dce", "cpu", "{}")?;
        let (threshold, _) = store.job_enqueue("s1/threshold@1/four-phases", "threshold-volume", "cpu", "{}")?;
        for id in [first, other, model, threshold] {
            assert!(store.job_take(id, "a", 30.0)?);
            assert!(!store.job_waiting(id, "b", "not theirs")?, "only the lease holder ends a run");
            assert!(store.job_waiting(id, "a", "4 of its 7 phases have arrived")?);
        }
        let job = store.job(first)?.ok_or_else(|| anyhow::anyhow!("gone"))?;
        assert_eq!(
            (job.state.as_str(), job.stage.as_str(), job.error.as_deref()),
            ("waiting", "4 of its 7 phases have arrived", None)
        );
        assert!(store.jobs_runnable()?.is_empty(), "a waiting job is not run again by itself");
        // The rest arrives: a new input of series s1, a new job. It supersedes the waiting job
        // of the same pipeline, series and parameters, and no other (not the one with another
        // model, not another series', not another pipeline's).
        let (newer, _) = store.job_enqueue("s1/dce@2/model=/seven-phases", "breast-dce", "cpu", "{}")?;
        assert_eq!(store.job_newer(first)?, Some(newer));
        assert_eq!(store.job_newer(newer)?, None);
        assert_eq!(store.jobs_supersede_waiting(newer)?, vec![first]);
        let states = |id| -> anyhow::Result<(String, String)> {
            let j = store.job(id)?.ok_or_else(|| anyhow::anyhow!("gone"))?;
            Ok((j.state, j.stage))
        };
        assert_eq!(states(first)?, ("superseded".into(), format!("superseded by job {newer}")));
        for id in [other, model, threshold] {
            assert_eq!(states(id)?.0, "waiting");
        }
        assert_eq!(states(newer)?.0, "queued");
        assert!(!store.job_requeue(first)?, "a superseded job is not run again");
        assert!(!store.job_cancel(first)?);
        // A waiting job may be re-run by hand, or cancelled when the rest will not come.
        assert!(store.job_requeue(other)?);
        assert!(store.job_cancel(threshold)?);
        assert_eq!(states(threshold)?.0, "cancelled");
        assert_eq!(store.jobs_in_state("waiting")?.iter().map(|j| j.id).collect::<Vec<_>>(), vec![model]);
        let counts = store.job_counts()?;
        assert_eq!((counts.get("waiting"), counts.get("cancelled"), counts.get("running")), (Some(&1), Some(&1), None));
        assert_eq!(counts.values().sum::<usize>(), store.jobs()?.len());

        // A newer job queued while this one ran: it does not stay waiting, nothing would
        // supersede it later.
        let (early, _) = store.job_enqueue("st/bpmri@1/model=p/t2-only", "prostate-bpmri", "gpu", "{}")?;
        assert!(store.job_take(early, "a", 30.0)?);
        let (whole, _) = store.job_enqueue("st/bpmri@1/model=p/t2-and-adc", "prostate-bpmri", "gpu", "{}")?;
        assert!(store.job_waiting(early, "a", "no ADC map in the study")?);
        assert_eq!(states(early)?, ("superseded".into(), format!("superseded by job {whole}")));
        // Its input changed while it was queued: superseded, not failed.
        assert!(store.job_take(whole, "a", 30.0)?);
        assert!(store.job_superseded(whole, "a", "its study changed after it was queued")?);
        assert_eq!(states(whole)?, ("superseded".into(), "its study changed after it was queued".into()));

        // Waiting too long (the rest was never sent, or not recognised): failed, saying why.
        assert!(store.jobs_expire_waiting(3600.0)?.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let expired = store.jobs_expire_waiting(0.01)?;
        assert_eq!(expired, vec![(model, "still incomplete after 0 s: 4 of its 7 phases have arrived".to_owned())]);
        assert_eq!(states(model)?.0, "failed");
        Ok(())
    }
}
