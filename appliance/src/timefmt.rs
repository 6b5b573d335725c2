//! Timestamps as the API shows them: naive UTC ISO-8601, microseconds when not zero.
//!
//! Stored as microseconds since the Unix epoch (an integer on every database).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Now, in microseconds since the epoch: the clock the store stamps its rows with.
pub(crate) use appliance_store::now_micros;

fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]`, as Python's `isoformat()` of a naive UTC datetime.
pub(crate) fn format_micros(value: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(value) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    match t.microsecond() {
        0 => base,
        us => format!("{base}.{us:06}"),
    }
}

/// Parses the ISO-8601 forms clients send (`2030-01-01`, `2030-01-01T00:00:00`, with
/// fractional seconds, `Z` or a `±HH:MM` offset; a space may replace the `T`). Times without
/// an offset are UTC. Returns microseconds since the epoch.
pub(crate) fn parse_iso8601(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date_part, rest) = match text.find(['T', 't', ' ']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let date = parse_date(date_part)?;
    let Some(rest) = rest else {
        return Some(micros(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()));
    };
    let (time_part, offset) = split_offset(rest)?;
    let time = parse_time(time_part)?;
    let t = PrimitiveDateTime::new(date, time).assume_offset(offset);
    Some(micros(t))
}

fn number<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_date(s: &str) -> Option<Date> {
    let mut parts = s.split('-');
    let year: i32 = number(parts.next()?, 4)?;
    let month: u8 = number(parts.next()?, 2)?;
    let day: u8 = number(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

fn split_offset(s: &str) -> Option<(&str, UtcOffset)> {
    if let Some(t) = s.strip_suffix(['Z', 'z']) {
        return Some((t, UtcOffset::UTC));
    }
    if let Some(at) = s.rfind(['+', '-']) {
        let (t, off) = s.split_at(at);
        let sign: i8 = if off.starts_with('-') { -1 } else { 1 };
        let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
        let hours: i8 = number(digits.get(..2)?, 2)?;
        let minutes: i8 = match digits.len() {
            2 => 0,
            4 => number(&digits[2..], 2)?,
            _ => return None,
        };
        let offset = UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?;
        return Some((t, offset));
    }
    Some((s, UtcOffset::UTC))
}

fn parse_time(s: &str) -> Option<Time> {
    let (hms, fraction) = match s.split_once(['.', ',']) {
        Some((hms, f)) => (hms, Some(f)),
        None => (s, None),
    };
    let mut parts = hms.split(':');
    let hour: u8 = number(parts.next()?, 2)?;
    let minute: u8 = number(parts.next()?, 2)?;
    let second: u8 = match parts.next() {
        Some(p) => number(p, 2)?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    let micro = match fraction {
        None => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let mut digits: String = f.chars().take(6).collect();
            while digits.len() < 6 {
                digits.push('0');
            }
            digits.parse().ok()?
        }
        Some(_) => return None,
    };
    Time::from_hms_micro(hour, minute, second, micro).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python_isoformat() {
        let t = parse_iso8601("2030-01-01T00:00:00").unwrap();
        assert_eq!(format_micros(t), "2030-01-01T00:00:00");
        assert_eq!(format_micros(t + 123_456), "2030-01-01T00:00:00.123456");
        assert_eq!(format_micros(t + 5), "2030-01-01T00:00:00.000005");
    }

    #[test]
    fn parses_the_forms_clients_send() {
        let utc = parse_iso8601("2030-01-01T00:00:00").unwrap();
        assert_eq!(parse_iso8601("2030-01-01T00:00:00Z"), Some(utc));
        assert_eq!(parse_iso8601("2030-01-01"), Some(utc));
        assert_eq!(parse_iso8601("2030-01-01 00:00:00"), Some(utc));
        assert_eq!(parse_iso8601("2030-01-01T02:00:00+02:00"), Some(utc));
        assert_eq!(parse_iso8601("2029-12-31T19:00:00-0500"), Some(utc));
        assert_eq!(parse_iso8601("2030-01-01T00:00:00.5"), Some(utc + 500_000));
        assert_eq!(parse_iso8601("2030-01-01T00:00"), Some(utc));
        for bad in ["", "tomorrow", "2030-13-01", "2030-02-30", "2030-01-01T25:00:00", "2030-1-1"] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
