//! Google credentials (google-cloud-auth's Application Default Credentials),
//! loaded on the first request. Tokens and credential contents never appear in
//! logs, errors or `Debug` output.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::header::HeaderMap;

use super::client::{outer_and_root, root_cause};
use crate::backend::BackendError;

const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const CREDENTIALS_HINT: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a credentials file or run \
     `gcloud auth application-default login` (on GCE, Cloud Run or GKE the metadata server \
     provides them); to use an emulator instead, set STORAGE_EMULATOR_HOST";

pub(super) struct Auth {
    credentials: tokio::sync::OnceCell<LoadedCredentials>,
    /// Whether a token was ever obtained; after that, a transient failure is an
    /// outage rather than missing configuration.
    obtained_once: AtomicBool,
}

struct LoadedCredentials {
    credentials: Credentials,
    /// No credentials file is configured: the library falls back to the GCE
    /// metadata server, which off Google Cloud means "no credentials at all".
    metadata_server_only: bool,
}

/// Whether Application Default Credentials will only try the metadata server
/// (the same search as google-cloud-auth: the variable, then gcloud's file).
fn adc_is_metadata_server_only() -> bool {
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
        return false;
    }
    let well_known = if cfg!(windows) {
        std::env::var_os("APPDATA").map(|d| std::path::PathBuf::from(d).join("gcloud"))
    } else {
        std::env::var_os("HOME").map(|d| std::path::PathBuf::from(d).join(".config/gcloud"))
    };
    !well_known.is_some_and(|dir| dir.join("application_default_credentials.json").exists())
}

impl Auth {
    /// Credentials given by the caller, or Application Default Credentials on first use.
    pub(super) fn new(credentials: Option<Credentials>) -> Self {
        Self {
            credentials: tokio::sync::OnceCell::new_with(credentials.map(|credentials| {
                LoadedCredentials {
                    credentials,
                    metadata_server_only: false,
                }
            })),
            obtained_once: AtomicBool::new(false),
        }
    }

    /// The credential headers for one request, waiting at most `timeout` for a token.
    pub(super) async fn headers(&self, timeout: Duration) -> Result<HeaderMap, BackendError> {
        let loaded = self
            .credentials
            .get_or_try_init(|| async {
                let metadata_server_only = adc_is_metadata_server_only();
                google_cloud_auth::credentials::Builder::default()
                    .with_scopes([SCOPE])
                    .build()
                    .map(|credentials| LoadedCredentials {
                        credentials,
                        metadata_server_only,
                    })
                    .map_err(|e| {
                        BackendError::PermissionDenied(format!(
                            "cannot load Google credentials ({}): {CREDENTIALS_HINT}",
                            outer_and_root(&e)
                        ))
                    })
            })
            .await?;
        let fetching = loaded.credentials.headers(http::Extensions::new());
        let fetched =
            tokio::time::timeout(timeout, fetching)
                .await
                .map_err(|_| BackendError::Connect {
                    endpoint: "the Google token service".into(),
                    message: format!("no access token within {timeout:?}"),
                })?;
        match fetched {
            // The library caches headers; without an entity tag it always answers New.
            Ok(CacheableResource::New { data, .. }) => {
                self.obtained_once.store(true, Ordering::Relaxed);
                Ok(data)
            }
            Ok(CacheableResource::NotModified) => Err(BackendError::PermissionDenied(
                "the credentials library returned no headers".into(),
            )),
            // Off Google Cloud with nothing configured, the metadata server cannot be
            // reached: that is missing credentials, not an outage. Once a token was
            // obtained, the same failure is an outage.
            Err(e)
                if e.is_transient()
                    && loaded.metadata_server_only
                    && !self.obtained_once.load(Ordering::Relaxed) =>
            {
                Err(BackendError::PermissionDenied(format!(
                    "no Google credentials found: {CREDENTIALS_HINT} (the metadata server \
                     fallback failed: {})",
                    root_cause(&e)
                )))
            }
            Err(e) if e.is_transient() => Err(BackendError::Connect {
                endpoint: "the Google token service".into(),
                message: outer_and_root(&e),
            }),
            Err(e) => Err(BackendError::PermissionDenied(format!(
                "cannot obtain a Google access token ({}): {CREDENTIALS_HINT}",
                outer_and_root(&e)
            ))),
        }
    }
}
