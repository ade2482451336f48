//! A backend wrapper that injects faults, for testing the algorithm's handling of
//! 429s, 5xx, timeouts and lost responses (in the spirit of object_store's
//! `ThrottledStore`). Faults are scripted: each one fires once, on the next call
//! of the operation it names.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped, WriteCondition};

/// The backend calls a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// [`Backend::write`](super::Backend::write).
    Write,
    /// [`Backend::read`](super::Backend::read).
    Read,
    /// [`Backend::update_metadata`](super::Backend::update_metadata).
    UpdateMetadata,
    /// [`Backend::delete`](super::Backend::delete).
    Delete,
    /// [`Backend::list`](super::Backend::list).
    List,
}

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

/// Wraps a backend and injects scripted faults.
#[derive(Clone, Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    script: Arc<Mutex<VecDeque<(Operation, Fault)>>>,
}

impl FaultyBackend {
    /// Wraps `inner`, with no faults scripted yet.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            script: Arc::default(),
        }
    }

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

    async fn run<T, F>(&self, operation: Operation, call: F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        match self.take(operation) {
            None => call.await,
            Some(Fault::Reject(error)) => Err(error.to_error()),
            Some(Fault::LoseResponse(error)) => {
                let _applied = call.await;
                Err(error.to_error())
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                call.await
            }
            Some(Fault::DelayResponse(delay)) => {
                let result = call.await;
                tokio::time::sleep(delay).await;
                result
            }
        }
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.run(
            Operation::Write,
            self.inner.write(name, condition, metadata),
        )
        .await
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        self.run(Operation::Read, self.inner.read(name)).await
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.run(
            Operation::UpdateMetadata,
            self.inner.update_metadata(name, expected, metadata),
        )
        .await
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        self.run(Operation::Delete, self.inner.delete(name, expected))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Stamped<Vec<ObjectInfo>>, BackendError> {
        self.run(Operation::List, self.inner.list(prefix)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn min_mutation_interval(&self) -> Option<Duration> {
        self.inner.min_mutation_interval()
    }
}
