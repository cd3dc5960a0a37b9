//! Lightbox's local study store: works offline, survives crashes, never keeps an instance twice.
//!
//! - An SQLite index (WAL) of patients, studies, series and instances, with the attributes a
//!   worklist filters and sorts on, plus an audit table (who opened, exported or sent what),
//!   a jobs table and an outbox table. The schema is versioned (`PRAGMA user_version`) and
//!   migrated on open.
//! - Instance files in a content-addressed folder (`objects/ab/cdef….dcm`, by SHA-256), written
//!   atomically: temporary file, fsync, rename, fsync of the folder.
//!
//! Importing an instance whose SOP Instance UID is already stored is a no-op.

mod jobs;
mod measurements;
mod outbox;
mod schema;

pub use jobs::{Claim, Job};

/// A stored series as lists show it: (Series Instance UID, modality, description, instances).
pub type SeriesRow = (String, String, String, u32);

/// Who and what a stored series is, for people: what a result list shows beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesLabel {
    /// DICOM PN, as stored.
    pub patient_name: String,
    pub patient_id: String,
    /// DICOM DA.
    pub study_date: String,
    pub modality: String,
    pub description: String,
}

/// A series of an earlier study of the same patient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierSeries {
    pub series_uid: String,
    pub study_uid: String,
    /// DICOM DA.
    pub study_date: String,
    pub modality: String,
    pub description: String,
}
pub use measurements::Measurement;
pub use outbox::{Enqueued, OutboxItem, OutboxState};

use std::io::Write;
use std::path::{Path, PathBuf};

use lightbox_core::InstanceRecord;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store index {path}: {source}")]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Dicom(#[from] lightbox_dicom::DicomError),
    #[error("no outbox item {0}")]
    NoSuchOutboxItem(i64),
    #[error("store index {path} has schema version {found}; this Lightbox knows up to {known}")]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
}

/// What importing one file did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    /// The SOP Instance UID was stored already; nothing was written.
    AlreadyStored,
}

/// Worklist filters. Text filters take DICOM-style wildcards: `*` any run, `?` one character.
#[derive(Clone, Debug, Default)]
pub struct WorklistQuery {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    /// Inclusive `YYYYMMDD` bounds.
    pub date_from: Option<String>,
    pub date_to: Option<String>,
    pub sort: WorklistSort,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorklistSort {
    #[default]
    DateNewestFirst,
    DateOldestFirst,
    PatientName,
}

/// One worklist line: a study.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyRow {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub date: String,
    pub description: String,
    pub accession_number: String,
    /// Modalities of its series, sorted, joined by `\`.
    pub modalities: String,
    pub series: u32,
    pub instances: u32,
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub instances: usize,
    /// SOP Instance UIDs whose file is gone.
    pub missing: Vec<String>,
    /// SOP Instance UIDs whose file no longer matches its hash.
    pub corrupt: Vec<String>,
    /// Stored files no index row points to (left by a crash before the row committed).
    pub unindexed_objects: Vec<PathBuf>,
    /// Leftover temporary files (a crash while writing one, or a write going on now).
    pub temporary_files: Vec<PathBuf>,
}

/// What [`Store::repair`] did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Objects left unindexed by an interrupted import, indexed now.
    pub indexed: usize,
    /// Unindexed copies of instances that are stored (a push sent again, perhaps in another
    /// transfer syntax): kept where they are. They are harmless, and one may be the only intact
    /// copy should the indexed one be damaged; deleting them safely would mean holding off
    /// every import meanwhile.
    pub copies_kept: usize,
    /// Temporary files older than the limit: removed.
    pub temporary_removed: usize,
    /// Objects that could not be indexed, and why (left in place).
    pub refused: Vec<lightbox_core::FileIssue>,
}

impl VerifyReport {
    /// No indexed instance is missing or damaged.
    pub fn is_consistent(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }
}

pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    pub(crate) db: Connection,
}

impl Store {
    /// Opens (or creates) a store in `root`, migrating its index to the current schema.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io { path: root.to_owned(), source };
        std::fs::create_dir_all(root.join("objects")).map_err(io)?;
        let db_path = root.join("index.sqlite");
        let sql = |source| StoreError::Sql { path: db_path.clone(), source };
        let db = Connection::open(&db_path).map_err(sql)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        db.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        db.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
        db.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        schema::migrate(&db, &db_path)?;
        Ok(Self { root: root.to_owned(), db_path, db })
    }

    pub(crate) fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sql { path: self.db_path.clone(), source }
    }

    /// Copies one DICOM file into the store and indexes it. The file is written (atomically)
    /// before the index row commits, so a crash leaves at worst an unindexed object, never an
    /// index row without its file.
    pub fn import_file(&mut self, path: &Path) -> Result<ImportOutcome, StoreError> {
        match self.copy_in(path, None)? {
            None => Ok(ImportOutcome::AlreadyStored),
            Some((record, object, size)) => self.index_one(&record, &object, size),
        }
    }

    /// Imports files that belong together (the files of one series) so that whoever reads the
    /// index sees all of them or none: each file is copied into the store (atomically, as
    /// [`Store::import_file`] does), then all index rows commit in one transaction. The engine
    /// therefore never dispatches half of a series that an import is still copying, however
    /// slow the disc. One outcome per file, in order; `copied` is called after each file is
    /// copied (or refused), for progress.
    ///
    /// A file that cannot be read or indexed is refused on its own (a savepoint each); should
    /// the transaction itself fail, the files are indexed one by one instead.
    pub fn import_files(
        &mut self,
        paths: &[PathBuf],
        mut copied: impl FnMut(&Path),
    ) -> Vec<Result<ImportOutcome, StoreError>> {
        let mut outcomes: Vec<Option<Result<ImportOutcome, StoreError>>> = paths.iter().map(|_| None).collect();
        // (index in paths, record, object, size) of the files copied and not yet indexed.
        let mut staged = Vec::new();
        let mut first_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut again = Vec::new(); // a second file with a SOP Instance UID of this batch
        let mut renamed_in = std::collections::BTreeSet::new(); // folders to fsync once each
        for (at, path) in paths.iter().enumerate() {
            match self.copy_in(path, Some(&mut renamed_in)) {
                Ok(None) => outcomes[at] = Some(Ok(ImportOutcome::AlreadyStored)),
                Ok(Some((record, object, size))) => {
                    if first_of.contains_key(&record.sop_instance_uid) {
                        again.push(at);
                    } else {
                        first_of.insert(record.sop_instance_uid.clone(), at);
                        staged.push((at, record, object, size));
                    }
                }
                Err(e) => outcomes[at] = Some(Err(e)),
            }
            copied(path);
        }
        // The renames are durable before any index row names them.
        for dir in renamed_in {
            if let Err(source) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
                let objects = self.root.join("objects");
                staged.retain(|(at, _, object, _)| {
                    let here = objects.join(&object[..2]) == dir;
                    if here {
                        let error = std::io::Error::new(source.kind(), source.to_string());
                        outcomes[*at] = Some(Err(StoreError::Io { path: dir.clone(), source: error }));
                    }
                    !here
                });
            }
        }
        if let Err(e) = self.index_staged(&staged, &mut outcomes) {
            tracing::warn!("indexing {} files in one transaction failed ({e}); indexing them one by one", staged.len());
            for (at, record, object, size) in &staged {
                outcomes[*at] = Some(self.index_one(record, object, *size));
            }
        }
        for at in again {
            // Stored by its first copy, unless that one was refused: then it stands on its own.
            outcomes[at] = Some(self.import_file(&paths[at]));
        }
        outcomes
            .into_iter()
            .zip(paths)
            .map(|(o, path)| {
                o.unwrap_or_else(|| {
                    let source = std::io::Error::other("not indexed (an internal error in the import)");
                    Err(StoreError::Io { path: path.clone(), source })
                })
            })
            .collect()
    }

    /// Reads `path` and copies it into the objects: its record, object name and size, or
    /// `None` when its SOP Instance UID is stored already. With `renamed_in`, the object's
    /// folder is added there for the caller to fsync, instead of being fsynced now.
    fn copy_in(
        &self,
        path: &Path,
        renamed_in: Option<&mut std::collections::BTreeSet<PathBuf>>,
    ) -> Result<Option<(InstanceRecord, String, u64)>, StoreError> {
        let record = lightbox_dicom::read_instance(path)?;
        let stored: Option<String> = self
            .db
            .query_row("SELECT object FROM instances WHERE sop_uid = ?1", [&record.sop_instance_uid], |r| r.get(0))
            .optional()
            .map_err(self.sql())?;
        if stored.is_some() {
            return Ok(None);
        }
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
        let object = hex(&Sha256::digest(&bytes));
        match renamed_in {
            None => self.write_object(&object, &bytes)?,
            Some(dirs) => {
                if let Some(dir) = self.write_object_unsynced(&object, &bytes)? {
                    dirs.insert(dir);
                }
            }
        }
        Ok(Some((record, object, bytes.len() as u64)))
    }

    /// Indexes `staged` files in one transaction, a savepoint each, filling their outcomes.
    fn index_staged(
        &mut self,
        staged: &[(usize, InstanceRecord, String, u64)],
        outcomes: &mut [Option<Result<ImportOutcome, StoreError>>],
    ) -> rusqlite::Result<()> {
        let db_path = self.db_path.clone();
        let mut tx = self.db.transaction()?;
        let mut results = Vec::with_capacity(staged.len());
        for (at, record, object, size) in staged {
            let indexed = tx.savepoint().and_then(|sp| {
                let added = insert(&sp, record, object, *size)?;
                sp.commit().map(|()| added)
            });
            if indexed.is_err() && tx.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O error): a further
                // savepoint would start a transaction of its own. Stop here.
                return indexed.map(|_| ());
            }
            results.push((*at, indexed));
        }
        tx.commit()?;
        for (at, indexed) in results {
            outcomes[at] =
                Some(indexed.map(outcome).map_err(|source| StoreError::Sql { path: db_path.clone(), source }));
        }
        Ok(())
    }

    fn index_one(&mut self, record: &InstanceRecord, object: &str, size: u64) -> Result<ImportOutcome, StoreError> {
        let tx = self.db.transaction().map_err(|source| StoreError::Sql { path: self.db_path.clone(), source })?;
        insert(&tx, record, object, size)
            .and_then(|added| tx.commit().map(|()| outcome(added)))
            .map_err(|source| StoreError::Sql { path: self.db_path.clone(), source })
    }

    /// The stored file of an instance.
    pub fn instance_file(&self, sop_uid: &str) -> Result<Option<PathBuf>, StoreError> {
        let object: Option<String> = self
            .db
            .query_row("SELECT object FROM instances WHERE sop_uid = ?1", [sop_uid], |r| r.get(0))
            .optional()
            .map_err(self.sql())?;
        Ok(object.map(|o| self.object_path(&o)))
    }

    pub(crate) fn object_path(&self, object: &str) -> PathBuf {
        self.root.join("objects").join(&object[..2]).join(format!("{}.dcm", &object[2..]))
    }

    /// temp file + fsync + rename + fsync(dir): the object is either whole or absent.
    pub(crate) fn write_object(&self, object: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(dir) = self.write_object_unsynced(object, bytes)? {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// [`Store::write_object`] but for the fsync of the folder, left to the caller: the folder
    /// renamed in (`None` when the same content was stored already).
    fn write_object_unsynced(&self, object: &str, bytes: &[u8]) -> Result<Option<PathBuf>, StoreError> {
        let target = self.object_path(object);
        if target.is_file() {
            return Ok(None); // same content stored already
        }
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        let io = |source| StoreError::Io { path: target.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Unique within this process too: two threads may store the same content at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = dir.join(format!(".{}.{}.{n}.tmp", &object[2..], std::process::id()));
        let mut file = std::fs::File::create(&temp).map_err(io)?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&temp, &target).map_err(io)?;
        Ok(Some(dir))
    }

    /// Studies matching `query`, sorted and paged.
    pub fn worklist(&self, query: &WorklistQuery) -> Result<Vec<StudyRow>, StoreError> {
        let mut sql = String::from(
            "SELECT s.uid, p.patient_id, p.name, s.date, s.description, s.accession, \
             (SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series WHERE study_uid = s.uid ORDER BY m)), \
             (SELECT count(*) FROM series WHERE study_uid = s.uid), s.instances \
             FROM studies s JOIN patients p ON p.id = s.patient WHERE 1 = 1",
        );
        let mut args: Vec<String> = Vec::new();
        let mut glob = |column: &str, pattern: &Option<String>, sql: &mut String| {
            if let Some(p) = pattern.as_deref().filter(|p| !p.is_empty()) {
                args.push(glob_pattern(p));
                sql.push_str(&format!(" AND {column} GLOB ?{}", args.len()));
            }
        };
        glob("p.name_upper", &query.patient_name.as_ref().map(|n| n.to_uppercase()), &mut sql);
        glob("p.patient_id", &query.patient_id, &mut sql);
        glob("s.accession", &query.accession_number, &mut sql);
        if let Some(m) = query.modality.as_deref().filter(|m| !m.is_empty()) {
            args.push(m.to_owned());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM series WHERE study_uid = s.uid AND modality = ?{})",
                args.len()
            ));
        }
        if let Some(d) = &query.date_from {
            args.push(d.clone());
            sql.push_str(&format!(" AND s.date >= ?{}", args.len()));
        }
        if let Some(d) = &query.date_to {
            args.push(d.clone());
            sql.push_str(&format!(" AND s.date <= ?{}", args.len()));
        }
        sql.push_str(match query.sort {
            WorklistSort::DateNewestFirst => " ORDER BY s.date DESC, s.uid",
            WorklistSort::DateOldestFirst => " ORDER BY s.date ASC, s.uid",
            WorklistSort::PatientName => " ORDER BY p.name_upper, s.date DESC, s.uid",
        });
        sql.push_str(&format!(" LIMIT {} OFFSET {}", if query.limit == 0 { 100 } else { query.limit }, query.offset));
        let mut statement = self.db.prepare_cached(&sql).map_err(self.sql())?;
        let rows = statement
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok(StudyRow {
                    study_uid: r.get(0)?,
                    patient_id: r.get(1)?,
                    patient_name: r.get(2)?,
                    date: r.get(3)?,
                    description: r.get(4)?,
                    accession_number: r.get(5)?,
                    modalities: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                    series: r.get(7)?,
                    instances: r.get(8)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Records who did what to which object (PHI access log). `detail` must not hold PHI.
    pub fn audit(&self, actor: &str, action: &str, object: &str, detail: &str) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO audit (at, actor, action, object, detail) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?1, ?2, ?3, ?4)",
                params![actor, action, object, detail],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// `(actor, action, object)` of the audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut s = self.db.prepare("SELECT actor, action, object FROM audit ORDER BY id").map_err(self.sql())?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Checks that every indexed instance has its file and that the file's content still hashes
    /// to its name. Objects without an index row (a crash between writing the file and
    /// committing the row) are harmless and counted apart.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut s = self.db.prepare("SELECT sop_uid, object FROM instances").map_err(self.sql())?;
        let rows = s
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        let mut indexed = std::collections::HashSet::new();
        for (sop_uid, object) in rows {
            report.instances += 1;
            let path = self.object_path(&object);
            match std::fs::read(&path) {
                Ok(bytes) if hex(&Sha256::digest(&bytes)) == object => {}
                Ok(_) => report.corrupt.push(sop_uid),
                Err(_) => report.missing.push(sop_uid),
            }
            indexed.insert(object);
        }
        let mut s = self.db.prepare("SELECT object FROM outbox").map_err(self.sql())?;
        let queued = s.query_map([], |r| r.get::<_, String>(0)).map_err(self.sql())?;
        for object in queued {
            indexed.insert(object.map_err(self.sql())?);
        }
        for entry in
            walk(&self.root.join("objects")).map_err(|source| StoreError::Io { path: self.root.clone(), source })?
        {
            let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let prefix = entry.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
            match name.strip_suffix(".dcm") {
                Some(rest) if !indexed.contains(&format!("{prefix}{rest}")) => report.unindexed_objects.push(entry),
                Some(_) => {}
                None => report.temporary_files.push(entry),
            }
        }
        Ok(report)
    }

    /// Brings back what interrupted imports left: every object no index row points to is a
    /// whole, fsynced DICOM file (objects are renamed into place only once written), so it is
    /// indexed, not deleted; one whose SOP Instance UID is stored already (a push sent again
    /// after the first attempt broke off) is kept and counted. Leftover temporary files, which
    /// no index row ever names, are removed. Files younger than `min_age` are left alone: they may
    /// belong to an import going on now. Missing or damaged instances are not repaired here
    /// (see [`Store::verify`]).
    pub fn repair(&mut self, min_age: std::time::Duration) -> Result<RepairReport, StoreError> {
        let found = self.verify()?;
        let old_enough = |file: &PathBuf| {
            let age = std::fs::metadata(file).and_then(|m| m.modified()).map(|t| t.elapsed().unwrap_or_default());
            age.is_ok_and(|age| age >= min_age)
        };
        let orphans: Vec<PathBuf> = found.unindexed_objects.into_iter().filter(old_enough).collect();
        let mut report = RepairReport::default();
        let outcomes = self.import_files(&orphans, |_| {});
        for (object, outcome) in orphans.iter().zip(outcomes) {
            match outcome {
                Ok(ImportOutcome::Imported) => report.indexed += 1,
                Ok(ImportOutcome::AlreadyStored) => report.copies_kept += 1,
                Err(e) => report.refused.push(lightbox_core::FileIssue { path: object.clone(), reason: e.to_string() }),
            }
        }
        for temp in found.temporary_files.iter().filter(|t| old_enough(t)) {
            std::fs::remove_file(temp).map_err(|source| StoreError::Io { path: temp.clone(), source })?;
            report.temporary_removed += 1;
        }
        Ok(report)
    }

    /// The stored files of a series' instances.
    pub fn series_files(&self, series_uid: &str) -> Result<Vec<PathBuf>, StoreError> {
        let mut s = self.db.prepare("SELECT object FROM instances WHERE series_uid = ?1").map_err(self.sql())?;
        let rows = s.query_map([series_uid], |r| r.get::<_, String>(0)).map_err(self.sql())?;
        rows.map(|o| o.map(|o| self.object_path(&o))).collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The SOP Instance UIDs of a series.
    pub fn series_sop_uids(&self, series_uid: &str) -> Result<Vec<String>, StoreError> {
        let mut s = self.db.prepare("SELECT sop_uid FROM instances WHERE series_uid = ?1").map_err(self.sql())?;
        let rows = s.query_map([series_uid], |r| r.get::<_, String>(0)).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The series an instance belongs to.
    pub fn series_of(&self, sop_uid: &str) -> Result<Option<String>, StoreError> {
        self.db
            .query_row("SELECT series_uid FROM instances WHERE sop_uid = ?1", [sop_uid], |r| r.get(0))
            .optional()
            .map_err(self.sql())
    }

    /// The series of a stored study: (UID, modality, description, instances); `None` when the
    /// study is not stored.
    pub fn series_of_study(&self, study_uid: &str) -> Result<Option<Vec<SeriesRow>>, StoreError> {
        let known: Option<String> = self
            .db
            .query_row("SELECT uid FROM studies WHERE uid = ?1", [study_uid], |r| r.get(0))
            .optional()
            .map_err(self.sql())?;
        if known.is_none() {
            return Ok(None);
        }
        let mut s = self
            .db
            .prepare(
                "SELECT se.uid, se.modality, se.description, (SELECT count(*) FROM instances i WHERE i.series_uid = se.uid) \
                 FROM series se WHERE se.study_uid = ?1 ORDER BY se.number, se.uid",
            )
            .map_err(self.sql())?;
        let rows =
            s.query_map([study_uid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(self.sql())?;
        Ok(Some(rows.collect::<Result<_, _>>().map_err(self.sql())?))
    }

    /// The patient, study date and description of a stored series; `None` when it is not stored.
    pub fn series_label(&self, series_uid: &str) -> Result<Option<SeriesLabel>, StoreError> {
        self.db
            .query_row(
                "SELECT p.name, p.patient_id, st.date, se.modality, se.description FROM series se \
                 JOIN studies st ON st.uid = se.study_uid JOIN patients p ON p.id = st.patient WHERE se.uid = ?1",
                [series_uid],
                |r| {
                    Ok(SeriesLabel {
                        patient_name: r.get(0)?,
                        patient_id: r.get(1)?,
                        study_date: r.get(2)?,
                        modality: r.get(3)?,
                        description: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.sql())
    }

    /// The study a stored series belongs to.
    pub fn study_of_series(&self, series_uid: &str) -> Result<Option<String>, StoreError> {
        self.db
            .query_row("SELECT study_uid FROM series WHERE uid = ?1", [series_uid], |r| r.get(0))
            .optional()
            .map_err(self.sql())
    }

    /// Every stored series: (series UID, modality, description, instances), by study date.
    pub fn series_list(&self) -> Result<Vec<SeriesRow>, StoreError> {
        let mut s = self
            .db
            .prepare(
                "SELECT se.uid, se.modality, se.description, (SELECT count(*) FROM instances i WHERE i.series_uid = se.uid) \
                 FROM series se JOIN studies st ON st.uid = se.study_uid ORDER BY st.date, se.number",
            )
            .map_err(self.sql())?;
        let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The earlier series of the same patient, newest study first, for "compare with prior".
    pub fn earlier_series(&self, series_uid: &str) -> Result<Vec<EarlierSeries>, StoreError> {
        let mut s = self
            .db
            .prepare(
                "SELECT se.uid, st.uid, st.date, se.modality, se.description FROM series se \
                 JOIN studies st ON st.uid = se.study_uid \
                 JOIN (SELECT st0.patient AS patient, st0.date AS date, st0.uid AS study FROM series se0 \
                       JOIN studies st0 ON st0.uid = se0.study_uid WHERE se0.uid = ?1) cur \
                   ON st.patient = cur.patient AND st.uid <> cur.study AND st.date < cur.date \
                 ORDER BY st.date DESC, se.number",
            )
            .map_err(self.sql())?;
        let rows = s
            .query_map([series_uid], |r| {
                Ok(EarlierSeries {
                    series_uid: r.get(0)?,
                    study_uid: r.get(1)?,
                    study_date: r.get(2)?,
                    modality: r.get(3)?,
                    description: r.get(4)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Instances indexed, for tests and status lines.
    pub fn instance_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self.db.query_row("SELECT count(*) FROM instances", [], |r| r.get(0)).map_err(self.sql())?;
        Ok(count.unsigned_abs())
    }

    /// Raw index access for benchmarks that fill it with generated rows.
    #[doc(hidden)]
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.db
    }
}

fn outcome(added: bool) -> ImportOutcome {
    if added { ImportOutcome::Imported } else { ImportOutcome::AlreadyStored }
}

/// Indexes one instance; `false` when its SOP Instance UID was indexed meanwhile (by another
/// process importing the same files, or a repair), so nothing was written.
fn insert(tx: &Connection, r: &InstanceRecord, object: &str, size: u64) -> rusqlite::Result<bool> {
    tx.execute(
        "INSERT INTO patients (patient_id, name, name_upper) VALUES (?1, ?2, upper(?2)) ON CONFLICT (patient_id, name) DO NOTHING",
        params![r.patient.id, r.patient.name],
    )?;
    let patient: i64 = tx.query_row(
        "SELECT id FROM patients WHERE patient_id = ?1 AND name = ?2",
        params![r.patient.id, r.patient.name],
        |row| row.get(0),
    )?;
    tx.execute(
        "INSERT INTO studies (uid, patient, date, description, accession, instances) VALUES (?1, ?2, ?3, ?4, ?5, 0) \
         ON CONFLICT (uid) DO NOTHING",
        params![r.study_uid.as_str(), patient, r.study_date, r.study_description, r.accession_number],
    )?;
    tx.execute(
        "INSERT INTO series (uid, study_uid, number, modality, description) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (uid) DO NOTHING",
        params![r.series_uid.as_str(), r.study_uid.as_str(), r.series_number, r.modality, r.series_description],
    )?;
    let added = tx.execute(
        "INSERT INTO instances (sop_uid, series_uid, sop_class, number, transfer_syntax, object, bytes, imported_at, arrival) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, strftime('%Y-%m-%dT%H:%M:%fZ','now'), \
                 (SELECT coalesce(max(arrival), 0) + 1 FROM instances)) \
         ON CONFLICT (sop_uid) DO NOTHING",
        params![
            r.sop_instance_uid,
            r.series_uid.as_str(),
            r.sop_class_uid,
            r.instance_number,
            r.transfer_syntax,
            object,
            size as i64
        ],
    )?;
    if added == 0 {
        return Ok(false);
    }
    tx.execute("UPDATE studies SET instances = instances + 1 WHERE uid = ?1", [r.study_uid.as_str()])?;
    Ok(true)
}

/// DICOM wildcards (`*`, `?`) to an SQLite GLOB pattern, with GLOB's own specials escaped.
fn glob_pattern(dicom: &str) -> String {
    dicom
        .chars()
        .map(|c| match c {
            '[' => "[[]".to_owned(),
            ']' => "[]]".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_keeps_dicom_wildcards_and_escapes_brackets() {
        assert_eq!(glob_pattern("DOE^J*"), "DOE^J*");
        assert_eq!(glob_pattern("A?[1]"), "A?[[]1[]]");
    }

    #[test]
    fn opening_twice_keeps_the_schema() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        drop(Store::open(dir.path())?);
        let store = Store::open(dir.path())?;
        assert_eq!(store.instance_count()?, 0);
        let version: i64 = store.db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, schema::VERSION);
        let mode: String = store.db.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "wal");
        Ok(())
    }
}
