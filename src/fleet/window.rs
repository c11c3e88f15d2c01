//! Allowed time windows for operations that take a site down, as written in
//! `fleet.yaml`: `"Mon-Thu 08:00-16:00 Europe/Berlin"` — days (a range
//! `Mon-Thu`, a list `Mon,Wed,Fri`, or both), a time range in that zone's
//! local time (end exclusive; `22:00-06:00` runs past midnight and belongs
//! to the day it starts on), and an IANA zone.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// One allowed window.
#[derive(Clone, Debug)]
pub struct Window {
    text: String,
    days: [bool; 7],
    start: Time,
    end: Time,
    zone: TimeZone,
}

const DAYS: [(&str, Weekday); 7] = [
    ("Mon", Weekday::Monday),
    ("Tue", Weekday::Tuesday),
    ("Wed", Weekday::Wednesday),
    ("Thu", Weekday::Thursday),
    ("Fri", Weekday::Friday),
    ("Sat", Weekday::Saturday),
    ("Sun", Weekday::Sunday),
];

fn day(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|(name, _)| name.eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown day {s:?}: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

fn time(s: &str) -> Result<Time, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("time {s:?}: expected HH:MM"))?;
    let h: i8 = h
        .parse()
        .map_err(|_| format!("time {s:?}: expected HH:MM"))?;
    let m: i8 = m
        .parse()
        .map_err(|_| format!("time {s:?}: expected HH:MM"))?;
    if h == 24 && m == 0 {
        return Ok(Time::MAX);
    }
    Time::new(h, m, 0, 0).map_err(|_| format!("time {s:?}: out of range"))
}

impl FromStr for Window {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days_text, times, zone] = parts[..] else {
            return Err(format!(
                "window {text:?}: expected \"DAYS HH:MM-HH:MM ZONE\", e.g. \"Mon-Thu 08:00-16:00 Europe/Berlin\""
            ));
        };
        let mut days = [false; 7];
        for item in days_text.split(',') {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut d = a;
                    loop {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[day(item)?] = true,
            }
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("window {text:?}: expected a time range HH:MM-HH:MM"))?;
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err(format!("window {text:?}: the time range is empty"));
        }
        let zone = TimeZone::get(zone)
            .map_err(|_| format!("window {text:?}: unknown time zone {zone:?}"))?;
        Ok(Window {
            text: text.to_string(),
            days,
            start,
            end,
            zone,
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Window {
    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.zone.clone());
        let t = local.time();
        let weekday = local.weekday();
        let index = |w: Weekday| DAYS.iter().position(|(_, d)| *d == w).unwrap_or(0);
        let today = index(weekday);
        if self.start < self.end {
            self.days[today] && t >= self.start && t < self.end
        } else {
            // Past midnight: today's evening, or the morning after a window day.
            let yesterday = (today + 6) % 7;
            (self.days[today] && t >= self.start) || (self.days[yesterday] && t < self.end)
        }
    }
}

/// Whether `at` is inside any of `windows` (no windows: always open).
pub fn open(windows: &[Window], at: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(at))
}

/// A duration as fleet.yaml and the CLI write it: `10m`, `90s`, `1h`,
/// `1d`, `0`.
pub fn parse_duration(text: &str) -> anyhow::Result<std::time::Duration> {
    use anyhow::Context;
    let t = text.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {text:?}: expected a number and s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("duration {text:?}: expected a number and s, m, h or d (e.g. 10m)"),
    };
    n.checked_mul(unit)
        .map(std::time::Duration::from_secs)
        .with_context(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_weekday_window_in_berlin() {
        let w: Window = "Mon-Thu 08:00-16:00 Europe/Berlin".parse().unwrap();
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        assert!(w.contains(at("2026-11-23T07:00:00Z")));
        assert!(!w.contains(at("2026-11-23T06:59:59Z")));
        assert!(!w.contains(at("2026-11-23T15:00:00Z")));
        assert!(w.contains(at("2026-11-26T14:59:00Z")), "Thursday");
        assert!(!w.contains(at("2026-11-27T10:00:00Z")), "Friday");
        // Summer time: UTC+2.
        assert!(w.contains(at("2026-07-06T06:00:00Z")));
    }

    #[test]
    fn lists_wraps_and_overnight() {
        let w: Window = "Fri,Sat-Sun 22:00-06:00 UTC".parse().unwrap();
        assert!(w.contains(at("2026-11-27T23:00:00Z")), "Friday night");
        assert!(
            w.contains(at("2026-11-28T05:00:00Z")),
            "Saturday morning after Friday"
        );
        assert!(
            w.contains(at("2026-11-30T05:59:00Z")),
            "Monday morning after Sunday"
        );
        assert!(!w.contains(at("2026-11-30T22:30:00Z")), "Monday night");
        let w: Window = "Sat-Mon 00:00-24:00 UTC".parse().unwrap();
        assert!(w.contains(at("2026-11-30T23:59:00Z")));
        assert!(!w.contains(at("2026-12-01T00:00:00Z")));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, want) in [
            ("Mon-Thu 08:00-16:00", "expected \"DAYS"),
            ("Mon-Thx 08:00-16:00 UTC", "unknown day \"Thx\""),
            ("Mon 8-16 UTC", "expected HH:MM"),
            ("Mon 08:00-08:00 UTC", "empty"),
            ("Mon 25:00-26:00 UTC", "out of range"),
            ("Mon 08:00-16:00 Mars/Olympus", "unknown time zone"),
        ] {
            let err = text.parse::<Window>().unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(open(&[], at("2026-11-23T00:00:00Z")));
    }
}
