//! How people read wire values — money, timestamps, enum names — the same in the CLI and in
//! the order service's explorer pages.

use crate::proto::common::Money;

/// "USD 19.99" for an amount, "-" when absent.
pub fn money(m: Option<&Money>) -> String {
    match m {
        Some(m) => {
            let sign = if m.amount_minor < 0 { "-" } else { "" };
            let abs = m.amount_minor.unsigned_abs();
            format!("{} {sign}{}.{:02}", m.currency_code, abs / 100, abs % 100)
        }
        None => "-".into(),
    }
}

/// "2026-11-29 07:50:00 UTC" for a timestamp, "-" when absent.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A protobuf enum value name without its type's prefix: `ORDER_STATUS_CONFIRMED` reads
/// `CONFIRMED`.
pub fn enum_name<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_in_major_units_with_its_sign() {
        let usd = |amount_minor| Money {
            currency_code: "USD".into(),
            amount_minor,
        };
        assert_eq!(money(Some(&usd(1999))), "USD 19.99");
        assert_eq!(money(Some(&usd(5))), "USD 0.05");
        assert_eq!(money(Some(&usd(-250))), "USD -2.50");
        assert_eq!(money(None), "-");
    }

    #[test]
    fn timestamps_read_in_utc_to_the_second() {
        let t = prost_types::Timestamp {
            seconds: 1_764_402_600,
            nanos: 5,
        };
        assert_eq!(timestamp(Some(&t)), "2025-11-29 07:50:00 UTC");
        assert_eq!(timestamp(None), "-");
    }
}
