//! Jobs: one row per (input, pipeline, version), so a pipeline never runs twice on the same
//! input. A job found `running` when the store opens again was cut short by a crash: claiming
//! it again resumes it (pipelines write deterministic UIDs, so a re-run duplicates nothing).

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub key: String,
    /// The pipeline.
    pub kind: String,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    /// The pipeline's input and parameters (JSON).
    pub payload: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What [`Store::job_claim`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Run it: a new job, or one a crash left `running`, or one that failed before.
    Run(i64),
    /// Done already: do not run again.
    Done(i64),
}

impl Store {
    /// Claims the job `key` for running (creating it if new) and marks it `running`.
    pub fn job_claim(&self, key: &str, kind: &str, payload: &str) -> Result<Claim, StoreError> {
        let existing: Option<(i64, String)> = self
            .db
            .query_row("SELECT id, state FROM jobs WHERE key = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.sql())?;
        let id = match existing {
            Some((id, state)) if state == "done" => return Ok(Claim::Done(id)),
            Some((id, _)) => id,
            None => {
                self.db
                    .execute(
                        "INSERT INTO jobs (key, kind, state, payload, created_at, updated_at) VALUES \
                         (?1, ?2, 'queued', ?3, strftime('%Y-%m-%dT%H:%M:%fZ','now'), strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
                        params![key, kind, payload],
                    )
                    .map_err(self.sql())?;
                self.db.last_insert_rowid()
            }
        };
        self.job_set(id, "running", None, None)?;
        Ok(Claim::Run(id))
    }

    pub fn job_done(&self, id: i64, result: &str) -> Result<(), StoreError> {
        self.job_set(id, "done", Some(result), None)
    }

    pub fn job_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.job_set(id, "failed", None, Some(error))
    }

    fn job_set(&self, id: i64, state: &str, result: Option<&str>, error: Option<&str>) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE jobs SET state = ?2, result = ?3, error = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') \
                 WHERE id = ?1",
                params![id, state, result, error],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut s = self
            .db
            .prepare(
                "SELECT id, coalesce(key, ''), kind, state, payload, result, error, created_at, updated_at \
                 FROM jobs ORDER BY id DESC",
            )
            .map_err(self.sql())?;
        let rows = s
            .query_map([], |r| {
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
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_job_is_never_claimed_again_and_a_crashed_one_is() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let Claim::Run(id) = store.job_claim("series-1/threshold@1", "threshold", "{}")? else {
            anyhow::bail!("a new job must run");
        };
        // A crash now leaves it `running`: the next claim runs it again, same row.
        drop(store);
        let store = Store::open(dir.path())?;
        assert_eq!(store.job_claim("series-1/threshold@1", "threshold", "{}")?, Claim::Run(id));
        store.job_done(id, "{\"seg\":\"1.2\"}")?;
        assert_eq!(store.job_claim("series-1/threshold@1", "threshold", "{}")?, Claim::Done(id));
        let jobs = store.jobs()?;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, "done");
        assert_eq!(jobs[0].result.as_deref(), Some("{\"seg\":\"1.2\"}"));
        Ok(())
    }
}
