//! The places of a semaphore (`run --holders N`, PROTOCOL.md §13) for `status`,
//! `list` and `break`: who holds each place, since when, with which token; and
//! which place one holder (by identity or token) has.

use std::sync::Arc;

use anyhow::Context as _;
use gcslock::admin::LockStatus;
use gcslock::backend::Backend;
use gcslock::semaphore::{PlaceStatus, Semaphore};
use gcslock::LockOptions;
use serde::Serialize;

use crate::cmd::status::{describe, StatusView};
use crate::exit::{self, Coded};
use crate::output::escape;

/// The URL of a place: the semaphore's URL with the place's suffix (`/place-K`).
pub fn place_url(url: &str, object: &str, place_object: &str) -> String {
    format!(
        "{url}{}",
        place_object.get(object.len()..).unwrap_or_default()
    )
}

/// `status --holders N`: one summary line, then one line per place (text), or one
/// JSON object with every place.
pub async fn status_lines(
    backend: Arc<dyn Backend>,
    url: &str,
    object: &str,
    holders: u32,
    options: LockOptions,
    json: bool,
) -> anyhow::Result<Vec<String>> {
    let semaphore = Semaphore::new(backend, object, holders, options)?;
    let places = semaphore.status().await?;
    let held = places
        .iter()
        .filter(|place| matches!(place.status, LockStatus::Held(_)))
        .count();
    let urls: Vec<String> = places
        .iter()
        .map(|place| place_url(url, object, &place.object))
        .collect();
    if json {
        let view = SemaphoreView {
            url,
            holders,
            held,
            places: places
                .iter()
                .zip(&urls)
                .map(|(place, url)| PlaceView::new(url, place))
                .collect(),
        };
        return Ok(vec![
            serde_json::to_string(&view).context("cannot encode the status as JSON")?
        ]);
    }
    let mut lines = vec![format!(
        "{}: at most {holders} holders; {held} place(s) held",
        escape(url)
    )];
    for (place, url) in places.iter().zip(&urls) {
        lines.push(format!(
            "place {}: {}",
            place.place,
            describe_place(url, place)
        ));
    }
    Ok(lines)
}

/// A place's status line, noting a limit that differs from the one asked about.
fn describe_place(url: &str, place: &PlaceStatus) -> String {
    let line = describe(url, &place.status);
    match place.recorded_limit {
        Some(limit) if matches!(place.status, LockStatus::Held(_) | LockStatus::Stale(_)) => {
            format!("{line}; its holder allows {limit} holder(s)")
        }
        _ => line,
    }
}

/// The place `break --holders N` is about: the live (or stale) holder with
/// `identity` and/or `token`. Returns the place and its holder's token.
pub async fn chosen_place(
    semaphore: &Semaphore,
    identity: Option<&str>,
    token: Option<u64>,
) -> anyhow::Result<(u32, u64)> {
    if identity.is_none() && token.is_none() {
        return Err(Coded::new(
            exit::USAGE,
            "break --holders N needs --holder NAME or --token N: which holder to break",
        )
        .into());
    }
    let places = semaphore.status().await?;
    let matching: Vec<(u32, u64)> = places
        .iter()
        .filter_map(|place| match &place.status {
            LockStatus::Held(held) | LockStatus::Stale(held) => {
                let fits = identity.is_none_or(|name| held.holder == name)
                    && token.is_none_or(|token| held.token.value() == token);
                fits.then_some((place.place, held.token.value()))
            }
            _ => None,
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(Coded::new(
            exit::BUSY,
            format!(
                "{}: no place is held by {}; nothing was broken",
                escape(semaphore.url()),
                which(identity, token)
            ),
        )
        .into()),
        several => Err(Coded::new(
            exit::USAGE,
            format!(
                "{}: places {} are all held by {}; add --holder or --token to choose one",
                escape(semaphore.url()),
                several
                    .iter()
                    .map(|(place, _)| place.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                which(identity, token)
            ),
        )
        .into()),
    }
}

fn which(identity: Option<&str>, token: Option<u64>) -> String {
    match (identity, token) {
        (Some(name), Some(token)) => format!("{} with token {token}", escape(name)),
        (Some(name), None) => escape(name),
        (None, Some(token)) => format!("a holder with token {token}"),
        (None, None) => "anyone".into(),
    }
}

/// The semaphore an object named `NAME/place-K` is place K of, and K. (Place 0,
/// `NAME` itself, cannot be told from a plain lock by its name.)
fn semaphore_of(object: &str) -> Option<(&str, u32)> {
    let (name, _) = object.rsplit_once('/')?;
    gcslock::semaphore::place_of(name, object).map(|place| (name, place))
}

/// A `list` line (text or JSON) for the object `name` at `url`, naming the
/// semaphore it is a place of, if it is one.
pub fn list_line(url: &str, name: &str, status: &LockStatus, json: bool) -> anyhow::Result<String> {
    let place = semaphore_of(name);
    if json {
        let view = ListedView {
            place: place.map(|(_, place)| place),
            semaphore: place.map(|(semaphore, _)| semaphore),
            status: StatusView::new(url, status),
        };
        return serde_json::to_string(&view).context("cannot encode the listing as JSON");
    }
    let line = describe(url, status);
    Ok(match place {
        Some((semaphore, place)) => {
            format!(
                "{line}; place {place} of the semaphore {}",
                escape(semaphore)
            )
        }
        None => line,
    })
}

/// A `list --json` line: the status, and which semaphore place it is.
#[derive(Debug, Serialize)]
struct ListedView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    semaphore: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    place: Option<u32>,
    #[serde(flatten)]
    status: StatusView<'a>,
}

/// `status --holders N --json`.
#[derive(Debug, Serialize)]
struct SemaphoreView<'a> {
    url: &'a str,
    holders: u32,
    held: usize,
    places: Vec<PlaceView<'a>>,
}

/// One place: its number, the limit its record carries, and its lock status.
#[derive(Debug, Serialize)]
struct PlaceView<'a> {
    place: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_holders: Option<u32>,
    #[serde(flatten)]
    status: StatusView<'a>,
}

impl<'a> PlaceView<'a> {
    fn new(url: &'a str, place: &'a PlaceStatus) -> Self {
        Self {
            place: place.place,
            recorded_holders: place.recorded_limit,
            status: StatusView::new(url, &place.status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_the_semaphore_of_a_place() {
        assert_eq!(semaphore_of("db/backups/place-2"), Some(("db/backups", 2)));
        assert_eq!(semaphore_of("db/backups"), None);
        assert_eq!(semaphore_of("db/place-x"), None);
        let line = list_line("gs://b/j/place-1", "j/place-1", &LockStatus::Free, false).unwrap();
        assert!(line.ends_with("; place 1 of the semaphore j"), "{line}");
        let json: serde_json::Value = serde_json::from_str(
            &list_line("gs://b/j/place-1", "j/place-1", &LockStatus::Free, true).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (json["semaphore"].as_str(), json["place"].as_u64()),
            (Some("j"), Some(1))
        );
        assert_eq!(json["state"], "free");
    }

    #[test]
    fn a_place_url_is_the_url_with_the_place_suffix() {
        assert_eq!(place_url("gs://b/jobs", "jobs", "jobs"), "gs://b/jobs");
        assert_eq!(
            place_url("gs://b/jobs", "jobs", "jobs/place-2"),
            "gs://b/jobs/place-2"
        );
    }
}
