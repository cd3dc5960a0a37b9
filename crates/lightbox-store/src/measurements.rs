//! Measurements a radiologist made on a series (in the viewer, the workstation or the CLI).
//! Signing a result puts them into the same report as the AI's, marked as the radiologist's.

use rusqlite::params;

use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub id: i64,
    pub series_uid: String,
    /// `length`, `area`, `volume`, `mean`, …
    pub kind: String,
    /// What was measured, in the radiologist's words.
    pub label: String,
    pub value: f64,
    /// UCUM unit, e.g. `mm`, `mm2`, `mL`.
    pub unit: String,
    pub author: String,
    pub created_at: String,
}

impl Store {
    pub fn measurement_add(
        &self,
        series_uid: &str,
        kind: &str,
        label: &str,
        value: f64,
        unit: &str,
        author: &str,
    ) -> Result<i64, StoreError> {
        self.db
            .execute(
                "INSERT INTO measurements (series_uid, kind, label, value, unit, author, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
                params![series_uid, kind, label, value, unit, author],
            )
            .map_err(self.sql())?;
        Ok(self.db.last_insert_rowid())
    }

    /// The series' measurements, oldest first.
    pub fn measurements(&self, series_uid: &str) -> Result<Vec<Measurement>, StoreError> {
        let mut s = self
            .db
            .prepare(
                "SELECT id, series_uid, kind, label, value, unit, author, created_at FROM measurements \
                 WHERE series_uid = ?1 ORDER BY id",
            )
            .map_err(self.sql())?;
        let rows = s
            .query_map([series_uid], |r| {
                Ok(Measurement {
                    id: r.get(0)?,
                    series_uid: r.get(1)?,
                    kind: r.get(2)?,
                    label: r.get(3)?,
                    value: r.get(4)?,
                    unit: r.get(5)?,
                    author: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Removes one; false when there was none.
    pub fn measurement_remove(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.db.execute("DELETE FROM measurements WHERE id = ?1", [id]).map_err(self.sql())? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_are_kept_per_series() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let id = store.measurement_add("1.2.3", "length", "Lesion long axis", 12.5, "mm", "Dr Who")?;
        store.measurement_add("1.2.4", "length", "Other", 3.0, "mm", "Dr Who")?;
        let m = store.measurements("1.2.3")?;
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].label.as_str(), m[0].value, m[0].unit.as_str()), ("Lesion long axis", 12.5, "mm"));
        assert!(store.measurement_remove(id)?);
        assert!(!store.measurement_remove(id)?);
        assert!(store.measurements("1.2.3")?.is_empty());
        Ok(())
    }
}
