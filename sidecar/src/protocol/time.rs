//! RFC 3339 timestamp syntax, checked before a value reaches Postgres.
//!
//! Postgres parses far more than RFC 3339 (`now`, `tomorrow`, `epoch`, ...);
//! the protocol asks for RFC 3339 only, so the sidecar rejects anything else
//! with a 400 and lets Postgres interpret the (valid) rest.

fn digits(s: &[u8], range: std::ops::Range<usize>) -> Option<u32> {
    let part = s.get(range)?;
    part.iter().try_fold(0u32, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Whether `s` is `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with valid ranges.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let date_ok = || -> Option<()> {
        let (year, month, day) = (digits(b, 0..4)?, digits(b, 5..7)?, digits(b, 8..10)?);
        (b.get(4) == Some(&b'-') && b.get(7) == Some(&b'-')).then_some(())?;
        ((1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day))
            .then_some(())?;
        matches!(b.get(10), Some(b'T' | b't' | b' ')).then_some(())?;
        let (hour, minute, second) = (digits(b, 11..13)?, digits(b, 14..16)?, digits(b, 17..19)?);
        (b.get(13) == Some(&b':') && b.get(16) == Some(&b':')).then_some(())?;
        (hour < 24 && minute < 60 && second <= 60).then_some(())?;
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i > start).then_some(())?;
        }
        match b.get(i)? {
            b'Z' | b'z' => (i + 1 == b.len()).then_some(()),
            b'+' | b'-' => {
                let (oh, om) = (digits(b, i + 1..i + 3)?, digits(b, i + 4..i + 6)?);
                (b.get(i + 3) == Some(&b':') && i + 6 == b.len() && oh < 24 && om < 60)
                    .then_some(())
            }
            _ => None,
        }
    };
    date_ok().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc3339() {
        for good in [
            "2030-01-01T00:00:00Z",
            "2030-01-01T00:00:00.123Z",
            "2030-01-01T00:00:00.123456789+00:00",
            "2030-12-31t23:59:60-05:30",
            "2028-02-29 12:00:00z",
        ] {
            assert!(is_rfc3339(good), "{good:?}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "not-a-timestamp",
            "now",
            "tomorrow",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "2030-01-01T00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-02-29T00:00:00Z",
            "2030-01-32T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:60:00Z",
            "2030-01-01T00:00:00.Z",
            "2030-01-01T00:00:00+0000",
            "2030-01-01T00:00:00+00:00 ",
            "2030-01-01T00:00:00ZZ",
            "+2030-01-01T00:00:00Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad:?}");
        }
    }
}
