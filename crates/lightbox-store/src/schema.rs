//! The index schema and its migrations, applied in order on open (`PRAGMA user_version`).

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // 1: the study index, audit log, jobs and outbox.
    "CREATE TABLE patients (
        id INTEGER PRIMARY KEY,
        patient_id TEXT NOT NULL,
        name TEXT NOT NULL,
        name_upper TEXT NOT NULL,
        UNIQUE (patient_id, name)
    );
    CREATE INDEX patients_name ON patients (name_upper);
    CREATE TABLE studies (
        uid TEXT PRIMARY KEY,
        patient INTEGER NOT NULL REFERENCES patients (id),
        date TEXT NOT NULL,
        description TEXT NOT NULL,
        accession TEXT NOT NULL,
        instances INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX studies_date ON studies (date, uid);
    CREATE INDEX studies_patient ON studies (patient);
    CREATE INDEX studies_accession ON studies (accession);
    CREATE TABLE series (
        uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL REFERENCES studies (uid),
        number INTEGER,
        modality TEXT NOT NULL,
        description TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX series_study ON series (study_uid, modality);
    CREATE TABLE instances (
        sop_uid TEXT PRIMARY KEY,
        series_uid TEXT NOT NULL REFERENCES series (uid),
        sop_class TEXT NOT NULL,
        number INTEGER,
        transfer_syntax TEXT NOT NULL,
        object TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        imported_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX instances_series ON instances (series_uid);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        sop_uid TEXT NOT NULL UNIQUE,
        object TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at TEXT NOT NULL,
        sent_at TEXT
    );",
    // 2: the study each outbox row belongs to (the worklist shows pending results per study).
    "ALTER TABLE outbox ADD COLUMN study_uid TEXT NOT NULL DEFAULT '';
    CREATE INDEX outbox_study ON outbox (study_uid);",
    // 3: jobs are keyed by input + pipeline version (never run twice) and keep their outcome.
    "ALTER TABLE jobs ADD COLUMN key TEXT;
    ALTER TABLE jobs ADD COLUMN result TEXT;
    ALTER TABLE jobs ADD COLUMN error TEXT;
    CREATE UNIQUE INDEX jobs_key ON jobs (key);",
    // 4: an object can be queued for several destinations (one row each).
    "CREATE TABLE outbox_new (
        id INTEGER PRIMARY KEY,
        sop_uid TEXT NOT NULL,
        object TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at TEXT NOT NULL,
        sent_at TEXT,
        study_uid TEXT NOT NULL DEFAULT '',
        UNIQUE (sop_uid, destination)
    );
    INSERT INTO outbox_new SELECT id, sop_uid, object, destination, state, attempts, last_error, created_at, sent_at, study_uid
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE INDEX outbox_study ON outbox (study_uid);",
    // 5: jobs are leased by the process running them (a crash lets the lease lapse), run on a
    // device class, report their stage and timing; measurements a radiologist made on a series.
    "ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN device TEXT NOT NULL DEFAULT 'cpu';
    ALTER TABLE jobs ADD COLUMN stage TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN started_at TEXT;
    ALTER TABLE jobs ADD COLUMN finished_at TEXT;
    ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_state ON jobs (state);
    CREATE TABLE measurements (
        id INTEGER PRIMARY KEY,
        series_uid TEXT NOT NULL,
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        value REAL NOT NULL,
        unit TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX measurements_series ON measurements (series_uid);
    CREATE TABLE engine_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX instances_imported ON instances (imported_at);",
    // 6: instances are numbered in the order their rows were written, and the engine looks for
    // arrivals by that number, not by the clock (two writes in one millisecond, or a clock set
    // back, could hide an arrival from it). Stored instances are numbered by their import time;
    // the engine's saved point becomes the number of the last instance imported by then.
    "ALTER TABLE instances ADD COLUMN arrival INTEGER;
    UPDATE instances SET arrival = o.n
        FROM (SELECT sop_uid, row_number() OVER (ORDER BY imported_at, sop_uid) AS n FROM instances) AS o
        WHERE o.sop_uid = instances.sop_uid;
    CREATE UNIQUE INDEX instances_arrival ON instances (arrival);
    -- A Lightbox from before this version, still running beside a newer one, writes no number.
    CREATE TRIGGER instances_numbered AFTER INSERT ON instances WHEN NEW.arrival IS NULL
    BEGIN
        UPDATE instances SET arrival = (SELECT coalesce(max(arrival), 0) + 1 FROM instances)
        WHERE sop_uid = NEW.sop_uid;
    END;
    INSERT INTO engine_state (key, value)
        SELECT 'dispatched_through',
               CAST(coalesce((SELECT max(arrival) FROM instances WHERE imported_at <= e.value), 0) AS TEXT)
        FROM engine_state e WHERE e.key = 'dispatched_until';
    DELETE FROM engine_state WHERE key = 'dispatched_until';
    DROP INDEX instances_imported;",
];

pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(db: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sql { path: path.to_owned(), source };
    let found: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
    if found > VERSION {
        return Err(StoreError::NewerSchema { path: path.to_owned(), found, known: VERSION });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        // Another process may open the store at the same moment: take the write lock first,
        // then look again whether this step is still to be done.
        db.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        let step = db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).and_then(|now| {
            if now >= version {
                return Ok(false);
            }
            db.execute_batch(&format!("{migration}; PRAGMA user_version = {version};")).map(|()| true)
        });
        match step {
            Ok(ran) => {
                db.execute_batch("COMMIT").map_err(sql)?;
                if ran {
                    tracing::info!(version, "store index migrated");
                }
            }
            Err(e) => {
                let _ = db.execute_batch("ROLLBACK");
                return Err(sql(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index at schema version 5 (before arrival numbers) holding one patient, study
    /// (`1.2.3`) and series (`1.2.3.4`), no instances.
    fn store_of_version_5(path: &Path) -> anyhow::Result<Connection> {
        let db = Connection::open(path)?;
        for (i, migration) in MIGRATIONS[..5].iter().enumerate() {
            db.execute_batch(&format!("BEGIN; {migration}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
        }
        db.execute_batch(
            "INSERT INTO patients (id, patient_id, name, name_upper) VALUES (1, 'P1', 'Doe^J', 'DOE^J');
             INSERT INTO studies (uid, patient, date, description, accession, instances)
                 VALUES ('1.2.3', 1, '20260101', '', '', 0);
             INSERT INTO series (uid, study_uid, number, modality, description) VALUES ('1.2.3.4', '1.2.3', 1, 'MR', '');",
        )?;
        Ok(db)
    }

    /// A store from before arrival numbers: its instances are numbered in the order they were
    /// imported, and the engine's saved point (a time) becomes the number of the last instance
    /// imported by then, so it neither skips nor repeats anything after the upgrade.
    #[test]
    fn stored_instances_are_numbered_by_import_time_and_the_engine_keeps_its_place() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("index.sqlite");
        let db = store_of_version_5(&path)?;
        db.execute(
            "INSERT INTO engine_state (key, value) VALUES ('dispatched_until', '2026-01-01T10:00:02.000Z')",
            [],
        )?;
        for (sop, at) in [
            ("1.5", "2026-01-01T10:00:02.000Z"),
            ("1.6", "2026-01-01T10:00:03.000Z"),
            ("1.7", "2026-01-01T10:00:01.000Z"),
        ] {
            db.execute(
                "INSERT INTO instances (sop_uid, series_uid, sop_class, number, transfer_syntax, object, bytes, imported_at) \
                 VALUES (?1, '1.2.3.4', '1.2.840.10008.5.1.4.1.1.4', 1, '1.2.840.10008.1.2.1', ?1, 1, ?2)",
                [sop, at],
            )?;
        }
        migrate(&db, &path)?;
        let mut s = db.prepare("SELECT sop_uid, arrival FROM instances ORDER BY arrival")?;
        let order =
            s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
        assert_eq!(order, [("1.7".to_owned(), 1), ("1.5".to_owned(), 2), ("1.6".to_owned(), 3)]);
        let mut s = db.prepare("SELECT key, value FROM engine_state")?;
        let saved = s
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        assert_eq!(saved, [("dispatched_through".to_owned(), "2".to_owned())]);
        // A Lightbox of before, still running, writes no number: the store gives it the next.
        db.execute(
            "INSERT INTO instances (sop_uid, series_uid, sop_class, number, transfer_syntax, object, bytes, imported_at) \
             VALUES ('1.8', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.4', 1, '1.2.840.10008.1.2.1', '1.8', 1, 'x')",
            [],
        )?;
        let numbered: i64 = db.query_row("SELECT arrival FROM instances WHERE sop_uid = '1.8'", [], |r| r.get(0))?;
        assert_eq!(numbered, 4);
        Ok(())
    }

    /// Several processes opening a store of an older version at once: one migrates, the
    /// others find it done, none fails.
    #[test]
    fn a_store_opened_by_several_processes_at_once_is_migrated_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = store_of_version_5(&dir.path().join("index.sqlite"))?;
        // Enough instances that numbering them takes a while: the openers overlap.
        db.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
             INSERT INTO instances (sop_uid, series_uid, sop_class, number, transfer_syntax, object, bytes, imported_at)
                 SELECT '1.9.' || i, '1.2.3.4', '1.2', i, '1.2', printf('%064x', i), 1, printf('2026-01-01T%08d', i) FROM n;",
        )?;
        drop(db);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (root, barrier) = (dir.path().to_owned(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    crate::Store::open(&root).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for opener in openers {
            let opened = opener.join().map_err(|_| anyhow::anyhow!("an opener panicked"))?;
            assert_eq!(opened, Ok(()));
        }
        let db = Connection::open(dir.path().join("index.sqlite"))?;
        assert_eq!(db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?, VERSION);
        Ok(())
    }
}
