//! A backend wrapper that injects faults, for testing the algorithm's handling of
//! 429s, 5xx, timeouts and lost responses (in the spirit of object_store's
//! `ThrottledStore`). Faults are scripted: each one fires once, on the next call
//! of the operation it names.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::intercept::{Call, Hook, Intercept, Outcome};
use super::BackendError;

/// The backend calls a fault can target.
pub use super::intercept::Operation;

/// What goes wrong.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Fail without reaching the backend, with this error.
    Reject(FaultError),
    /// Apply the call on the backend, then lose the response and report this error.
    LoseResponse(FaultError),
    /// Wait this long (on tokio's clock) before calling the backend.
    Delay(Duration),
    /// Call the backend, then wait this long before answering: the request has
    /// applied while its caller still waits.
    DelayResponse(Duration),
}

/// The error a fault reports (kept `Clone`, unlike `BackendError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// HTTP 503.
    Unavailable,
    /// HTTP 429.
    RateLimited,
    /// No response within the request timeout.
    Timeout,
    /// Connection reset after sending.
    Reset,
    /// HTTP 403.
    PermissionDenied,
}

impl FaultError {
    fn to_error(self) -> BackendError {
        match self {
            Self::Unavailable => BackendError::Server {
                status: 503,
                message: "injected: service unavailable".into(),
            },
            Self::RateLimited => BackendError::RateLimited { retry_after: None },
            Self::Timeout => BackendError::Timeout(Duration::from_secs(10)),
            Self::Reset => BackendError::Transport("injected: connection reset".into()),
            Self::PermissionDenied => BackendError::PermissionDenied("injected".into()),
        }
    }
}

/// Wraps a backend and injects scripted faults: `FaultyBackend::new(inner)`, then
/// [`Faults::inject`] on it.
pub type FaultyBackend = Intercept<Faults>;

/// The fault script of a [`FaultyBackend`]; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    script: Arc<Mutex<VecDeque<(Operation, Fault)>>>,
}

impl Faults {
    /// Queues a fault for the next call of `operation` (after earlier queued faults
    /// for the same operation have fired).
    pub fn inject(&self, operation: Operation, fault: Fault) {
        self.script_lock().push_back((operation, fault));
    }

    /// Queues the same fault `times` times.
    pub fn inject_times(&self, operation: Operation, fault: Fault, times: usize) {
        for _ in 0..times {
            self.inject(operation, fault.clone());
        }
    }

    /// Faults not yet fired.
    pub fn pending(&self) -> usize {
        self.script_lock().len()
    }

    fn script_lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Operation, Fault)>> {
        self.script
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self, operation: Operation) -> Option<Fault> {
        let mut script = self.script_lock();
        let index = script.iter().position(|(op, _)| *op == operation)?;
        script.remove(index).map(|(_, fault)| fault)
    }
}

#[async_trait]
impl Hook for Faults {
    async fn around(&self, call: Call<'_>, proceed: BoxFuture<'_, Outcome>) -> Outcome {
        let operation = call.operation();
        match self.take(operation) {
            None => proceed.await,
            Some(Fault::Reject(error)) => Outcome::failed(operation, error.to_error()),
            Some(Fault::LoseResponse(error)) => {
                let _applied = proceed.await;
                Outcome::failed(operation, error.to_error())
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                proceed.await
            }
            Some(Fault::DelayResponse(delay)) => {
                let outcome = proceed.await;
                tokio::time::sleep(delay).await;
                outcome
            }
        }
    }
}
