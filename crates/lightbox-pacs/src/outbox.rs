//! Draining the store's outbox to a PACS, exactly once per SOP Instance UID.
//!
//! The guarantee rests on three things: (1) a row is marked `sending` (committed) before any
//! byte goes out, (2) a row found `sending` or already tried is first looked up on the PACS
//! with QIDO (by SOP Instance UID) and marked `sent` without a resend if the PACS has it, and
//! (3) PACS servers keep one copy per SOP Instance UID (Orthanc answers a duplicate STOW with
//! success and does not store it again). A crash between "sent" and "marked sent" therefore
//! costs at most one lookup, never a duplicate.

use lightbox_store::{OutboxItem, OutboxState, Store};

use crate::dimse::{DimsePeer, store_scu};
use crate::json::tags;
use crate::{DicomWebClient, PacsError, QidoQuery};

/// Where the outbox sends: DICOMweb first, DIMSE C-STORE as the fallback when the DICOMweb
/// endpoint cannot be reached.
pub struct Destination<'a> {
    pub name: &'a str,
    pub web: &'a DicomWebClient,
    pub dimse_fallback: Option<&'a DimsePeer>,
}

/// What one drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sent and confirmed by the PACS now.
    pub sent: usize,
    /// Found on the PACS already (a crash after sending, before marking): marked, not resent.
    pub already_there: usize,
    /// Sent over DIMSE because DICOMweb was unreachable.
    pub sent_by_dimse: usize,
    /// Left queued: the PACS is unreachable or busy; the next drain retries.
    pub deferred: usize,
    /// Refused by the PACS: they wait for a person (`outbox retry`).
    pub failed: usize,
}

/// Sends every due outbox row for `destination.name`. Stops early (leaving the rest queued)
/// when the PACS turns out to be unreachable.
pub async fn drain(store: &Store, destination: &Destination<'_>) -> Result<DrainReport, PacsError> {
    let mut report = DrainReport::default();
    // One drain at a time per store, across processes (`pacs drain --every`, `listen --rules`,
    // the workstation): two would both send a row before either marks it.
    let lock_path = store.root().join("outbox.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| PacsError::Io { path: lock_path.clone(), source })?;
    if lock.try_lock().is_err() {
        tracing::info!("another drain of this outbox is running; leaving it to that one");
        return Ok(report);
    }
    let due: Vec<OutboxItem> = store.outbox_due()?.into_iter().filter(|i| i.destination == destination.name).collect();
    let mut unreachable: Option<String> = None;
    for item in due {
        if let Some(reason) = &unreachable {
            // Not tried: say why in the row, without counting an attempt.
            store.outbox_mark_retry(item.id, &format!("not tried: {reason}"))?;
            report.deferred += 1;
            continue;
        }
        match send_one(store, destination, &item).await {
            Ok(Sent::Now) => report.sent += 1,
            Ok(Sent::AlreadyThere) => report.already_there += 1,
            Ok(Sent::ByDimse) => report.sent_by_dimse += 1,
            Err(e) if e.is_transient() => {
                tracing::warn!(sop_uid = item.sop_uid, "outbox: {e}; will retry");
                store.outbox_mark_retry(item.id, &e.to_string())?;
                report.deferred += 1;
                unreachable = Some(e.to_string());
            }
            Err(e) => {
                tracing::warn!(sop_uid = item.sop_uid, "outbox: refused: {e}");
                store.outbox_mark_failed(item.id, &e.to_string())?;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

enum Sent {
    Now,
    AlreadyThere,
    ByDimse,
}

async fn send_one(store: &Store, destination: &Destination<'_>, item: &OutboxItem) -> Result<Sent, PacsError> {
    // A lookup that fails (DICOMweb down) is "unknown": go on and send, DIMSE fallback included.
    if (item.state == OutboxState::Sending || item.attempts > 0)
        && on_pacs(destination.web, &item.sop_uid).await.unwrap_or(false)
    {
        store.outbox_mark_sent(item.id)?;
        store.audit("outbox", "confirmed-on-pacs", &item.sop_uid, destination.name)?;
        return Ok(Sent::AlreadyThere);
    }
    store.outbox_begin(item.id)?;
    match destination.web.store_files(None, std::slice::from_ref(&item.file)).await {
        Ok(result) if result.stored.iter().any(|s| s == &item.sop_uid) => {
            store.outbox_mark_sent(item.id)?;
            store.audit("outbox", "sent", &item.sop_uid, destination.name)?;
            Ok(Sent::Now)
        }
        Ok(result) => {
            // A resend after a lost answer may be refused as a duplicate: ask before failing it.
            if on_pacs(destination.web, &item.sop_uid).await.unwrap_or(false) {
                store.outbox_mark_sent(item.id)?;
                store.audit("outbox", "confirmed-on-pacs", &item.sop_uid, destination.name)?;
                return Ok(Sent::AlreadyThere);
            }
            let reason = result.failed.iter().find(|f| f.sop_uid == item.sop_uid).map(|f| f.reason).unwrap_or(0);
            Err(PacsError::Status {
                method: "POST".into(),
                url: destination.web.url("/studies"),
                status: 409,
                body: format!("the PACS did not store {} (failure reason 0x{reason:04X})", item.sop_uid),
            })
        }
        Err(e) if e.is_transient() && destination.dimse_fallback.is_some() => {
            let Some(peer) = destination.dimse_fallback else { return Err(e) };
            let file = item.file.clone();
            let peer = peer.clone();
            let outcomes = tokio::task::spawn_blocking(move || store_scu(&peer, &[file]))
                .await
                .map_err(|join| PacsError::Dimse { peer: "C-STORE".into(), detail: join.to_string() })??;
            match outcomes.first() {
                Some(o) if o.is_success() => {
                    store.outbox_mark_sent(item.id)?;
                    store.audit("outbox", "sent-dimse", &item.sop_uid, destination.name)?;
                    Ok(Sent::ByDimse)
                }
                Some(o) => Err(PacsError::Status {
                    method: "C-STORE".into(),
                    url: destination.name.to_owned(),
                    status: 409,
                    body: format!("DIMSE status 0x{:04X}", o.status),
                }),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Does the PACS have this instance?
async fn on_pacs(web: &DicomWebClient, sop_uid: &str) -> Result<bool, PacsError> {
    let found = web
        .search(
            &crate::QidoLevel::Instances { study: None, series: None },
            &QidoQuery::new().matching("SOPInstanceUID", sop_uid).limit(1),
        )
        .await?;
    Ok(found.iter().any(|i| i.string(tags::SOP_INSTANCE_UID).as_deref() == Some(sop_uid)))
}
