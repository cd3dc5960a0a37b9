//! Site settings: the PACS endpoint and the DICOM listener, in a TOML file in the platform config
//! folder (`$LIGHTBOX_CONFIG`, else `$XDG_CONFIG_HOME/lightbox/config.toml`, else
//! `~/.config/lightbox/config.toml`). Passwords and tokens are never written there: they live in
//! the OS keyring (Secret Service), or come from `LIGHTBOX_PACS_PASSWORD` / `LIGHTBOX_PACS_TOKEN`.
//! Environment variables override the file.

use std::path::{Path, PathBuf};

use crate::WorkflowError;
use crate::pacs::{Auth, DicomWebConfig, DimsePeer, PacsSettings, TlsOptions};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub pacs: Option<PacsConfig>,
    pub listen: Option<ListenConfig>,
    /// The site, as signed reports name the signer's organization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
    /// `lightbox serve` (command-line flags override these).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeSettings>,
}

/// `[serve]` in the settings file: how `lightbox serve` runs on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// Address to bind, e.g. "127.0.0.1" (the default) or "0.0.0.0" (needs `tokens`).
    pub bind: Option<String>,
    pub port: Option<u16>,
    /// Dispatch rules (TOML).
    pub rules: Option<PathBuf>,
    /// File of SHA-256 hashes of the bearer tokens.
    pub tokens: Option<PathBuf>,
    /// Receive DICOM pushes on this port.
    pub listen_port: Option<u16>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Requests per second per client.
    pub rate: Option<u32>,
}

/// The signer's organization for signed reports: `LIGHTBOX_INSTITUTION`, else the settings
/// file's `institution`, else "Unspecified organization".
pub fn institution() -> String {
    std::env::var("LIGHTBOX_INSTITUTION")
        .ok()
        .or_else(|| Settings::load(&config_path()).ok().and_then(|s| s.institution))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Unspecified organization".into())
}

/// The PACS, as the settings screen edits it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacsConfig {
    pub name: String,
    /// DICOMweb root, e.g. `https://pacs.example.org/dicom-web`.
    pub url: String,
    /// HTTP basic user (the password is in the keyring); empty for none or a bearer token.
    pub user: String,
    /// Use a bearer token from the keyring instead of basic auth.
    pub bearer: bool,
    pub ca_file: Option<PathBuf>,
    pub ca_only: bool,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// DIMSE fallback for sending (empty AE title: none).
    pub dimse_aet: String,
    pub dimse_host: String,
    pub dimse_port: u16,
    /// Our AE title.
    pub our_aet: String,
}

/// The C-STORE SCP.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    pub aet: String,
    pub port: u16,
}

/// Where the settings file is.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LIGHTBOX_CONFIG") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from).join(".config"));
    base.join("lightbox/config.toml")
}

impl Settings {
    /// Reads the settings file; a missing file is empty settings.
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| WorkflowError::Settings { path: path.to_owned(), detail: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(WorkflowError::Io { path: path.to_owned(), source }),
        }
    }

    /// Writes the settings file atomically (temporary file, then rename), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), WorkflowError> {
        if let Some(pacs) = &self.pacs
            && !pacs.url.is_empty()
            && !(pacs.url.starts_with("http://") || pacs.url.starts_with("https://"))
        {
            return Err(WorkflowError::Settings {
                path: path.to_owned(),
                detail: format!("PACS URL {:?} must start with http:// or https://", pacs.url),
            });
        }
        let text = toml::to_string_pretty(self)
            .map_err(|e| WorkflowError::Settings { path: path.to_owned(), detail: e.to_string() })?;
        let io = |source| WorkflowError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let temp = path.with_extension("toml.tmp");
        std::fs::write(&temp, text).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::fs::rename(&temp, path).map_err(io)
    }

    /// The PACS to use: `LIGHTBOX_PACS_*` when `LIGHTBOX_PACS_URL` is set, else the file's, with
    /// its secret from the environment or the keyring.
    pub fn pacs_settings(&self) -> Option<PacsSettings> {
        if let Some(from_env) = PacsSettings::from_env() {
            return Some(from_env);
        }
        let p = self.pacs.as_ref().filter(|p| !p.url.is_empty())?;
        let name = if p.name.is_empty() { "pacs".to_owned() } else { p.name.clone() };
        let mut web = DicomWebConfig::new(p.url.clone());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        web.auth = if p.bearer {
            env("LIGHTBOX_PACS_TOKEN")
                .or_else(|| secret(&name, "token").ok().flatten())
                .map_or(Auth::None, Auth::Bearer)
        } else if !p.user.is_empty() {
            let password =
                env("LIGHTBOX_PACS_PASSWORD").or_else(|| secret(&name, &p.user).ok().flatten()).unwrap_or_default();
            Auth::Basic { user: p.user.clone(), password }
        } else {
            Auth::None
        };
        web.tls = TlsOptions {
            ca_file: p.ca_file.clone(),
            ca_only: p.ca_only,
            client_cert: p.client_cert.clone(),
            client_key: p.client_key.clone(),
        };
        let dimse = (!p.dimse_aet.is_empty()).then(|| DimsePeer {
            ae_title: p.dimse_aet.clone(),
            host: if p.dimse_host.is_empty() { "127.0.0.1".into() } else { p.dimse_host.clone() },
            port: if p.dimse_port == 0 { 104 } else { p.dimse_port },
            calling_ae_title: if p.our_aet.is_empty() { "LIGHTBOX".into() } else { p.our_aet.clone() },
        });
        Some(PacsSettings { name, web, dimse })
    }
}

fn keyring_entry(pacs: &str, account: &str) -> Result<keyring::Entry, WorkflowError> {
    keyring::Entry::new("lightbox", &format!("pacs:{pacs}:{account}")).map_err(keyring_error)
}

fn keyring_error(e: keyring::Error) -> WorkflowError {
    WorkflowError::Settings {
        path: PathBuf::from("OS keyring"),
        detail: format!(
            "{e}. Without a keyring (Secret Service), set LIGHTBOX_PACS_PASSWORD or LIGHTBOX_PACS_TOKEN instead"
        ),
    }
}

/// Stores the PACS password (or, with account "token", the bearer token) in the OS keyring.
pub fn store_secret(pacs: &str, account: &str, secret: &str) -> Result<(), WorkflowError> {
    keyring_entry(pacs, account)?.set_password(secret).map_err(keyring_error)
}

/// The stored secret, or `None` when there is none.
pub fn secret(pacs: &str, account: &str) -> Result<Option<String>, WorkflowError> {
    match keyring_entry(pacs, account)?.get_password() {
        Ok(s) => Ok(Some(s)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(keyring_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_atomically_without_secrets() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/config.toml");
        assert_eq!(Settings::load(&path)?, Settings::default());
        let settings = Settings {
            pacs: Some(PacsConfig {
                name: "hospital".into(),
                url: "https://pacs.example.org/dicom-web".into(),
                user: "reader".into(),
                ca_file: Some("/etc/ssl/hospital-ca.pem".into()),
                dimse_aet: "PACS".into(),
                dimse_port: 11112,
                ..Default::default()
            }),
            listen: Some(ListenConfig { aet: "LIGHTBOX".into(), port: 11112 }),
            institution: Some("St. Example Radiology".into()),
            serve: Some(ServeSettings {
                port: Some(8481),
                rules: Some("/etc/lightbox/rules.toml".into()),
                ..Default::default()
            }),
        };
        settings.save(&path)?;
        assert_eq!(Settings::load(&path)?, settings);
        let text = std::fs::read_to_string(&path)?;
        assert!(!text.contains("password") && !text.contains("secret"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn bad_files_and_urls_are_named_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[pacs]\nurl = 5\n")?;
        let error = Settings::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("config.toml"), "{error}");
        let bad = Settings {
            pacs: Some(PacsConfig { url: "pacs:8042".into(), ..Default::default() }),
            listen: None,
            institution: None,
            serve: None,
        };
        let error = bad.save(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("must start with http"), "{error}");
        Ok(())
    }
}
