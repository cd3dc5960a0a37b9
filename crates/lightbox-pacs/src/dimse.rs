//! DIMSE over the DICOM upper layer (dicom-ul): a C-STORE SCP so a PACS or a modality can push
//! studies to the workstation, C-ECHO both ways, and a C-STORE SCU as the outbox's fallback.
//!
//! The SCP writes each incoming dataset straight to a file (meta header, then the data
//! fragments as they arrive: the dataset is never held in memory whole), then imports it into
//! the store. It answers C-STORE with success only after the store has the instance.

use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, meta::FileMetaTable};
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::Association;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, ServerAssociationOptions};
use lightbox_store::{ImportOutcome, Store};

use crate::PacsError;

/// Transfer syntaxes the SCP accepts, in our order of preference when a peer offers several
/// for one SOP class: compressed ones first (less on the wire; stored as sent, never transcoded).
pub const ACCEPTED_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.70", // JPEG lossless SV1
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.5",    // RLE lossless
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
    "1.2.840.10008.1.2.1",    // explicit VR little endian
    "1.2.840.10008.1.2",      // implicit VR little endian
    "1.2.840.10008.1.2.2",    // explicit VR big endian (retired, still sent by old modalities)
];

/// Lightbox's Implementation Class UID (file meta headers written by the SCP).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.71367897954943711243925203341220614524";

const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
const NO_DATA_SET: u16 = 0x0101;
const STATUS_SUCCESS: u16 = 0x0000;
const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;
const STATUS_UNRECOGNIZED_OPERATION: u16 = 0x0211;

/// What the SCP reports as it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScpEvent {
    Associated { calling_ae: String, peer: String },
    Echo { calling_ae: String },
    Stored { calling_ae: String, sop_uid: String, already_stored: bool, bytes: u64 },
    Failed { calling_ae: String, detail: String },
    Released { calling_ae: String, instances: usize },
}

/// C-STORE SCP settings.
#[derive(Clone, Debug)]
pub struct ScpConfig {
    pub ae_title: String,
    /// Where to listen, e.g. `0.0.0.0:11112`.
    pub bind: SocketAddr,
    pub store_root: PathBuf,
    /// Refuse associations whose called AE title is not ours.
    pub check_called_ae: bool,
    /// Calling AE titles allowed to push (the PACS, the modalities); empty: any.
    pub allowed_calling_aets: Vec<String>,
}

/// Who may associate: our called AE title (optionally) and a list of calling AE titles.
struct Policy {
    check_called_ae: bool,
    allowed: Vec<String>,
}

impl dicom_ul::association::server::AccessControl for Policy {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&dicom_ul::pdu::UserIdentity>,
    ) -> Result<(), dicom_ul::pdu::AssociationRJServiceUserReason> {
        use dicom_ul::pdu::AssociationRJServiceUserReason as Reason;
        if self.check_called_ae && called_ae_title.trim() != this_ae_title.trim() {
            return Err(Reason::CalledAETitleNotRecognized);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a.trim() == calling_ae_title.trim()) {
            return Err(Reason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Associations served at once; more are refused (closed) until one ends.
const MAX_ASSOCIATIONS: usize = 32;
/// The largest PDU we announce and accept (256 KiB less the PDU header).
const MAX_PDU_BYTES: u32 = 262_144 - 6;
/// Largest command set accepted (real ones are a few hundred bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A listening C-STORE SCP.
pub struct StoreScp {
    listener: TcpListener,
    config: ScpConfig,
    stop: Arc<AtomicBool>,
}

/// A running SCP; dropping it stops accepting new associations.
pub struct ScpHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScpHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ScpHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}

impl StoreScp {
    pub fn bind(config: ScpConfig) -> Result<Self, PacsError> {
        // Open the store once here so a bad store path fails now, not at the first push.
        Store::open(&config.store_root)?;
        crate::wado::sweep_incoming(&config.store_root.join("incoming"));
        let listener = TcpListener::bind(config.bind)
            .map_err(|e| PacsError::Dimse { peer: config.bind.to_string(), detail: format!("cannot listen: {e}") })?;
        Ok(Self { listener, config, stop: Arc::new(AtomicBool::new(false)) })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, PacsError> {
        self.listener
            .local_addr()
            .map_err(|e| PacsError::Dimse { peer: self.config.bind.to_string(), detail: e.to_string() })
    }

    /// Serves on a background thread, one thread per association.
    pub fn spawn(self, events: Option<Sender<ScpEvent>>) -> Result<ScpHandle, PacsError> {
        let addr = self.local_addr()?;
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name("lightbox-scp".into())
            .spawn(move || self.serve(events))
            .map_err(|e| PacsError::Dimse { peer: addr.to_string(), detail: e.to_string() })?;
        Ok(ScpHandle { addr, stop, thread: Some(thread) })
    }

    /// Accepts associations until stopped (blocking).
    pub fn serve(self, events: Option<Sender<ScpEvent>>) {
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else {
                // Out of file descriptors or similar: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if active.load(Ordering::SeqCst) >= MAX_ASSOCIATIONS {
                tracing::warn!("{MAX_ASSOCIATIONS} associations open; refusing another");
                continue; // dropping the stream closes it
            }
            active.fetch_add(1, Ordering::SeqCst);
            let active = active.clone();
            let config = self.config.clone();
            let events = events.clone();
            let _ = std::thread::Builder::new().name("lightbox-scp-assoc".into()).spawn(move || {
                struct Release(Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Release {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _release = Release(active);
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = serve_association(stream, &config, events.as_ref()) {
                    tracing::warn!(peer, "association ended with an error: {e}");
                    if let Some(events) = &events {
                        let _ = events.send(ScpEvent::Failed { calling_ae: peer, detail: e.to_string() });
                    }
                }
            });
        }
    }
}

/// An incoming C-STORE whose data fragments are being written to a file.
struct Incoming {
    message_id: u16,
    presentation_context: u8,
    sop_class: String,
    sop_uid: String,
    path: PathBuf,
    /// Closed before `_part` deletes the file (fields drop in order).
    file: BufWriter<std::fs::File>,
    bytes: u64,
    _part: PartFile,
}

/// Deletes a partial file when dropped: whichever way the association ends (a write that fails
/// on a full disk, a lost peer, a command set that does not parse), no `.part` file stays
/// behind to keep the disk full.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serve_association(
    stream: TcpStream,
    config: &ScpConfig,
    events: Option<&Sender<ScpEvent>>,
) -> Result<(), PacsError> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let dimse = |detail: String| PacsError::Dimse { peer: peer.clone(), detail };
    // Strict: a PDU longer than the maximum we announce is refused before it is buffered.
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Policy {
            check_called_ae: config.check_called_ae,
            allowed: config.allowed_calling_aets.clone(),
        })
        .ae_title(config.ae_title.clone())
        .promiscuous(true)
        .strict(true)
        .max_pdu_length(MAX_PDU_BYTES)
        .read_timeout(Duration::from_secs(120))
        .write_timeout(Duration::from_secs(120));
    for ts in ACCEPTED_TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*ts);
    }
    let mut association = options.establish(stream).map_err(|e| dimse(format!("association refused: {e}")))?;
    let calling_ae = association.peer_ae_title().to_owned();
    let contexts = association.presentation_contexts().to_vec();
    emit(events, ScpEvent::Associated { calling_ae: calling_ae.clone(), peer: peer.clone() });

    let mut store = Store::open(&config.store_root)?;
    let incoming_dir = config.store_root.join("incoming");
    std::fs::create_dir_all(&incoming_dir).map_err(|source| PacsError::Io { path: incoming_dir.clone(), source })?;
    let mut command = Vec::new();
    let mut current: Option<Incoming> = None;
    let mut stored = 0;
    loop {
        let pdu = match association.receive() {
            Ok(pdu) => pdu,
            Err(e) => {
                drop_incoming(current.take());
                return Err(dimse(format!("connection lost: {e}")));
            }
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    match value.value_type {
                        PDataValueType::Command => {
                            command.extend_from_slice(&value.data);
                            if command.len() > MAX_COMMAND_BYTES {
                                drop_incoming(current.take());
                                let _ = association.abort();
                                return Err(dimse(format!("command set over {MAX_COMMAND_BYTES} bytes")));
                            }
                            if !value.is_last {
                                continue;
                            }
                            let set = InMemDicomObject::read_dataset_with_ts(
                                &command[..],
                                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                            )
                            .map_err(|e| dimse(format!("unreadable command set: {e}")))?;
                            command.clear();
                            let field = ushort(&set, tags::COMMAND_FIELD).unwrap_or(0);
                            let message_id = ushort(&set, tags::MESSAGE_ID).unwrap_or(0);
                            let sop_class = text(&set, tags::AFFECTED_SOP_CLASS_UID);
                            match field {
                                C_ECHO_RQ => {
                                    let rsp = response(C_ECHO_RSP, message_id, &sop_class, None, STATUS_SUCCESS);
                                    send_command(&mut association, value.presentation_context_id, &rsp)
                                        .map_err(dimse)?;
                                    emit(events, ScpEvent::Echo { calling_ae: calling_ae.clone() });
                                }
                                C_STORE_RQ => {
                                    let sop_uid = text(&set, tags::AFFECTED_SOP_INSTANCE_UID);
                                    let ts = contexts
                                        .iter()
                                        .find(|pc| pc.id == value.presentation_context_id)
                                        .map(|pc| pc.transfer_syntax.clone())
                                        .unwrap_or_else(|| "1.2.840.10008.1.2".into());
                                    drop_incoming(current.take());
                                    current = Some(
                                        begin_file(
                                            &incoming_dir,
                                            &sop_class,
                                            &sop_uid,
                                            &ts,
                                            message_id,
                                            value.presentation_context_id,
                                        )
                                        .map_err(|e| dimse(format!("cannot write {sop_uid}: {e}")))?,
                                    );
                                }
                                other => {
                                    let rsp = response(
                                        other | 0x8000,
                                        message_id,
                                        &sop_class,
                                        None,
                                        STATUS_UNRECOGNIZED_OPERATION,
                                    );
                                    send_command(&mut association, value.presentation_context_id, &rsp)
                                        .map_err(dimse)?;
                                }
                            }
                        }
                        PDataValueType::Data => {
                            let Some(incoming) = current.as_mut() else {
                                return Err(dimse("data set without a C-STORE request".into()));
                            };
                            incoming.file.write_all(&value.data).map_err(|e| dimse(format!("write: {e}")))?;
                            incoming.bytes += value.data.len() as u64;
                            if value.is_last
                                && let Some(incoming) = current.take()
                            {
                                let meta = incoming.clone_meta();
                                let (status, event) = finish(incoming, &mut store, &calling_ae);
                                if status == STATUS_SUCCESS {
                                    stored += 1;
                                }
                                let rsp = response(
                                    C_STORE_RSP,
                                    meta.message_id,
                                    &meta.sop_class,
                                    Some(&meta.sop_uid),
                                    status,
                                );
                                send_command(&mut association, meta.presentation_context, &rsp).map_err(dimse)?;
                                emit(events, event);
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                drop_incoming(current.take()); // a C-STORE the peer never finished
                let _ = association.send(&Pdu::ReleaseRP);
                emit(events, ScpEvent::Released { calling_ae: calling_ae.clone(), instances: stored });
                return Ok(());
            }
            Pdu::AbortRQ { .. } => {
                drop_incoming(current.take());
                return Err(dimse("the peer aborted the association".into()));
            }
            other => {
                drop_incoming(current.take());
                return Err(dimse(format!("unexpected PDU {other:?}")));
            }
        }
    }
}

struct Meta {
    message_id: u16,
    presentation_context: u8,
    sop_class: String,
    sop_uid: String,
}

impl Incoming {
    fn clone_meta(&self) -> Meta {
        Meta {
            message_id: self.message_id,
            presentation_context: self.presentation_context,
            sop_class: self.sop_class.clone(),
            sop_uid: self.sop_uid.clone(),
        }
    }
}

fn begin_file(
    dir: &Path,
    sop_class: &str,
    sop_uid: &str,
    ts: &str,
    message_id: u16,
    presentation_context: u8,
) -> std::io::Result<Incoming> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(ts)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .build()
        .map_err(std::io::Error::other)?;
    let path = dir.join(format!("scp-{}-{}.part", std::process::id(), fastrand::u64(..)));
    let created = std::fs::File::create(&path)?;
    let part = PartFile(path.clone());
    let mut file = BufWriter::with_capacity(256 * 1024, created);
    file.write_all(&[0u8; 128])?;
    file.write_all(b"DICM")?;
    meta.write(&mut file).map_err(std::io::Error::other)?;
    Ok(Incoming {
        message_id,
        presentation_context,
        sop_class: sop_class.to_owned(),
        sop_uid: sop_uid.to_owned(),
        path,
        file,
        bytes: 0,
        _part: part,
    })
}

/// Ends a C-STORE the peer did not finish: its partial file goes.
fn drop_incoming(incoming: Option<Incoming>) {
    drop(incoming);
}

/// Closes the file and imports it; the status to answer and the event to report.
fn finish(incoming: Incoming, store: &mut Store, calling_ae: &str) -> (u16, ScpEvent) {
    let sop_uid = incoming.sop_uid.clone();
    let path = incoming.path.clone();
    let bytes = incoming.bytes;
    let flushed = incoming.file.into_inner().map_err(|e| e.into_error().to_string());
    let outcome = flushed.and_then(|_| store.import_file(&path).map_err(|e| e.to_string()));
    let _ = std::fs::remove_file(&path);
    match outcome {
        Ok(outcome) => {
            let event = ScpEvent::Stored {
                calling_ae: calling_ae.to_owned(),
                sop_uid,
                already_stored: outcome == ImportOutcome::AlreadyStored,
                bytes,
            };
            (STATUS_SUCCESS, event)
        }
        Err(detail) => {
            let status = if detail.contains("No space") || detail.contains("database") {
                STATUS_OUT_OF_RESOURCES
            } else {
                STATUS_CANNOT_UNDERSTAND
            };
            tracing::warn!(sop_uid, "C-STORE refused: {detail}");
            (status, ScpEvent::Failed { calling_ae: calling_ae.to_owned(), detail })
        }
    }
}

fn emit(events: Option<&Sender<ScpEvent>>, event: ScpEvent) {
    if let Some(events) = events {
        let _ = events.send(event);
    }
}

fn ushort(set: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u16> {
    set.element(tag).ok()?.to_int::<u16>().ok()
}

fn text(set: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    set.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

fn response(field: u16, message_id: u16, sop_class: &str, sop_uid: Option<&str>, status: u16) -> InMemDicomObject {
    let mut elements = vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid_value(sop_class))),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(sop_uid) = sop_uid {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(uid_value(sop_uid)),
        ));
    }
    InMemDicomObject::command_from_element_iter(elements)
}

/// UIDs are padded to even length with NUL.
fn uid_value(uid: &str) -> String {
    if uid.len() % 2 == 1 { format!("{uid}\0") } else { uid.to_owned() }
}

/// A command set as one P-DATA PDU on `context`.
fn command_pdu(context: u8, set: &InMemDicomObject) -> Result<Pdu, String> {
    let data = encode_command(set)?;
    Ok(Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    })
}

fn encode_command(set: &InMemDicomObject) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    set.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| format!("encode command: {e}"))?;
    Ok(bytes)
}

fn send_command(
    association: &mut dicom_ul::association::ServerAssociation<TcpStream>,
    context: u8,
    set: &InMemDicomObject,
) -> Result<(), String> {
    let pdu = command_pdu(context, set)?;
    association.send(&pdu).map_err(|e| format!("send response: {e}"))
}

/// A DIMSE peer (a PACS's storage SCP).
#[derive(Clone, Debug)]
pub struct DimsePeer {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Our AE title.
    pub calling_ae_title: String,
}

impl DimsePeer {
    fn address(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// C-ECHO: is the peer there and does it accept us?
pub fn echo(peer: &DimsePeer) -> Result<(), PacsError> {
    let dimse = |detail: String| PacsError::Dimse { peer: peer.address(), detail };
    let mut association = ClientAssociationOptions::new()
        .calling_ae_title(peer.calling_ae_title.clone())
        .called_ae_title(peer.ae_title.clone())
        .with_abstract_syntax(uids::VERIFICATION)
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .establish_with(&peer.address())
        .map_err(|e| dimse(format!("association failed: {e}")))?;
    let context = association
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .ok_or_else(|| dimse("no presentation context".into()))?;
    let rq = InMemDicomObject::command_from_element_iter([
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid_value(uids::VERIFICATION))),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_ECHO_RQ)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
    ]);
    let pdu = command_pdu(context, &rq).map_err(dimse)?;
    association.send(&pdu).map_err(|e| dimse(format!("send: {e}")))?;
    let status = read_response_status(&mut association).map_err(dimse)?;
    let _ = association.release();
    if status != STATUS_SUCCESS {
        return Err(dimse(format!("C-ECHO status 0x{status:04X}")));
    }
    Ok(())
}

/// The outcome of sending one file with C-STORE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOutcome {
    pub sop_uid: String,
    /// DIMSE status: 0 success, 0xB000/0xB007/0xB006 warnings, anything else a failure.
    pub status: u16,
}

impl StoreOutcome {
    pub fn is_success(&self) -> bool {
        self.status == STATUS_SUCCESS || (self.status & 0xF000) == 0xB000
    }
}

/// Sends files with C-STORE on one association, each in the transfer syntax it is stored in
/// (proposed with explicit and implicit little endian as alternatives; nothing is transcoded,
/// so a file whose syntax the peer refuses fails with a named error).
pub fn store_scu(peer: &DimsePeer, files: &[PathBuf]) -> Result<Vec<StoreOutcome>, PacsError> {
    let dimse = |detail: String| PacsError::Dimse { peer: peer.address(), detail };
    // Read the meta header of each file: SOP class, instance, transfer syntax, dataset offset.
    let mut headers = Vec::with_capacity(files.len());
    for file in files {
        headers.push(read_meta(file)?);
    }
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(peer.calling_ae_title.clone())
        .called_ae_title(peer.ae_title.clone())
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120));
    let mut proposed: Vec<(String, String)> = Vec::new();
    for (meta, _) in &headers {
        let key = (meta.media_storage_sop_class_uid().to_owned(), meta.transfer_syntax().to_owned());
        if !proposed.contains(&key) {
            options = options.with_presentation_context(key.0.clone(), vec![key.1.clone()]);
            proposed.push(key);
        }
    }
    let mut association =
        options.establish_with(&peer.address()).map_err(|e| dimse(format!("association failed: {e}")))?;
    let contexts = association.presentation_contexts().to_vec();
    let mut outcomes = Vec::with_capacity(files.len());
    for (i, ((meta, offset), file)) in headers.iter().zip(files).enumerate() {
        let sop_class = meta.media_storage_sop_class_uid().trim_end_matches('\0').to_owned();
        let sop_uid = meta.media_storage_sop_instance_uid().trim_end_matches('\0').to_owned();
        let ts = meta.transfer_syntax().trim_end_matches('\0');
        let Some(context) = contexts.iter().find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && pc.abstract_syntax.trim_end_matches('\0') == sop_class
                && pc.transfer_syntax.trim_end_matches('\0') == ts
        }) else {
            let _ = association.abort();
            return Err(dimse(format!(
                "{}: the peer accepts neither this SOP class nor transfer syntax {ts}",
                file.display()
            )));
        };
        let message_id = u16::try_from(i % 0xFFFF + 1).unwrap_or(1);
        let rq = InMemDicomObject::command_from_element_iter([
            DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid_value(&sop_class))),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_STORE_RQ)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
            DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid_value(&sop_uid))),
        ]);
        let pdu = command_pdu(context.id, &rq).map_err(dimse)?;
        association.send(&pdu).map_err(|e| dimse(format!("send: {e}")))?;
        let mut source = std::fs::File::open(file).map_err(|source| PacsError::Io { path: file.clone(), source })?;
        std::io::Seek::seek(&mut source, std::io::SeekFrom::Start(*offset))
            .map_err(|source| PacsError::Io { path: file.clone(), source })?;
        {
            let mut writer = association.send_pdata(context.id);
            std::io::copy(&mut source, &mut writer).map_err(|e| dimse(format!("send {}: {e}", file.display())))?;
            writer.finish().map_err(|e| dimse(format!("send {}: {e}", file.display())))?;
        }
        let status = read_response_status(&mut association).map_err(dimse)?;
        outcomes.push(StoreOutcome { sop_uid, status });
    }
    let _ = association.release();
    Ok(outcomes)
}

/// A file's meta header and where its dataset starts.
fn read_meta(file: &Path) -> Result<(FileMetaTable, u64), PacsError> {
    let bad = |detail: String| PacsError::Dimse { peer: file.display().to_string(), detail };
    let mut f = std::fs::File::open(file).map_err(|source| PacsError::Io { path: file.to_owned(), source })?;
    let mut preamble = [0u8; 128];
    std::io::Read::read_exact(&mut f, &mut preamble).map_err(|e| bad(format!("not a DICOM file: {e}")))?;
    let meta = FileMetaTable::from_reader(std::io::BufReader::new(f))
        .map_err(|e| bad(format!("no DICOM file meta header: {e}")))?;
    // preamble + "DICM" + the (0002,0000) element (12 bytes) + the rest of the group.
    let offset = 128 + 4 + 12 + u64::from(meta.information_group_length);
    Ok((meta, offset))
}

fn read_response_status(association: &mut dicom_ul::association::ClientAssociation<TcpStream>) -> Result<u16, String> {
    let mut command = Vec::new();
    loop {
        match association.receive().map_err(|e| format!("no response: {e}"))? {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type == PDataValueType::Command {
                        command.extend_from_slice(&value.data);
                        if value.is_last {
                            let set = InMemDicomObject::read_dataset_with_ts(
                                &command[..],
                                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                            )
                            .map_err(|e| format!("unreadable response: {e}"))?;
                            return ushort(&set, tags::STATUS).ok_or_else(|| "response without a status".to_owned());
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("the peer aborted: {source:?}")),
            other => return Err(format!("unexpected PDU {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The `.part` file of a C-STORE goes when its `Incoming` is dropped without being
    /// finished: what every early return of an association (`?`) does.
    #[test]
    fn a_partial_file_is_deleted_however_its_c_store_ends() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mr = "1.2.840.10008.5.1.4.1.1.4";
        let incoming = super::begin_file(dir.path(), mr, "1.2.3.4", "1.2.840.10008.1.2.1", 7, 1)?;
        let path = incoming.path.clone();
        assert!(path.exists());
        drop(incoming);
        assert!(!path.exists(), "{} left behind", path.display());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }
}
