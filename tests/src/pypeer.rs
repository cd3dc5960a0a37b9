//! The Python peer: `dicomweb-client` (the reference DICOMweb client) in the virtual environment
//! that `scripts/setup-debian.sh` creates.

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;

use crate::run_ok;

/// `LIGHTBOX_PY_VENV`, or `/var/tmp/lightbox-py`.
pub fn venv() -> PathBuf {
    std::env::var_os("LIGHTBOX_PY_VENV").map_or_else(|| PathBuf::from("/var/tmp/lightbox-py"), PathBuf::from)
}

/// The venv's Python, which must exist.
pub fn python() -> anyhow::Result<PathBuf> {
    let python = venv().join("bin/python");
    if !python.is_file() {
        bail!("{} is missing: run scripts/setup-debian.sh (or set LIGHTBOX_PY_VENV)", python.display());
    }
    Ok(python)
}

/// Python that makes `client`, a `DICOMwebClient` for `sys.argv[1]` (the DICOMweb root) with HTTP
/// basic auth `sys.argv[2]`/`sys.argv[3]`; the script's own arguments start at `sys.argv[4]`.
pub const CLIENT_PRELUDE: &str = r#"
import sys, time, json, os
from requests.auth import HTTPBasicAuth
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
client = DICOMwebClient(url=sys.argv[1], session=create_session_from_auth(HTTPBasicAuth(sys.argv[2], sys.argv[3])))
args = sys.argv[4:]
"#;

/// Runs `CLIENT_PRELUDE` + `script` against a DICOMweb root; returns stdout.
pub fn run_client_script(
    dicomweb_url: &str,
    user: &str,
    password: &str,
    script: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let code = format!("{CLIENT_PRELUDE}\n{script}");
    run_ok(Command::new(python()?).arg("-c").arg(code).args([dicomweb_url, user, password]).args(args))
}
