//! The small conversions from the model's units to compose's and
//! systemd's: durations, CPUs, memory, shell quoting, compose's `$`
//! interpolation, and a cron schedule to a systemd `OnCalendar=`.

/// Seconds as a Go duration, the form compose reads (`30s`, `1m30s`,
/// `2h`; `0s` for zero).
pub fn duration(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".to_owned();
    }
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// Millicores as the decimal string of `deploy.resources.*.cpus`
/// (`250` → `0.25`, `4000` → `4`, `1` → `0.001`).
pub fn cpus(millicores: u32) -> String {
    let (whole, fraction) = (millicores / 1000, millicores % 1000);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:03}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// Bytes as compose memory: whole mebibytes as `NNNM` (Docker's `M` is
/// 1024², like the model's `MiB`), anything else in bytes (`NNNb`).
pub fn memory(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes > 0 && bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else {
        format!("{bytes}b")
    }
}

/// A string compose must not interpolate: every `$` doubled. Compose reads
/// `$VAR` and `${VAR}` in every value of the file, so a literal `$` in a
/// command, an environment value or a label would otherwise be replaced.
pub fn literal(text: &str) -> String {
    text.replace('$', "$$")
}

/// `text` as one word for `/bin/sh`: bare when it is made of safe
/// characters, else in single quotes.
pub fn shell_word(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Why a cron schedule has no systemd equivalent kiln writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron schedule `{schedule}` cannot be converted to a systemd timer: {reason}")]
pub struct CronError {
    pub schedule: String,
    pub reason: String,
}

/// A five-field cron schedule (or a macro) as a systemd `OnCalendar=`
/// expression (`systemd.time(7)`): `0 3 * * *` → `*-*-* 03:00:00`.
///
/// Both run in the host's local time. Converted: `*`, numbers, lists
/// (`1,15`), ranges (`1-5`), steps from a start (`*/15`, `5/15`) and day
/// and month names. Refused, with the reason: a step over a range
/// (`1-10/2`, which `OnCalendar` cannot say), and a schedule restricting
/// both the day of month and the day of week (cron runs when *either*
/// matches, systemd only when both do).
pub fn on_calendar(schedule: &str) -> Result<String, CronError> {
    let error = |reason: &str| CronError {
        schedule: schedule.to_owned(),
        reason: reason.to_owned(),
    };
    let expanded = match schedule.trim() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other if other.starts_with('@') => return Err(error("unknown macro")),
        other => other,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let [minute, hour, day, month, weekday] = fields[..] else {
        return Err(error(
            "expected five fields (minute hour day-of-month month day-of-week)",
        ));
    };
    if day != "*" && weekday != "*" {
        return Err(error(
            "it restricts both the day of month and the day of week: cron runs when either matches, systemd only when both do; split it into two jobs",
        ));
    }
    let minute = field(minute, 0, 59, &[], 2).map_err(|r| error(&format!("minute: {r}")))?;
    let hour = field(hour, 0, 23, &[], 2).map_err(|r| error(&format!("hour: {r}")))?;
    let day = field(day, 1, 31, &[], 2).map_err(|r| error(&format!("day of month: {r}")))?;
    let month = field(month, 1, 12, &MONTHS, 2).map_err(|r| error(&format!("month: {r}")))?;
    let date = format!("*-{month}-{day} {hour}:{minute}:00");
    if weekday == "*" {
        return Ok(date);
    }
    let weekday = weekdays(weekday).map_err(|r| error(&format!("day of week: {r}")))?;
    Ok(format!("{weekday} {date}"))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const SYSTEMD_DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// One numeric cron field in systemd's syntax (`1-5` → `01..05`,
/// `*/15` → `00/15`), every number checked against `min..=max`.
fn field(text: &str, min: u32, max: u32, names: &[&str], width: usize) -> Result<String, String> {
    let number = |part: &str| -> Result<u32, String> {
        let value = match names.iter().position(|n| n.eq_ignore_ascii_case(part)) {
            Some(index) => u32::try_from(index).map_err(|e| e.to_string())? + min,
            None => part
                .parse::<u32>()
                .map_err(|_| format!("`{part}` is not a number"))?,
        };
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{value} is outside {min}-{max}"))
        }
    };
    let pad = |value: u32| format!("{value:0width$}");
    if text == "*" {
        return Ok("*".to_owned());
    }
    let mut parts = Vec::new();
    for part in text.split(',') {
        let converted = match part.split_once('/') {
            Some((start, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{step}` is not a positive number"))?;
                let start = match start {
                    "*" => min,
                    start if start.contains('-') => {
                        return Err(format!(
                            "`{part}`: a step over a range has no OnCalendar form"
                        ));
                    }
                    start => number(start)?,
                };
                format!("{}/{step}", pad(start))
            }
            None => match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from)?, number(to)?);
                    if from > to {
                        return Err(format!("range `{part}` runs backwards"));
                    }
                    format!("{}..{}", pad(from), pad(to))
                }
                None => pad(number(part)?),
            },
        };
        parts.push(converted);
    }
    Ok(parts.join(","))
}

/// The day-of-week field as systemd day names (`1-5` → `Mon..Fri`; cron's
/// 0 and 7 are both Sunday).
fn weekdays(text: &str) -> Result<String, String> {
    let day = |part: &str| -> Result<usize, String> {
        if let Some(index) = DAYS.iter().position(|d| d.eq_ignore_ascii_case(part)) {
            return Ok(index);
        }
        match part.parse::<usize>() {
            Ok(7) => Ok(0),
            Ok(n) if n < 7 => Ok(n),
            _ => Err(format!("`{part}` is not a day (0-7 or sun-sat)")),
        }
    };
    let mut parts = Vec::new();
    for part in text.split(',') {
        if part.contains('/') {
            return Err(format!(
                "`{part}`: steps over days of the week are not converted"
            ));
        }
        match part.split_once('-') {
            Some((from, to)) => {
                // `5-7` (Friday to Sunday) ends on cron's second Sunday.
                let from = day(from)?;
                let to = if to == "7" { 7 } else { day(to)? };
                if from > to {
                    return Err(format!("range `{part}` runs backwards"));
                }
                if to == 7 {
                    if from == 0 {
                        parts.push("Sun..Sat".to_owned());
                    } else {
                        parts.push(format!("{}..Sat", SYSTEMD_DAYS[from]));
                        parts.push("Sun".to_owned());
                    }
                } else {
                    parts.push(format!("{}..{}", SYSTEMD_DAYS[from], SYSTEMD_DAYS[to]));
                }
            }
            None => parts.push(SYSTEMD_DAYS[day(part)?].to_owned()),
        }
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(30), "30s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(90), "1m30s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3661), "1h1m1s");
    }

    #[test]
    fn cpus_are_decimal_strings() {
        assert_eq!(cpus(250), "0.25");
        assert_eq!(cpus(100), "0.1");
        assert_eq!(cpus(1), "0.001");
        assert_eq!(cpus(1000), "1");
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(4000), "4");
        assert_eq!(cpus(0), "0");
    }

    #[test]
    fn memory_in_mebibytes_or_bytes() {
        assert_eq!(memory(128 << 20), "128M");
        assert_eq!(memory(1 << 30), "1024M");
        assert_eq!(memory(1000), "1000b");
        assert_eq!(memory(0), "0b");
    }

    #[test]
    fn dollars_are_doubled() {
        assert_eq!(literal("pa$h ${HOME} $$"), "pa$$h $${HOME} $$$$");
        assert_eq!(literal("plain"), "plain");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/-/health/live/"), "/-/health/live/");
        assert_eq!(shell_word("/a?b=c&d"), "'/a?b=c&d'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn cron_to_on_calendar() {
        let cases = [
            ("0 3 * * *", "*-*-* 03:00:00"),
            ("30 2 * * 0", "Sun *-*-* 02:30:00"),
            ("*/15 * * * *", "*-*-* *:00/15:00"),
            ("5/10 8-18 * * 1-5", "Mon..Fri *-*-* 08..18:05/10:00"),
            ("0 0 1,15 * *", "*-*-01,15 00:00:00"),
            ("0 4 * jan,jul *", "*-01,07-* 04:00:00"),
            ("0 4 1 */3 *", "*-01/3-01 04:00:00"),
            ("0 12 * * sat,sun", "Sat,Sun *-*-* 12:00:00"),
            ("0 12 * * 7", "Sun *-*-* 12:00:00"),
            ("0 12 * * 5-7", "Fri..Sat,Sun *-*-* 12:00:00"),
            ("0 12 * * 0-7", "Sun..Sat *-*-* 12:00:00"),
            ("@daily", "*-*-* 00:00:00"),
            ("@weekly", "Sun *-*-* 00:00:00"),
            ("@monthly", "*-*-01 00:00:00"),
            ("@yearly", "*-01-01 00:00:00"),
            ("@hourly", "*-*-* *:00:00"),
        ];
        for (cron, expected) in cases {
            assert_eq!(on_calendar(cron).as_deref(), Ok(expected), "{cron}");
        }
    }

    #[test]
    fn cron_forms_without_an_equivalent_are_refused() {
        let refused = [
            ("0 3 1 * 1", "both the day of month and the day of week"),
            ("1-10/2 * * * *", "a step over a range"),
            ("60 * * * *", "60 is outside 0-59"),
            ("0 24 * * *", "24 is outside 0-23"),
            ("0 0 0 * *", "0 is outside 1-31"),
            ("0 0 * 13 *", "13 is outside 1-12"),
            ("0 0 * * 8", "`8` is not a day"),
            ("0 0 * * */2", "steps over days"),
            ("x 0 * * *", "`x` is not a number"),
            ("*/0 * * * *", "not a positive number"),
            ("5-1 * * * *", "runs backwards"),
            ("0 3 * *", "expected five fields"),
            ("@reboot", "unknown macro"),
        ];
        for (cron, reason) in refused {
            let error = on_calendar(cron).expect_err(cron);
            assert!(error.to_string().contains(reason), "{cron}: {error}");
        }
    }
}
