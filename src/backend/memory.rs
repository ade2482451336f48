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
    created: DateTime<Utc>,
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

    /// The one atomic primitive every mutation goes through: under the bucket's
    /// mutex, `decide` sees the live object (if any) and returns what to do; an
    /// `Err` changes nothing. Returns the object afterwards (`None` once deleted).
    /// Counts as one request.
    pub fn mutate<E>(
        &self,
        name: &str,
        decide: impl FnOnce(Option<(&ObjectInfo, &Bytes)>) -> Result<Mutation, E>,
    ) -> Result<Stamped<Option<ObjectInfo>>, E> {
        self.count();
        let mut objects = self.objects();
        // Read the clock under the mutex so `updated` follows the order of application.
        let now = self.inner.clock.now();
        let current = objects
            .get(name)
            .map(|object| (to_info(name, object), object.body.clone()));
        let mutation = decide(current.as_ref().map(|(info, body)| (info, body)))?;
        let after = match mutation {
            Mutation::Keep => current.map(|(info, _)| info),
            Mutation::Put { metadata, body } => {
                let generation = self.inner.next_generation.fetch_add(1, Ordering::SeqCst) as i64;
                let object = StoredObject {
                    generation,
                    metageneration: 1,
                    updated: now,
                    created: now,
                    metadata,
                    body,
                };
                let info = to_info(name, &object);
                objects.insert(name.to_owned(), object);
                Some(info)
            }
            Mutation::SetMetadata(metadata) => match objects.get_mut(name) {
                Some(object) => {
                    object.metadata = metadata;
                    object.metageneration += 1;
                    object.updated = now;
                    Some(to_info(name, object))
                }
                None => None,
            },
            Mutation::Delete => {
                objects.remove(name);
                None
            }
        };
        Ok(self.stamp(after))
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
        let written = self.mutate(name, |current| {
            if let Some(condition) = condition {
                check_write_condition(current.map(|(info, _)| info), condition)?;
            }
            Ok(Mutation::Put {
                metadata: metadata.clone(),
                body,
            })
        })?;
        require(written)
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
        created: Some(object.created),
        metadata: object.metadata.clone(),
    }
}

/// What [`MemoryBackend::mutate`] does to the object it inspected.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Nothing.
    Keep,
    /// Create or replace: a new generation, metageneration 1.
    Put {
        /// The new object's metadata.
        metadata: Metadata,
        /// The new object's body.
        body: Bytes,
    },
    /// Replace the metadata of the live object: metageneration + 1.
    SetMetadata(Metadata),
    /// Remove the object.
    Delete,
}

fn check_write_condition(
    current: Option<&ObjectInfo>,
    condition: WriteCondition,
) -> Result<(), BackendError> {
    let holds = match (condition, current) {
        (WriteCondition::DoesNotExist, current) => current.is_none(),
        (WriteCondition::Matches(_), None) => false,
        (WriteCondition::Matches(expected), Some(object)) => object.version == expected,
    };
    if holds {
        Ok(())
    } else {
        Err(BackendError::PreconditionFailed)
    }
}

/// GCS answers 404 for a missing object and 412 for a present object in another
/// version, even when both generation and metageneration preconditions are given.
fn check_version(
    current: Option<&ObjectInfo>,
    expected: ObjectVersion,
) -> Result<&ObjectInfo, BackendError> {
    let object = current.ok_or(BackendError::NotFound)?;
    if object.version == expected {
        Ok(object)
    } else {
        Err(BackendError::PreconditionFailed)
    }
}

fn require(written: Stamped<Option<ObjectInfo>>) -> Result<Stamped<ObjectInfo>, BackendError> {
    match written.value {
        Some(value) => Ok(Stamped {
            value,
            server_time: written.server_time,
        }),
        None => Err(BackendError::NotFound),
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
        let updated = self.mutate(name, |current| {
            let mut merged = check_version(current.map(|(info, _)| info), expected)?
                .metadata
                .clone();
            merged.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(Mutation::SetMetadata(merged))
        })?;
        require(updated)
    }

    async fn delete(&self, name: &str, expected: ObjectVersion) -> Result<(), BackendError> {
        self.mutate(name, |current| {
            check_version(current.map(|(info, _)| info), expected)?;
            Ok(Mutation::Delete)
        })
        .map(|_| ())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stamped<ObjectInfo>>, BackendError> {
        self.count();
        let objects = self.objects();
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, object)| self.stamp(to_info(name, object)))
            .collect())
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.inner.bucket)
    }
}
