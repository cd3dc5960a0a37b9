//! The outbox: DICOM objects (AI results, signed reports) waiting to reach a PACS.
//!
//! Each row is keyed by SOP Instance UID and destination, so the same object can never be queued
//! twice for one PACS (and can be for two), and its
//! file lives in the content-addressed object folder, so it survives restarts. A row moves
//! `pending → sending → sent`; a send that fails for a reason worth retrying (network, 5xx) goes
//! back to `pending`, one the PACS refused (4xx) to `failed` until a person re-queues it. A row
//! found in `sending` after a crash is re-sent only after the sender has checked that the PACS
//! does not have the instance already (see `lightbox-pacs`).

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, hex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Sending,
    Sent,
    Failed,
    /// Taken out of the queue by a person; never sent unless re-queued.
    Cancelled,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Pending,
        }
    }
}

/// One outbox row.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub sop_uid: String,
    pub study_uid: String,
    /// The stored copy of the object to send.
    pub file: PathBuf,
    /// Destination name (a configured PACS).
    pub destination: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
}

/// What [`Store::outbox_enqueue`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued(i64),
    /// An object with this SOP Instance UID is queued (or was sent) for this destination
    /// already; nothing changed.
    AlreadyQueued(i64),
}

impl Store {
    /// Queues a DICOM file for `destination`. The file is copied into the store first, so the
    /// caller may delete its own copy as soon as this returns.
    pub fn outbox_enqueue(&mut self, path: &Path, destination: &str) -> Result<Enqueued, StoreError> {
        let record = lightbox_dicom::read_instance(path)?;
        let existing: Option<i64> = self
            .db
            .query_row(
                "SELECT id FROM outbox WHERE sop_uid = ?1 AND destination = ?2",
                params![record.sop_instance_uid, destination],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        if let Some(id) = existing {
            return Ok(Enqueued::AlreadyQueued(id));
        }
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
        let object = hex(&Sha256::digest(&bytes));
        self.write_object(&object, &bytes)?;
        self.db
            .execute(
                "INSERT INTO outbox (sop_uid, object, destination, state, created_at, study_uid) \
                 VALUES (?1, ?2, ?3, 'pending', strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?4)",
                params![record.sop_instance_uid, object, destination, record.study_uid.as_str()],
            )
            .map_err(self.sql())?;
        Ok(Enqueued::Queued(self.db.last_insert_rowid()))
    }

    /// Outbox rows, oldest first; all of them or those in `state`.
    pub fn outbox(&self, state: Option<OutboxState>) -> Result<Vec<OutboxItem>, StoreError> {
        let mut s = self
            .db
            .prepare(
                "SELECT id, sop_uid, object, destination, state, attempts, last_error, created_at, sent_at, study_uid \
                 FROM outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY id",
            )
            .map_err(self.sql())?;
        let rows = s
            .query_map([state.map(OutboxState::as_str)], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    sop_uid: r.get(1)?,
                    file: self.object_path(&r.get::<_, String>(2)?),
                    destination: r.get(3)?,
                    state: OutboxState::parse(&r.get::<_, String>(4)?),
                    attempts: r.get(5)?,
                    last_error: r.get(6)?,
                    created_at: r.get(7)?,
                    sent_at: r.get(8)?,
                    study_uid: r.get(9)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Rows a drain should work on: `pending`, and `sending` ones a crash left behind.
    pub fn outbox_due(&self) -> Result<Vec<OutboxItem>, StoreError> {
        Ok(self
            .outbox(None)?
            .into_iter()
            .filter(|i| matches!(i.state, OutboxState::Pending | OutboxState::Sending))
            .collect())
    }

    /// Marks a row `sending` and counts the attempt; committed before any byte goes out.
    pub fn outbox_begin(&self, id: i64) -> Result<(), StoreError> {
        self.set_state(id, "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ?1", None)
    }

    /// The PACS confirmed the instance.
    pub fn outbox_mark_sent(&self, id: i64) -> Result<(), StoreError> {
        self.set_state(
            id,
            "UPDATE outbox SET state = 'sent', last_error = NULL, sent_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
            None,
        )
    }

    /// A failure worth retrying later (network down, PACS busy).
    pub fn outbox_mark_retry(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.set_state(id, "UPDATE outbox SET state = 'pending', last_error = ?2 WHERE id = ?1", Some(error))
    }

    /// The PACS refused the object; it stays here until a person re-queues it.
    pub fn outbox_mark_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.set_state(id, "UPDATE outbox SET state = 'failed', last_error = ?2 WHERE id = ?1", Some(error))
    }

    /// Puts a `failed` or `cancelled` row back in the queue. False when the row was in another
    /// state (pending, being sent or sent: nothing to do).
    pub fn outbox_requeue(&self, id: i64) -> Result<bool, StoreError> {
        self.move_row(id, "UPDATE outbox SET state = 'pending' WHERE id = ?1 AND state IN ('failed', 'cancelled')")
    }

    /// Takes a `pending` or `failed` row out of the queue (one being sent right now cannot be).
    /// False when the row was in another state.
    pub fn outbox_cancel(&self, id: i64) -> Result<bool, StoreError> {
        self.move_row(id, "UPDATE outbox SET state = 'cancelled' WHERE id = ?1 AND state IN ('pending', 'failed')")
    }

    /// Runs `sql`, a guarded state change of row `id`: whether it applied; an error when there
    /// is no such row.
    fn move_row(&self, id: i64, sql: &str) -> Result<bool, StoreError> {
        let changed = self.db.execute(sql, [id]).map_err(self.sql())?;
        if changed == 0 && self.outbox(None)?.iter().all(|i| i.id != id) {
            return Err(StoreError::NoSuchOutboxItem(id));
        }
        Ok(changed == 1)
    }

    fn set_state(&self, id: i64, sql: &str, error: Option<&str>) -> Result<(), StoreError> {
        let changed = match error {
            Some(e) => self.db.execute(sql, params![id, e]),
            None => self.db.execute(sql, [id]),
        }
        .map_err(self.sql())?;
        if changed == 0 {
            let exists: Option<i64> = self
                .db
                .query_row("SELECT id FROM outbox WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(self.sql())?;
            if exists.is_none() {
                return Err(StoreError::NoSuchOutboxItem(id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_row_is_not_due_until_requeued() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(dir.path())?;
        let Enqueued::Queued(id) = store.outbox_enqueue(&demo_file(), "pacs")? else {
            anyhow::bail!("not queued");
        };
        assert!(store.outbox_cancel(id)?);
        assert!(store.outbox_due()?.is_empty());
        assert!(!store.outbox_cancel(id)?, "cancelled already");
        assert!(store.outbox_cancel(id + 100).is_err());
        assert!(store.outbox_requeue(id)?);
        assert!(!store.outbox_requeue(id)?, "pending already");
        assert_eq!(store.outbox_due()?.len(), 1);
        store.outbox_mark_sent(id)?;
        assert!(!store.outbox_cancel(id)?, "a sent row stays sent");
        assert!(!store.outbox_requeue(id)?, "a sent row is not sent again");
        assert!(store.outbox_requeue(id + 100).is_err());
        Ok(())
    }

    fn demo_file() -> PathBuf {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo/prostate-adc");
        std::fs::read_dir(&demo)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "dcm"))
            .unwrap_or(demo)
    }

    #[test]
    fn one_row_per_object_and_destination() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(dir.path())?;
        let file = demo_file();
        let Enqueued::Queued(a) = store.outbox_enqueue(&file, "pacs-a")? else { anyhow::bail!("not queued") };
        let Enqueued::Queued(b) = store.outbox_enqueue(&file, "pacs-b")? else { anyhow::bail!("not queued for b") };
        assert_ne!(a, b);
        assert_eq!(store.outbox_enqueue(&file, "pacs-a")?, Enqueued::AlreadyQueued(a));
        store.outbox_begin(a)?;
        store.outbox_mark_sent(a)?;
        let rows = store.outbox(None)?;
        assert_eq!(rows.len(), 2);
        assert_eq!(store.outbox_due()?.iter().map(|r| r.id).collect::<Vec<_>>(), [b]);
        assert!(rows.iter().all(|r| r.file.is_file() && !r.study_uid.is_empty()));
        Ok(())
    }
}
