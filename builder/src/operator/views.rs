//! Release filters as people type them (dashboard, saved views, CLI) and saved views: named
//! filter sets per fleet, persisted in the `saved_views` table.

use serde::{Deserialize, Serialize};

use crate::storage::db::{Db, DbError, ReleaseFilter, Status};

/// Longest free-text filter or view name.
pub const MAX_TEXT: usize = 200;
/// Most saved views per fleet.
pub const MAX_VIEWS: i64 = 100;

/// The releases page's filters. Dates are `YYYY-MM-DD` (UTC), both ends included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Status (`success`, `failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Commit hex prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Created on or after this day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Created on or before this day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// A filter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Unknown status.
    #[error("unknown status {0:?}")]
    Status(String),
    /// Not a hex prefix.
    #[error("commit must be a hex prefix of at most 40 characters")]
    Commit,
    /// Not a date.
    #[error("{0} must be a date YYYY-MM-DD")]
    Date(&'static str),
    /// Too long.
    #[error("the text filter is longer than {MAX_TEXT} characters")]
    TooLong,
}

/// Unix seconds of 00:00 UTC on `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix seconds.
pub fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filters {
    /// Drops empty fields and checks the rest; returns the database filter.
    pub fn normalise(&mut self) -> Result<ReleaseFilter, FilterError> {
        let mut f = ReleaseFilter::default();
        self.status = blank(&self.status).map(str::to_string);
        self.commit = blank(&self.commit).map(str::to_ascii_lowercase);
        self.from = blank(&self.from).map(str::to_string);
        self.to = blank(&self.to).map(str::to_string);
        self.q = blank(&self.q).map(str::to_string);
        if let Some(s) = &self.status {
            s.parse::<Status>()
                .map_err(|_| FilterError::Status(s.clone()))?;
            f.status = Some(s.clone());
        }
        if let Some(c) = &self.commit {
            if c.len() > 40 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FilterError::Commit);
            }
            f.commit = Some(c.clone());
        }
        if let Some(d) = &self.from {
            f.since = Some(parse_day(d).ok_or(FilterError::Date("from"))?);
        }
        if let Some(d) = &self.to {
            f.until = Some(parse_day(d).ok_or(FilterError::Date("to"))? + 86_399);
        }
        if let Some(q) = &self.q {
            if q.len() > MAX_TEXT {
                return Err(FilterError::TooLong);
            }
            f.text = Some(q.clone());
        }
        Ok(f)
    }

    /// As a query string (`status=failed&q=web`), escaped.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("status", &self.status),
            ("commit", &self.commit),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", url_encode(v)));
            }
        }
        parts.join("&")
    }
}

/// Everything but RFC 3986's unreserved characters.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// A saved view.
#[derive(Debug, Clone, Serialize)]
pub struct SavedView {
    /// Its name, unique in the fleet.
    pub name: String,
    /// Its filters.
    pub filters: Filters,
    /// Unix seconds.
    pub created: i64,
}

/// A fleet's saved views by name.
pub async fn list(db: &Db, fleet_id: i64) -> Result<Vec<SavedView>, DbError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT name, filters, created FROM saved_views WHERE fleet_id = ?1 ORDER BY name",
    )
    .bind(fleet_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, filters, created)| SavedView {
            name,
            filters: serde_json::from_str(&filters).unwrap_or_default(),
            created,
        })
        .collect())
}

/// One saved view.
pub async fn get(db: &Db, fleet_id: i64, name: &str) -> Result<Option<SavedView>, DbError> {
    Ok(list(db, fleet_id)
        .await?
        .into_iter()
        .find(|v| v.name == name))
}
