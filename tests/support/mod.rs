//! Helpers shared by the integration tests on the in-memory backend.

use std::sync::Arc;

use gcslock::backend::fault::FaultyBackend;
use gcslock::backend::memory::MemoryBackend;
use gcslock::backend::Backend;
use gcslock::testing::LockRecord;

/// A bucket, and a fault injector in front of it.
pub fn faulty_bucket() -> (MemoryBackend, FaultyBackend) {
    let memory = MemoryBackend::new("b");
    let faulty = FaultyBackend::new(Arc::new(memory.clone()));
    (memory, faulty)
}

/// The lock record stored at `name`, which must exist and be a lock.
pub async fn record_at(memory: &MemoryBackend, name: &str) -> LockRecord {
    let read = memory.read(name).await.expect("read");
    LockRecord::from_metadata(&read.value.expect("object exists").metadata).expect("a lock")
}
