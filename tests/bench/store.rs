//! Benchmark: worklist queries on a store holding 10 000 studies / 1 000 000 instances
//! (generated rows in a real SQLite file). Prints the median time of each query.
//! Run with `cargo run -p lightbox-tests --bin bench-store`.

use std::time::{Duration, Instant};

use lightbox_store::{Store, WorklistQuery, WorklistSort};

const STUDIES: usize = 10_000;
const SERIES_PER_STUDY: usize = 4;
const INSTANCES_PER_SERIES: usize = 25;
const RUNS: usize = 21;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(dir.path())?;
    let start = Instant::now();
    {
        let db = store.connection();
        let tx = db.transaction()?;
        {
            let mut patient =
                tx.prepare("INSERT INTO patients (patient_id, name, name_upper) VALUES (?1, ?2, upper(?2))")?;
            let mut study = tx.prepare(
                "INSERT INTO studies (uid, patient, date, description, accession, instances) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut series = tx.prepare(
                "INSERT INTO series (uid, study_uid, number, modality, description) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut instance = tx.prepare(
                "INSERT INTO instances (sop_uid, series_uid, sop_class, number, transfer_syntax, object, bytes, imported_at, arrival) \
                 VALUES (?1, ?2, '1.2.840.10008.5.1.4.1.1.4', ?3, 'Explicit VR Little Endian', ?4, 500000, '2026-11-25T00:00:00Z', ?5)",
            )?;
            for p in 0..STUDIES / 2 {
                patient.execute(rusqlite::params![format!("P{p:06}"), format!("PATIENT^{p:06}")])?;
            }
            for s in 0..STUDIES {
                let uid = format!("1.2.826.0.1.3680043.99.{s}");
                let date = format!("20{:02}{:02}{:02}", 10 + s % 16, 1 + s % 12, 1 + s % 28);
                study.execute(rusqlite::params![
                    uid,
                    (s / 2 + 1) as i64,
                    date,
                    "MR BRAIN",
                    format!("ACC{s:07}"),
                    (SERIES_PER_STUDY * INSTANCES_PER_SERIES) as i64
                ])?;
                for r in 0..SERIES_PER_STUDY {
                    let series_uid = format!("{uid}.{r}");
                    let modality = if s % 50 == 0 && r == 0 { "CT" } else { "MR" };
                    series.execute(rusqlite::params![series_uid, uid, r as i64, modality, "T1"])?;
                    for i in 0..INSTANCES_PER_SERIES {
                        instance.execute(rusqlite::params![
                            format!("{series_uid}.{i}"),
                            series_uid,
                            i as i64,
                            format!("{:064x}", (s * 1000 + r * 100 + i) as u128),
                            ((s * SERIES_PER_STUDY + r) * INSTANCES_PER_SERIES + i + 1) as i64
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
    }
    println!(
        "generated {STUDIES} studies, {} instances in {:.1} s",
        store.instance_count()?,
        start.elapsed().as_secs_f64()
    );

    let queries: Vec<(&str, WorklistQuery)> = vec![
        ("first page, newest first", WorklistQuery { limit: 50, ..Default::default() }),
        ("page 100 (offset 5000)", WorklistQuery { limit: 50, offset: 5000, ..Default::default() }),
        (
            "by patient name PATIENT^0012*",
            WorklistQuery { patient_name: Some("patient^0012*".into()), ..Default::default() },
        ),
        (
            "by accession ACC00042??",
            WorklistQuery { accession_number: Some("ACC00042??".into()), ..Default::default() },
        ),
        (
            "date range one year",
            WorklistQuery {
                date_from: Some("20150101".into()),
                date_to: Some("20151231".into()),
                ..Default::default()
            },
        ),
        ("modality CT (2 % of studies)", WorklistQuery { modality: Some("CT".into()), ..Default::default() }),
        ("sorted by name", WorklistQuery { sort: WorklistSort::PatientName, limit: 50, ..Default::default() }),
    ];
    println!("{:<34} {:>8} {:>6}", "query", "ms", "rows");
    for (name, query) in queries {
        let mut times = Vec::with_capacity(RUNS);
        let mut rows = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            rows = store.worklist(&query)?.len();
            times.push(t.elapsed());
        }
        times.sort();
        let median: Duration = times[RUNS / 2];
        println!("{name:<34} {:>8.2} {rows:>6}", median.as_secs_f64() * 1e3);
    }
    // The engine's poll for what other processes stored: here the last two series arrived.
    let after = store.last_arrival()? - 2 * INSTANCES_PER_SERIES as i64;
    let mut times = Vec::with_capacity(RUNS);
    let mut rows = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        rows = store.series_arrived_after(after)?.len();
        times.push(t.elapsed());
    }
    times.sort();
    println!("{:<34} {:>8.2} {rows:>6}", "engine poll: series arrived after", times[RUNS / 2].as_secs_f64() * 1e3);
    Ok(())
}
