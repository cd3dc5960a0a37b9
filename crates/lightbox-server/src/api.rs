//! The resources, their JSON and their OpenAPI description.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use lightbox_workflow::WorkflowError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;

/// The one error body of the API.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine code, e.g. `unknown_series`.
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { code: code.to_owned(), message: message.into() })).into_response()
}

/// A workflow error as an HTTP answer: the caller's mistakes are 4xx, ours 500.
fn workflow_error(e: WorkflowError) -> Response {
    let status = match &e {
        WorkflowError::UnknownSeries { .. }
        | WorkflowError::UnknownPipeline(_)
        | WorkflowError::Analysis(_)
        | WorkflowError::Incomplete { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        WorkflowError::Busy(_) | WorkflowError::InputChanged { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("request failed: {e}");
    }
    error(status, e.code(), e.to_string())
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, WorkflowError> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(workflow_error)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `draining` while shutting down.
    pub status: String,
    pub version: String,
    /// Jobs queued and running now.
    pub queued: usize,
    pub running: usize,
    /// Jobs waiting for the rest of their input (a series or study still arriving); each fails
    /// after the wait limit, naming what is missing.
    pub waiting: usize,
}

#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "Up", body = Health), (status = 503, description = "Draining", body = Health)))]
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let store = state.config.store.clone();
    let jobs = match blocking(move || lightbox_workflow::job_counts(&store)).await {
        Ok(jobs) => jobs,
        Err(r) => return r,
    };
    let count = |state: &str| jobs.get(state).copied().unwrap_or(0);
    let draining = state.draining.load(Ordering::SeqCst);
    let body = Health {
        status: if draining { "draining" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        queued: count("queued"),
        running: count("running"),
        waiting: count("waiting"),
    };
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(body)).into_response()
}

/// Filters and paging for `/studies` (DICOM wildcards `*` and `?` in names and IDs).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StudyQuery {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    /// Earliest study date, YYYYMMDD.
    #[param(pattern = "^[0-9]{8}$")]
    pub date_from: Option<String>,
    /// Latest study date, YYYYMMDD.
    #[param(pattern = "^[0-9]{8}$")]
    pub date_to: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Study {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    /// YYYYMMDD.
    pub date: String,
    pub description: String,
    pub accession_number: String,
    /// Modalities of its series, joined by `\`.
    pub modalities: String,
    pub series: u32,
    pub instances: u32,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct StudyPage {
    pub items: Vec<Study>,
    pub limit: u32,
    pub offset: u32,
    /// The next page, when this one was full.
    pub next: Option<String>,
}

fn date_ok(d: &Option<String>) -> bool {
    d.as_ref().is_none_or(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
}

#[utoipa::path(get, path = "/studies", tag = "studies", params(StudyQuery),
    responses((status = 200, body = StudyPage), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list_studies(
    State(state): State<Arc<AppState>>,
    query: Result<Query<StudyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    };
    if !date_ok(&q.date_from) || !date_ok(&q.date_to) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_date", "dates are YYYYMMDD");
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_limit", "limit is 1 to 500");
    }
    let offset = q.offset.unwrap_or(0);
    if offset > 1_000_000 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_offset", "offset is 0 to 1000000");
    }
    let query = lightbox_workflow::WorklistQuery {
        patient_name: q.patient_name.clone().filter(|s| !s.is_empty()),
        patient_id: q.patient_id.clone().filter(|s| !s.is_empty()),
        accession_number: q.accession_number.clone().filter(|s| !s.is_empty()),
        modality: q.modality.clone().filter(|s| !s.is_empty()),
        date_from: q.date_from.clone(),
        date_to: q.date_to.clone(),
        sort: lightbox_workflow::WorklistSort::DateNewestFirst,
        limit,
        offset,
    };
    let store = state.config.store.clone();
    let rows = match blocking(move || lightbox_workflow::worklist(&store, &query)).await {
        Ok(rows) => rows,
        Err(r) => return r,
    };
    let full = rows.len() as u32 == limit;
    let items: Vec<Study> = rows
        .into_iter()
        .map(|s| Study {
            study_uid: s.study_uid,
            patient_id: s.patient_id,
            patient_name: s.patient_name,
            date: s.date,
            description: s.description,
            accession_number: s.accession_number,
            modalities: s.modalities,
            series: s.series,
            instances: s.instances,
        })
        .collect();
    let next = full.then(|| format!("/studies?limit={limit}&offset={}", offset + limit));
    Json(StudyPage { items, limit, offset, next }).into_response()
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub series_uid: String,
    pub modality: String,
    pub description: String,
    pub instances: u32,
}

#[utoipa::path(get, path = "/studies/{study_uid}/series", tag = "studies",
    params(("study_uid" = String, Path, description = "Study Instance UID")),
    responses((status = 200, body = [Series]), (status = 404, description = "No such study", body = ErrorBody)))]
async fn list_series(State(state): State<Arc<AppState>>, Path(study_uid): Path<String>) -> Response {
    let store = state.config.store.clone();
    let uid = study_uid.clone();
    match blocking(move || lightbox_workflow::study_series(&store, &uid)).await {
        Ok(Some(series)) => Json(
            series
                .into_iter()
                .map(|(series_uid, modality, description, instances)| Series {
                    series_uid,
                    modality,
                    description,
                    instances,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_study", format!("no study {study_uid} in the store")),
        Err(r) => r,
    }
}

/// One analysis result of a series: AI output until a radiologist signs it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AnalysisResult {
    pub job_id: i64,
    pub pipeline: String,
    /// `done`, `failed`, `running`, `queued`, `cancelled`, `waiting` (its input is incomplete:
    /// the rest of a dynamic series has not arrived) or `superseded` (a newer input took over).
    pub state: String,
    /// AI-measured volume, mm³.
    pub volume_mm3: Option<f64>,
    pub seg_uid: Option<String>,
    pub sr_uid: Option<String>,
    /// The radiologist who signed it; null while it awaits review.
    pub signed_by: Option<String>,
    pub review: Option<String>,
    pub error: Option<String>,
    /// Always true: these values come from an algorithm and are not a diagnosis.
    pub ai_output: bool,
}

#[utoipa::path(get, path = "/studies/{study_uid}/series/{series_uid}/results", tag = "studies",
    params(("study_uid" = String, Path, description = "Study Instance UID"),
           ("series_uid" = String, Path, description = "Series Instance UID"),
           ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses((status = 200, body = [AnalysisResult], headers(("ETag" = String, description = "Changes when the results do"))),
              (status = 304, description = "Unchanged since the ETag given"),
              (status = 404, description = "No such study or series", body = ErrorBody)))]
async fn series_results(
    State(state): State<Arc<AppState>>,
    Path((study_uid, series_uid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let store = state.config.store.clone();
    let (study, series) = (study_uid.clone(), series_uid.clone());
    let found = blocking(move || {
        let Some(all) = lightbox_workflow::study_series(&store, &study)? else {
            return Ok(None);
        };
        if !all.iter().any(|(uid, ..)| *uid == series) {
            return Ok(Some(None));
        }
        let rows = lightbox_workflow::pipeline::results(&store)?;
        Ok(Some(Some(rows.into_iter().filter(|r| r.series_uid == series).collect::<Vec<_>>())))
    })
    .await;
    let rows = match found {
        Ok(Some(Some(rows))) => rows,
        Ok(Some(None)) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_series",
                format!("no series {series_uid} in study {study_uid}"),
            );
        }
        Ok(None) => return error(StatusCode::NOT_FOUND, "unknown_study", format!("no study {study_uid} in the store")),
        Err(r) => return r,
    };
    let body: Vec<AnalysisResult> = rows
        .into_iter()
        .map(|r| AnalysisResult {
            job_id: r.job_id,
            pipeline: r.pipeline,
            state: r.state,
            volume_mm3: r.volume_mm3,
            seg_uid: r.seg_uid,
            sr_uid: r.sr_uid,
            signed_by: r.signed_by,
            review: r.review,
            error: r.error,
            ai_output: true,
        })
        .collect();
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let etag = format!("\"{}\"", &crate::token_hash(&String::from_utf8_lossy(&bytes))[..32]);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::OK, [(header::ETAG, etag), (header::CONTENT_TYPE, "application/json".to_owned())], bytes)
        .into_response()
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub pipeline: String,
    /// `queued`, `running`, `done`, `failed`, `cancelled`, `waiting` (its input is incomplete:
    /// the rest of a dynamic series has not arrived; `stage` says what is missing) or
    /// `superseded` (the rest arrived: a newer job of the same series took over).
    pub state: String,
    /// `cpu` or `gpu`.
    pub device: String,
    pub stage: String,
    pub series_uid: String,
    pub seconds: Option<f64>,
    pub runs: i64,
    pub error: Option<String>,
    pub created_at: String,
}

fn job_dto(j: lightbox_workflow::pipeline::JobRow) -> Job {
    Job {
        id: j.id,
        pipeline: j.pipeline,
        state: j.state,
        device: j.device,
        stage: j.stage,
        series_uid: j.series_uid,
        seconds: j.seconds,
        runs: j.runs,
        error: j.error,
        created_at: j.created_at,
    }
}

/// Run a pipeline on a stored series.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// A pipeline from `/models`.
    #[schema(
        pattern = "^(threshold-volume|brain-atrophy|ms-lesion-change|breast-dce|prostate-bpmri)$",
        example = "threshold-volume"
    )]
    pub pipeline: String,
    /// A Series Instance UID in the store (an unknown one is refused with 422).
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)*$", max_length = 64)]
    pub series_uid: String,
    /// `threshold-volume`: the threshold in the series' values (default 1000).
    pub threshold: Option<f64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Only jobs in this state.
    #[param(pattern = "^(queued|running|done|failed|cancelled|waiting|superseded)$")]
    pub state: Option<String>,
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = [Job]), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn list_jobs(
    State(state): State<Arc<AppState>>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_limit", "limit is 1 to 500");
    }
    const STATES: [&str; 7] = ["queued", "running", "done", "failed", "cancelled", "waiting", "superseded"];
    if let Some(wanted) = &q.state
        && !STATES.contains(&wanted.as_str())
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_state", format!("state is one of {}", STATES.join(", ")));
    }
    let store = state.config.store.clone();
    match blocking(move || lightbox_workflow::pipeline::job_rows(&store)).await {
        Ok(rows) => Json(
            rows.into_iter()
                .filter(|j| q.state.as_ref().is_none_or(|s| *s == j.state))
                .take(limit as usize)
                .map(job_dto)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = NewJob,
    responses((status = 201, description = "Queued", body = Job, headers(("Location" = String, description = "The job"))),
              (status = 400, description = "Not JSON", body = ErrorBody),
              (status = 409, description = "The same input and pipeline have a job already", body = ErrorBody,
                  headers(("Location" = String, description = "That job"))),
              (status = 413, description = "Too large", body = ErrorBody),
              (status = 415, description = "Not application/json", body = ErrorBody),
              (status = 422, description = "Unknown pipeline or series", body = ErrorBody)))]
async fn create_job(State(state): State<Arc<AppState>>, body: Result<Json<NewJob>, JsonRejection>) -> Response {
    let Json(new) = match body {
        Ok(b) => b,
        Err(JsonRejection::JsonDataError(e)) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_job", e.body_text());
        }
        Err(JsonRejection::MissingJsonContentType(e)) => {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json", e.body_text());
        }
        Err(e) => return error(e.status(), "bad_request", e.body_text()),
    };
    let store = state.config.store.clone();
    let threshold = new.threshold.unwrap_or(1000.0);
    let queued = blocking(move || {
        let outcome = lightbox_workflow::pipeline::enqueue(&store, &new.pipeline, &new.series_uid, threshold)?;
        let id = match &outcome {
            lightbox_workflow::pipeline::Enqueued::Created(id)
            | lightbox_workflow::pipeline::Enqueued::Exists { id, .. } => *id,
        };
        Ok((outcome, lightbox_workflow::pipeline::job_row(&store, id)?))
    })
    .await;
    let (outcome, row) = match queued {
        Ok((outcome, Some(row))) => (outcome, row),
        Ok((_, None)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the job vanished"),
        Err(r) => return r,
    };
    let location = HeaderValue::from_str(&format!("/jobs/{}", row.id)).unwrap_or(HeaderValue::from_static("/jobs"));
    match outcome {
        lightbox_workflow::pipeline::Enqueued::Created(_) => {
            if let Some(engine) = &state.engine {
                engine.wake();
            }
            (StatusCode::CREATED, [(header::LOCATION, location)], Json(job_dto(row))).into_response()
        }
        lightbox_workflow::pipeline::Enqueued::Exists { id, state } => {
            let mut r = error(
                StatusCode::CONFLICT,
                "job_exists",
                format!("job {id} ({state}) has the same input and pipeline"),
            );
            r.headers_mut().insert(header::LOCATION, location);
            r
        }
    }
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, description = "No such job", body = ErrorBody),
              (status = 410, description = "Cancelled (deleted); `/jobs?state=cancelled` still lists it", body = ErrorBody)))]
async fn get_job(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return error(StatusCode::NOT_FOUND, "unknown_job", "no such job (ids are integers)");
    };
    let store = state.config.store.clone();
    match blocking(move || lightbox_workflow::pipeline::job_row(&store, id)).await {
        Ok(Some(row)) if row.state == "cancelled" => {
            error(StatusCode::GONE, "job_cancelled", format!("job {id} was cancelled"))
        }
        Ok(Some(row)) => Json(job_dto(row)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(delete, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Cancelled; a running job stops at its next stage", body = Job),
              (status = 404, description = "No such job", body = ErrorBody),
              (status = 409, description = "It has ended already (done, failed or superseded)", body = ErrorBody),
              (status = 410, description = "Cancelled already", body = ErrorBody)))]
async fn cancel_job(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return error(StatusCode::NOT_FOUND, "unknown_job", "no such job (ids are integers)");
    };
    let store = state.config.store.clone();
    let done = blocking(move || {
        let Some(row) = lightbox_workflow::pipeline::job_row(&store, id)? else {
            return Ok(None);
        };
        let cancelled = lightbox_workflow::pipeline::cancel(&store, id)?;
        Ok(Some((cancelled, if cancelled { lightbox_workflow::pipeline::job_row(&store, id)? } else { Some(row) })))
    })
    .await;
    match done {
        Ok(Some((true, Some(row)))) => (StatusCode::ACCEPTED, Json(job_dto(row))).into_response(),
        Ok(Some((false, Some(row)))) if row.state == "cancelled" => {
            error(StatusCode::GONE, "job_cancelled", format!("job {id} was cancelled already"))
        }
        Ok(Some((_, row))) => error(
            StatusCode::CONFLICT,
            "job_ended",
            format!("job {id} is {} and cannot be cancelled", row.map_or_else(|| "gone".into(), |r| r.state)),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Queued again; the engine runs it", body = Job),
              (status = 404, description = "No such job", body = ErrorBody),
              (status = 409, description = "Not failed, cancelled or waiting (queued, running, done or superseded)", body = ErrorBody)))]
async fn retry_job(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return error(StatusCode::NOT_FOUND, "unknown_job", "no such job (ids are integers)");
    };
    let store = state.config.store.clone();
    let done = blocking(move || {
        let requeued = lightbox_workflow::pipeline::requeue(&store, id, "api")?;
        Ok((requeued, lightbox_workflow::pipeline::job_row(&store, id)?))
    })
    .await;
    match done {
        Ok((true, Some(row))) => {
            if let Some(engine) = &state.engine {
                engine.wake();
            }
            (StatusCode::ACCEPTED, Json(job_dto(row))).into_response()
        }
        Ok((false, Some(row))) => error(
            StatusCode::CONFLICT,
            "job_not_retryable",
            format!("job {id} is {}: only a failed, cancelled or waiting job is run again", row.state),
        ),
        Ok((_, None)) => error(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id}")),
        Err(r) => r,
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleDto {
    pub name: String,
    pub pipeline: String,
    pub modality: Option<String>,
    pub description: Option<String>,
    pub sequence: Vec<String>,
    pub body_part: Option<String>,
    pub plane: Option<String>,
    pub acquisition: Option<String>,
    pub min_instances: Option<u32>,
    pub threshold: Option<f64>,
    /// The model package a `prostate-bpmri` or `breast-dce` rule runs.
    pub model: Option<String>,
    /// The gland/zone model package of a `prostate-bpmri` rule.
    pub zone_model: Option<String>,
    pub auto_send: bool,
}

#[utoipa::path(get, path = "/rules", tag = "service", responses((status = 200, description = "The dispatch rules in force", body = [RuleDto])))]
async fn list_rules(State(state): State<Arc<AppState>>) -> Response {
    let rules: Vec<RuleDto> = state
        .config
        .rules
        .iter()
        .flat_map(|r| r.rules.iter())
        .map(|r| RuleDto {
            name: r.name.clone(),
            pipeline: r.pipeline.clone(),
            modality: r.modality.clone(),
            description: r.description.clone(),
            sequence: r.sequence.clone(),
            body_part: r.body_part.clone(),
            plane: r.plane.clone(),
            acquisition: r.acquisition.clone(),
            min_instances: r.min_instances,
            threshold: r.threshold,
            model: r.model.clone(),
            zone_model: r.zone_model.clone(),
            auto_send: r.auto_send,
        })
        .collect();
    Json(rules).into_response()
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OutboxItem {
    pub id: i64,
    pub sop_uid: String,
    pub study_uid: String,
    pub destination: String,
    /// `pending`, `sending`, `sent`, `failed` or `cancelled`.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
}

#[utoipa::path(get, path = "/outbox", tag = "service", responses((status = 200, body = [OutboxItem])))]
async fn list_outbox(State(state): State<Arc<AppState>>) -> Response {
    let store = state.config.store.clone();
    match blocking(move || lightbox_workflow::pacs::outbox_list(&store)).await {
        Ok(items) => Json(items.into_iter().map(outbox_dto).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}

fn outbox_dto(i: lightbox_workflow::pacs::OutboxItem) -> OutboxItem {
    OutboxItem {
        id: i.id,
        sop_uid: i.sop_uid,
        study_uid: i.study_uid,
        destination: i.destination,
        state: i.state.as_str().to_owned(),
        attempts: i.attempts,
        last_error: i.last_error,
        created_at: i.created_at,
        sent_at: i.sent_at,
    }
}

/// Changes one outbox row by `change` (true when it applied) and answers with the row: 202,
/// 404 when there is no such row, 409 with `refusal` when the change did not apply.
async fn change_outbox_row(
    state: &AppState,
    id: Result<Path<i64>, PathRejection>,
    change: fn(&std::path::Path, i64) -> Result<bool, WorkflowError>,
    refusal: &'static str,
) -> Response {
    let Ok(Path(id)) = id else {
        return error(StatusCode::NOT_FOUND, "unknown_outbox_item", "no such outbox item (ids are integers)");
    };
    let store = state.config.store.clone();
    let done = blocking(move || {
        let Some(_) = lightbox_workflow::pacs::outbox_list(&store)?.into_iter().find(|i| i.id == id) else {
            return Ok(None);
        };
        let changed = change(&store, id)?;
        Ok(lightbox_workflow::pacs::outbox_list(&store)?.into_iter().find(|i| i.id == id).map(|i| (changed, i)))
    })
    .await;
    match done {
        Ok(Some((true, item))) => (StatusCode::ACCEPTED, Json(outbox_dto(item))).into_response(),
        Ok(Some((false, item))) => error(
            StatusCode::CONFLICT,
            "outbox_state",
            format!("outbox item {id} is {}: {refusal}", item.state.as_str()),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_outbox_item", format!("no outbox item {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/outbox/{id}/retry", tag = "service", params(("id" = i64, Path, description = "Outbox item id")),
    responses((status = 202, description = "Queued again (pending); sent now when a PACS is configured", body = OutboxItem),
              (status = 404, description = "No such item", body = ErrorBody),
              (status = 409, description = "Not failed or cancelled", body = ErrorBody)))]
async fn retry_outbox_item(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Response {
    let answer = change_outbox_row(
        &state,
        id,
        lightbox_workflow::pacs::outbox_retry,
        "only a refused (failed) or cancelled item is queued again",
    )
    .await;
    // Send it now, as the workstation's "Send now" does, rather than at the next job's results.
    if answer.status() == StatusCode::ACCEPTED
        && let Some(pacs) = state.config.pacs.clone()
    {
        let store = state.config.store.clone();
        tokio::task::spawn_blocking(move || match lightbox_workflow::pacs::outbox_drain_blocking(&store, &pacs) {
            Ok(report) => tracing::info!(target: "lightbox::outbox", "retry: {report:?}"),
            Err(e) => tracing::warn!(target: "lightbox::outbox", "retry: sending failed: {e}"),
        });
    }
    answer
}

#[utoipa::path(delete, path = "/outbox/{id}", tag = "service", params(("id" = i64, Path, description = "Outbox item id")),
    responses((status = 202, description = "Taken out of the outbox (cancelled); `retry` puts it back", body = OutboxItem),
              (status = 404, description = "No such item", body = ErrorBody),
              (status = 409, description = "Being sent, sent, or cancelled already", body = ErrorBody)))]
async fn cancel_outbox_item(State(state): State<Arc<AppState>>, id: Result<Path<i64>, PathRejection>) -> Response {
    change_outbox_row(
        &state,
        id,
        lightbox_workflow::pacs::outbox_cancel,
        "only a pending or refused (failed) item can be taken out",
    )
    .await
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub name: String,
    pub version: String,
    /// `cpu` or `gpu`.
    pub device: String,
    pub description: String,
}

#[utoipa::path(get, path = "/models", tag = "service", responses((status = 200, description = "The pipelines this server runs", body = [Model])))]
async fn list_models() -> Response {
    Json(
        lightbox_workflow::pipeline::PIPELINES
            .iter()
            .map(|(name, version, device, description)| Model {
                name: (*name).into(),
                version: (*version).into(),
                device: (*device).into(),
                description: (*description).into(),
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Lightbox", description = "The Lightbox workflow engine: studies, analysis jobs and their results, the outbox. \
Research use only; AI output is not a diagnosis."),
    paths(health, list_studies, list_series, series_results, list_jobs, create_job, get_job, cancel_job, retry_job, list_rules,
          list_outbox, retry_outbox_item, cancel_outbox_item, list_models),
    components(schemas(ErrorBody, Health, Study, StudyPage, Series, AnalysisResult, Job, NewJob, RuleDto, OutboxItem, Model)),
    tags((name = "studies"), (name = "jobs"), (name = "service"))
)]
struct ApiDoc;

/// The OpenAPI document of this API, generated from the handlers above.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body;
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/studies", get(list_studies))
        .route("/studies/{study_uid}/series", get(list_series))
        .route("/studies/{study_uid}/series/{series_uid}/results", get(series_results))
        .route("/jobs", get(list_jobs).post(create_job))
        .route("/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/rules", get(list_rules))
        .route("/outbox", get(list_outbox))
        .route("/outbox/{id}", delete(cancel_outbox_item))
        .route("/outbox/{id}/retry", post(retry_outbox_item))
        .route("/models", get(list_models))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::guard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
