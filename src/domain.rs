//! Domain types shared by the contracts' users. Each is parsed once at the edge (`parse`
//! returns a description of what is wrong, ready to become a field violation) so inner code
//! never re-checks.

use std::fmt;

use crate::limits::{MAX_IDEMPOTENCY_KEY_LEN, MAX_QUANTITY};
use crate::proto::common;

/// A stock keeping unit: 1-64 characters of `A-Z a-z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Sku, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > 64 {
            return Err(format!("must be at most 64 characters, got {}", raw.len()));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("may contain only letters, digits, '-', '_' and '.'".into());
        }
        Ok(Sku(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Units of one line: 1 to [`MAX_QUANTITY`].
pub fn parse_quantity(raw: i64) -> Result<i64, String> {
    if raw < 1 {
        Err(format!("must be at least 1, got {raw}"))
    } else if raw > MAX_QUANTITY {
        Err(format!("must be at most {MAX_QUANTITY}, got {raw}"))
    } else {
        Ok(raw)
    }
}

/// A UUID given as text (order ids, reservation ids).
pub fn parse_uuid(raw: &str) -> Result<uuid::Uuid, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    uuid::Uuid::parse_str(raw).map_err(|_| format!("must be a UUID, got {:?}", truncate(raw, 40)))
}

/// An idempotency key: 1-200 printable ASCII characters.
pub fn parse_idempotency_key(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    if !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(raw.to_string())
}

/// Free text of at most `max` characters (may be empty).
pub fn parse_text(raw: &str, max: usize) -> Result<String, String> {
    let count = raw.chars().count();
    if count > max {
        return Err(format!("must be at most {max} characters, got {count}"));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(raw.to_string())
}

/// Non-empty text of at most `max` characters.
pub fn parse_required_text(raw: &str, max: usize) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    parse_text(raw, max)
}

/// An exact amount of money: minor units of an ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub currency: Currency,
    pub minor: i64,
}

/// An ISO 4217 alphabetic currency code (three upper-case letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(raw: &str) -> Result<Currency, String> {
        match raw.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(format!(
                "must be a 3-letter upper-case ISO 4217 code, got {:?}",
                truncate(raw, 10)
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest amount accepted anywhere (10^13 minor units), far below i64 overflow even when summed.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000_000;

impl Money {
    /// A non-negative amount from its wire form.
    pub fn parse(raw: Option<&common::Money>) -> Result<Money, String> {
        let raw = raw.ok_or_else(|| "is required".to_string())?;
        let currency = Currency::parse(&raw.currency_code)?;
        if raw.amount_minor < 0 {
            return Err(format!(
                "amount_minor must not be negative, got {}",
                raw.amount_minor
            ));
        }
        if raw.amount_minor > MAX_AMOUNT_MINOR {
            return Err(format!("amount_minor must be at most {MAX_AMOUNT_MINOR}"));
        }
        Ok(Money {
            currency,
            minor: raw.amount_minor,
        })
    }

    pub fn to_proto(self) -> common::Money {
        common::Money {
            currency_code: self.currency.to_string(),
            amount_minor: self.minor,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}.{:02}",
            self.currency,
            self.minor / 100,
            self.minor % 100
        )
    }
}

fn truncate(raw: &str, max: usize) -> String {
    raw.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_checked_for_length_and_characters() {
        assert!(Sku::parse("LAPTOP-15.v2_a").is_ok());
        assert_eq!(Sku::parse("").expect_err("empty"), "must not be empty");
        assert!(Sku::parse(&"A".repeat(65)).is_err());
        assert!(Sku::parse("has space").is_err());
        assert!(Sku::parse("ünïcode").is_err());
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(parse_quantity(1), Ok(1));
        assert!(parse_quantity(0).is_err());
        assert!(parse_quantity(-3).is_err());
        assert!(parse_quantity(MAX_QUANTITY + 1).is_err());
    }

    #[test]
    fn money_needs_a_currency_and_a_non_negative_amount() {
        let ok = common::Money {
            currency_code: "USD".into(),
            amount_minor: 1999,
        };
        assert_eq!(
            Money::parse(Some(&ok)).map(|m| m.to_string()),
            Ok("USD 19.99".into())
        );
        let neg = common::Money {
            currency_code: "USD".into(),
            amount_minor: -1,
        };
        assert!(Money::parse(Some(&neg)).is_err());
        let lower = common::Money {
            currency_code: "usd".into(),
            amount_minor: 1,
        };
        assert!(Money::parse(Some(&lower)).is_err());
        assert!(Money::parse(None).is_err());
    }

    #[test]
    fn idempotency_keys_are_printable_and_bounded() {
        assert!(parse_idempotency_key("0190:reserve-inventory").is_ok());
        assert!(parse_idempotency_key("").is_err());
        assert!(parse_idempotency_key("a b").is_err());
        assert!(parse_idempotency_key(&"k".repeat(201)).is_err());
    }
}
