//! Cron schedules: the five-field standard format as upstream parses it (robfig/cron v3
//! `ParseStandard`): `*`, `?`, lists, ranges, steps, month and weekday names, and the
//! `@yearly`/`@annually`/`@monthly`/`@weekly`/`@daily`/`@midnight`/`@hourly` macros.
//! Times are computed in a time zone (UTC unless the CronJob names one).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule: one bit set per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day-of-month or day-of-week was `*`/`?`: days must match both fields (else either).
    dom_star: bool,
    dow_star: bool,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    what: &'static str,
}

const MINUTES: Bounds = Bounds { min: 0, max: 59, names: &[], what: "minute" };
const HOURS: Bounds = Bounds { min: 0, max: 23, names: &[], what: "hour" };
const DOMS: Bounds = Bounds { min: 1, max: 31, names: &[], what: "day of month" };
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    what: "month",
};
const DOWS: Bounds =
    Bounds { min: 0, max: 6, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"], what: "day of week" };

/// How far ahead [`Schedule::next_after`] looks before deciding a schedule never fires.
const MAX_YEARS_AHEAD: i16 = 5;

impl Schedule {
    /// Parses a schedule such as `*/15 9-17 * * mon-fri` or `@hourly`.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty spec string".into());
        }
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("time zones in the schedule are not supported; use spec.timeZone".into());
        }
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {spec}")),
            _ => spec.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {spec}", fields.len()));
        }
        let (minute, _) = field(fields[0], &MINUTES)?;
        let (hour, _) = field(fields[1], &HOURS)?;
        let (dom, dom_star) = field(fields[2], &DOMS)?;
        let (month, _) = field(fields[3], &MONTHS)?;
        let (dow, dow_star) = field(fields[4], &DOWS)?;
        Ok(Schedule { minute, hour, dom, month, dow, dom_star, dow_star })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = bit(self.dom, d.day() as u32);
        let dow = bit(self.dow, u32::from(d.weekday().to_sunday_zero_offset().unsigned_abs()));
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first matching minute strictly after `t` (civil time), or `None` when nothing
    /// matches within five years (e.g. `0 0 30 2 *`).
    pub fn next_civil(&self, t: DateTime) -> Option<DateTime> {
        let start = t.date().at(t.hour(), t.minute(), 0, 0);
        let mut t = start.checked_add(1.minute()).ok()?;
        let limit_year = start.year().saturating_add(MAX_YEARS_AHEAD);
        while t.year() <= limit_year {
            if !bit(self.month, t.month() as u32) {
                t = t.date().first_of_month().checked_add(1.month()).ok()?.at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if !bit(self.hour, t.hour() as u32) {
                t = t.date().at(t.hour(), 0, 0, 0).checked_add(1.hour()).ok()?;
                continue;
            }
            if !bit(self.minute, t.minute() as u32) {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The first scheduled instant strictly after `t`, in time zone `tz`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut civil = t.to_zoned(tz.clone()).datetime();
        // A civil time may map back to an instant not after `t` around a DST change.
        for _ in 0..4 {
            let next = self.next_civil(civil)?;
            let ts = tz.to_ambiguous_zoned(next).compatible().ok()?.timestamp();
            if ts > t {
                return Some(ts);
            }
            civil = next;
        }
        None
    }

    /// The latest scheduled instant in `(earliest, now]` and how many there were (counting
    /// stops past `cap`). `None` when there were none.
    pub fn most_recent(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
        cap: usize,
    ) -> Option<(Timestamp, usize)> {
        let mut t = self.next_after(earliest, tz)?;
        if t > now {
            return None;
        }
        let mut count = 1;
        loop {
            let Some(n) = self.next_after(t, tz) else { return Some((t, count)) };
            if n > now {
                return Some((t, count));
            }
            t = n;
            count += 1;
            if count > cap {
                // Too many to walk one by one: find the last one in a window before now
                // that doubles until it holds one.
                let mut window = jiff::SignedDuration::from_mins(2);
                loop {
                    let from = now.checked_sub(window).unwrap_or(t).max(t);
                    if let Some(mut last) = self.next_after(from, tz).filter(|x| *x <= now) {
                        while let Some(n) = self.next_after(last, tz).filter(|x| *x <= now) {
                            last = n;
                        }
                        return Some((last, count));
                    }
                    if from == t {
                        return Some((t, count));
                    }
                    window = window.checked_mul(2).unwrap_or(jiff::SignedDuration::MAX);
                }
            }
        }
    }
}

fn bit(set: u64, v: u32) -> bool {
    v < 64 && set & (1u64 << v) != 0
}

/// Parses one field (a comma list of ranges) into a bit set; also whether it was a star.
fn field(s: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in s.split(',') {
        let (r, is_star) = range(part, b)?;
        bits |= r;
        star |= is_star;
    }
    Ok((bits, star))
}

fn range(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => {
            let step: u32 =
                s.parse().map_err(|_| format!("failed to parse step {s:?} in {} field", b.what))?;
            if step == 0 {
                return Err(format!("step of range should be a positive number: {expr}"));
            }
            (r, Some(step))
        }
        None => (expr, None),
    };
    let mut star = false;
    let (start, end) = if range == "*" || range == "?" {
        star = true;
        (b.min, b.max)
    } else {
        match range.split_once('-') {
            Some((lo, hi)) => (value(lo, b)?, value(hi, b)?),
            None => {
                let v = value(range, b)?;
                // `5/10` runs from 5 to the end of the field.
                (v, if step.is_some() { b.max } else { v })
            }
        }
    };
    if start < b.min || end > b.max {
        return Err(format!("{} out of range ({}-{}): {expr}", b.what, b.min, b.max));
    }
    if start > end {
        return Err(format!("beginning of range ({start}) beyond end of range ({end}): {expr}"));
    }
    let step = step.unwrap_or(1);
    if step > 1 {
        star = false;
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1u64 << v;
        v += step;
    }
    Ok((bits, star))
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.min);
    }
    s.parse::<u32>().map_err(|_| format!("failed to parse {:?} in {} field", s, b.what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> DateTime {
        s.parse().unwrap_or_default()
    }

    fn next(spec: &str, from: &str) -> Option<DateTime> {
        Schedule::parse(spec).ok()?.next_civil(dt(from))
    }

    #[test]
    fn parses_and_rejects() {
        for ok in
            ["* * * * *", "*/15 9-17 * * mon-fri", "0 0 1,15 * *", "5/10 * * jan-mar ?", "@hourly", "@Daily"]
        {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@every 5m",
            "TZ=UTC * * * * *",
            "x * * * *",
            "* * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_times() {
        assert_eq!(next("* * * * *", "2024-01-01T10:00:30"), Some(dt("2024-01-01T10:01:00")));
        assert_eq!(next("*/1 * * * *", "2024-01-01T10:00:00"), Some(dt("2024-01-01T10:01:00")));
        assert_eq!(next("*/15 * * * *", "2024-01-01T10:16:00"), Some(dt("2024-01-01T10:30:00")));
        assert_eq!(next("0 9-17 * * mon-fri", "2024-01-05T17:30:00"), Some(dt("2024-01-08T09:00:00")));
        assert_eq!(next("@monthly", "2024-01-31T00:00:00"), Some(dt("2024-02-01T00:00:00")));
        assert_eq!(next("@yearly", "2024-06-01T00:00:00"), Some(dt("2025-01-01T00:00:00")));
        assert_eq!(next("0 0 29 2 *", "2024-03-01T00:00:00"), Some(dt("2028-02-29T00:00:00")));
        assert_eq!(next("0 0 30 2 *", "2024-01-01T00:00:00"), None);
        assert_eq!(next("5/20 * * * *", "2024-01-01T10:06:00"), Some(dt("2024-01-01T10:25:00")));
        assert_eq!(next("0 0 * * sun", "2024-01-01T00:00:00"), Some(dt("2024-01-07T00:00:00")));
    }

    #[test]
    fn day_of_month_or_week() {
        // Both restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * fri", "2024-01-01T00:00:00"), Some(dt("2024-01-05T00:00:00")));
        assert_eq!(next("0 0 13 * fri", "2024-01-12T00:00:00"), Some(dt("2024-01-13T00:00:00")));
        // One is a star: both must match.
        assert_eq!(next("0 0 * * fri", "2024-01-12T00:00:00"), Some(dt("2024-01-19T00:00:00")));
        // A stepped star is not a star (robfig).
        assert_eq!(next("0 0 */2 * fri", "2024-01-01T00:00:00"), Some(dt("2024-01-03T00:00:00")));
    }

    #[test]
    fn most_recent_and_zones() {
        let s = Schedule::parse("*/1 * * * *").unwrap_or_else(|e| panic!("{e}"));
        let ts = |x: &str| x.parse::<Timestamp>().unwrap_or_default();
        let utc = TimeZone::UTC;
        assert_eq!(
            s.most_recent(ts("2024-01-01T10:00:30Z"), ts("2024-01-01T10:03:10Z"), &utc, 100),
            Some((ts("2024-01-01T10:03:00Z"), 3))
        );
        assert_eq!(s.most_recent(ts("2024-01-01T10:00:30Z"), ts("2024-01-01T10:00:50Z"), &utc, 100), None);
        // Far behind: counting stops but the latest time is still found.
        let (t, n) = s
            .most_recent(ts("2023-01-01T00:00:00Z"), ts("2024-01-01T10:03:10Z"), &utc, 100)
            .unwrap_or_default();
        assert_eq!(t, ts("2024-01-01T10:03:00Z"));
        assert!(n > 100);
        if let Ok(tz) = TimeZone::get("Europe/Berlin") {
            let daily = Schedule::parse("0 9 * * *").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(daily.next_after(ts("2024-07-01T00:00:00Z"), &tz), Some(ts("2024-07-01T07:00:00Z")));
        }
    }
}
