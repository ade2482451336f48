//! A strict in-memory model of the GCS object semantics the lock relies on.
//!
//! Unlike fake-gcs-server, it enforces every precondition atomically, gives every
//! new object a fresh generation and bumps the metageneration on every metadata
//! update, so tests that pass here pass for the right reason. Its clock follows
//! tokio's clock, so tests under `tokio::time::pause()` control server time too,
//! and it can be skewed to model a client whose wall clock disagrees with GCS.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Backend, BackendError, Metadata, ObjectInfo, ObjectVersion, Stamped, WriteCondition};

/// The server's wall clock: a start time that advances with tokio's clock.
#[derive(Debug)]
struct ServerClock {
    origin_wall: SystemTime,
    origin: tokio::time::Instant,
    /// Signed skew in milliseconds, added to every reading.
    skew_ms: std::sync::atomic::AtomicI64,
}

impl ServerClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.origin.elapsed();
        let skew = chrono::Duration::milliseconds(self.skew_ms.load(Ordering::SeqCst));
        DateTime::<Utc>::from(self.origin_wall + elapsed) + skew
    }
}

#[derive(Clone, Debug)]
struct StoredObject {
    generation: i64,
    metageneration: i64,
    updated: DateTime<Utc>,
    metadata: Metadata,
    body: Bytes,
}

/// One in-memory bucket. Cloning shares the bucket.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bucket: String,
    objects: Mutex<BTreeMap<String, StoredObject>>,
    clock: ServerClock,
    next_generation: AtomicU64,
    requests: AtomicU64,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new("memory")
    }
}

impl MemoryBackend {
    /// An empty bucket whose server clock starts at the host's wall time.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bucket: bucket.into(),
                objects: Mutex::new(BTreeMap::new()),
                clock: ServerClock {
                    origin_wall: SystemTime::now(),
                    origin: tokio::time::Instant::now(),
                    skew_ms: Default::default(),
                },
                // Real generations are large microsecond-like numbers; start there so
                // code that truncates them to 32 bits fails here too.
                next_generation: AtomicU64::new(1_700_000_000_000_000),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// Shifts the server clock by `skew` (positive: the server runs ahead).
    pub fn set_server_skew(&self, skew: chrono::Duration) {
        self.inner
            .clock
            .skew_ms
            .store(skew.num_milliseconds(), Ordering::SeqCst);
    }

    /// The server's current time.
    pub fn server_time(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// How many requests this bucket has served (every trait call counts one).
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Writes an object with a body, as `write` does for lock objects.
    /// `condition` `None` writes unconditionally.
    pub fn put_object(
        &self,
        name: &str,
        condition: Option<WriteCondition>,
        metadata: &Metadata,
        body: Bytes,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.count();
        let mut objects = self.objects();
        if let Some(condition) = condition {
            check_write_condition(objects.get(name), condition)?;
        }
        let now = self.inner.clock.now();
        let generation = self.inner.next_generation.fetch_add(1, Ordering::SeqCst) as i64;
        let object = StoredObject {
            generation,
            metageneration: 1,
            updated: now,
            metadata: metadata.clone(),
            body,
        };
        let info = to_info(name, &object);
        objects.insert(name.to_owned(), object);
        Ok(self.stamp(info))
    }

    /// Reads an object's metadata and body.
    pub fn get_object(&self, name: &str) -> Result<Stamped<(ObjectInfo, Bytes)>, BackendError> {
        self.count();
        let objects = self.objects();
        let object = objects.get(name).ok_or(BackendError::NotFound)?;
        Ok(self.stamp((to_info(name, object), object.body.clone())))
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, StoredObject>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // mutation is a single insert/remove), so a poisoned lock is still usable.
        self.inner
            .objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
    }

    fn stamp<T>(&self, value: T) -> Stamped<T> {
        Stamped {
            value,
            server_time: Some(self.inner.clock.now()),
        }
    }
}

fn to_info(name: &str, object: &StoredObject) -> ObjectInfo {
    ObjectInfo {
        name: name.to_owned(),
        version: ObjectVersion {
            generation: object.generation,
            metageneration: object.metageneration,
        },
        updated: object.updated,
        metadata: object.metadata.clone(),
    }
}

fn check_write_condition(
    current: Option<&StoredObject>,
    condition: WriteCondition,
) -> Result<(), BackendError> {
    let holds = match (condition, current) {
        (WriteCondition::DoesNotExist, None) => true,
        (WriteCondition::DoesNotExist, Some(_)) => false,
        (WriteCondition::Matches(_), None) => false,
        (WriteCondition::Matches(expected), Some(object)) => is_version(object, expected),
    };
    if holds {
        Ok(())
    } else {
        Err(BackendError::PreconditionFailed)
    }
}

fn is_version(object: &StoredObject, expected: ObjectVersion) -> bool {
    object.generation == expected.generation && object.metageneration == expected.metageneration
}

/// GCS answers 404 for a missing object and 412 for a present object in another
/// version, even when both generation and metageneration preconditions are given.
fn check_version(
    current: Option<&StoredObject>,
    expected: ObjectVersion,
) -> Result<&StoredObject, BackendError> {
    let object = current.ok_or(BackendError::NotFound)?;
    if is_version(object, expected) {
        Ok(object)
    } else {
        Err(BackendError::PreconditionFailed)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn write(
        &self,
        name: &str,
        condition: WriteCondition,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.put_object(name, Some(condition), metadata, Bytes::new())
    }

    async fn read(&self, name: &str) -> Result<Stamped<Option<ObjectInfo>>, BackendError> {
        self.count();
        let objects = self.objects();
        Ok(self.stamp(objects.get(name).map(|object| to_info(name, object))))
    }

    async fn update_metadata(
        &self,
        name: &str,
        expected: ObjectVersion,
        metadata: &Metadata,
    ) -> Result<Stamped<ObjectInfo>, BackendError> {
        self.count();
        let now = self.inner.clock.now();
        let mut objects = self.objects();
        check_version(objects.get(name), expected)?;
        let object = objects.get_mut(name).ok_or(BackendError::NotFound)?;
        object
            .metadata
            .extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        object.metageneration += 1;
        object.updated = now;
        let info = to_info(name, object);
        Ok(self.stamp(info))
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        self.count();
        let mut objects = self.objects();
        check_version(objects.get(name), expected)?;
        objects.remove(name);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Stamped<Vec<ObjectInfo>>, BackendError> {
        self.count();
        let objects = self.objects();
        Ok(self.stamp(
            objects
                .range(prefix.to_owned()..)
                .take_while(|(name, _)| name.starts_with(prefix))
                .map(|(name, object)| to_info(name, object))
                .collect(),
        ))
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.inner.bucket)
    }
}
