//! QIDO-RS search.

use crate::{DicomJson, DicomWebClient, PacsError};

/// What to search for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QidoLevel {
    Studies,
    /// Series, of one study or of all.
    Series {
        study: Option<String>,
    },
    /// Instances, of one series, one study, or all.
    Instances {
        study: Option<String>,
        series: Option<String>,
    },
}

impl QidoLevel {
    fn path(&self) -> String {
        match self {
            Self::Studies => "/studies".into(),
            Self::Series { study: Some(st) } => format!("/studies/{st}/series"),
            Self::Series { study: None } => "/series".into(),
            Self::Instances { study: Some(st), series: Some(se) } => format!("/studies/{st}/series/{se}/instances"),
            Self::Instances { study: Some(st), series: None } => format!("/studies/{st}/instances"),
            Self::Instances { study: None, series: _ } => "/instances".into(),
        }
    }
}

/// Matching keys and paging. Values take DICOM matching: `*` and `?` wildcards, `A-B` date
/// ranges, `\`-separated UID lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QidoQuery {
    /// `(keyword or tag, value)`, e.g. `("PatientName", "DOE*")`, `("StudyDate", "20240101-")`.
    pub matches: Vec<(String, String)>,
    pub fuzzy: bool,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Extra attributes to return (`all` for every one the server has).
    pub include_fields: Vec<String>,
}

impl QidoQuery {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn matching(mut self, key: &str, value: &str) -> Self {
        self.matches.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn offset(mut self, offset: u32) -> Self {
        self.offset = Some(offset);
        self
    }

    pub fn fuzzy(mut self) -> Self {
        self.fuzzy = true;
        self
    }

    pub fn include(mut self, field: &str) -> Self {
        self.include_fields.push(field.to_owned());
        self
    }

    /// The query string, starting with `?` (empty when there is nothing to ask).
    ///
    /// Values are percent-encoded only where the URL syntax demands it (space, `%`, `&`, `#`,
    /// `+`, controls, non-ASCII). Wildcards, `@`, `^`, `\` and `,` are sent as they are:
    /// Orthanc does not percent-decode QIDO values, so `%2A` or `%40` would match nothing.
    pub fn query_string(&self) -> String {
        let mut pairs: Vec<(String, String)> = self.matches.clone();
        if self.fuzzy {
            pairs.push(("fuzzymatching".into(), "true".into()));
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit".into(), limit.to_string()));
        }
        if let Some(offset) = self.offset {
            pairs.push(("offset".into(), offset.to_string()));
        }
        for field in &self.include_fields {
            pairs.push(("includefield".into(), field.clone()));
        }
        if pairs.is_empty() {
            return String::new();
        }
        let encoded: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        format!("?{}", encoded.join("&"))
    }
}

/// Percent-encodes only what cannot appear raw in a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-._~*?@^\\,:/!$'()=;[]|{}<>\"`".contains(&byte);
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl DicomWebClient {
    /// Runs a QIDO-RS search.
    pub async fn search(&self, level: &QidoLevel, query: &QidoQuery) -> Result<Vec<DicomJson>, PacsError> {
        let url = self.url(&format!("{}{}", level.path(), query.query_string()));
        let (_, body) = self.get_bytes(&url, "application/dicom+json").await?;
        DicomJson::parse_array(&body).map_err(|detail| PacsError::Malformed { url, detail })
    }

    /// Every match, asked page by page (servers cap how many they return at once).
    pub async fn search_all(&self, level: &QidoLevel, query: &QidoQuery) -> Result<Vec<DicomJson>, PacsError> {
        self.search_paged(level, query, 500).await
    }

    /// [`Self::search_all`] with a given page size.
    pub async fn search_paged(
        &self,
        level: &QidoLevel,
        query: &QidoQuery,
        page_size: u32,
    ) -> Result<Vec<DicomJson>, PacsError> {
        let page_size = page_size.max(1);
        let mut all = Vec::new();
        loop {
            let page = query.clone().limit(page_size).offset(u32::try_from(all.len()).unwrap_or(u32::MAX));
            let found = self.search(level, &page).await?;
            let short = found.len() < page_size as usize;
            all.extend(found);
            if short || all.len() >= 1_000_000 {
                return Ok(all);
            }
        }
    }

    pub async fn search_studies(&self, query: &QidoQuery) -> Result<Vec<DicomJson>, PacsError> {
        self.search(&QidoLevel::Studies, query).await
    }

    pub async fn search_series(&self, study: &str, query: &QidoQuery) -> Result<Vec<DicomJson>, PacsError> {
        self.search(&QidoLevel::Series { study: Some(study.to_owned()) }, query).await
    }

    pub async fn search_instances(
        &self,
        study: &str,
        series: Option<&str>,
        query: &QidoQuery,
    ) -> Result<Vec<DicomJson>, PacsError> {
        self.search(&QidoLevel::Instances { study: Some(study.to_owned()), series: series.map(str::to_owned) }, query)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_wildcards_and_at_signs_raw_and_encodes_what_must_be() {
        let q = QidoQuery::new()
            .matching("PatientName", "DOE^J*")
            .matching("PatientID", "12343@x")
            .matching("StudyDate", "20240101-20241231")
            .matching("AccessionNumber", "A&B C+%#é")
            .fuzzy()
            .limit(10)
            .offset(20)
            .include("all");
        assert_eq!(
            q.query_string(),
            "?PatientName=DOE^J*&PatientID=12343@x&StudyDate=20240101-20241231&AccessionNumber=A%26B%20C%2B%25%23%C3%A9\
             &fuzzymatching=true&limit=10&offset=20&includefield=all"
        );
        assert_eq!(QidoQuery::new().query_string(), "");
    }

    #[test]
    fn paths_per_level() {
        assert_eq!(QidoLevel::Studies.path(), "/studies");
        assert_eq!(QidoLevel::Series { study: Some("1.2".into()) }.path(), "/studies/1.2/series");
        assert_eq!(
            QidoLevel::Instances { study: Some("1.2".into()), series: Some("3.4".into()) }.path(),
            "/studies/1.2/series/3.4/instances"
        );
        assert_eq!(QidoLevel::Instances { study: None, series: None }.path(), "/instances");
    }
}
