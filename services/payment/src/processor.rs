//! The sandbox card processor, in the spirit of card networks' test tokens:
//! `declined_token` is always declined; any other token is approved. The canary behaviour v2
//! adds a stricter risk check: single charges above 5,000.00 (500,000 minor units) are declined.

use serde::{Deserialize, Serialize};

/// Which behaviour this process runs, from `ORDERMESH_PAYMENT__VERSION` (`v1` or `v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// The token that the sandbox always declines.
pub const DECLINED_TOKEN: &str = "declined_token";
/// v2's risk limit for one charge, in minor units.
pub const V2_RISK_LIMIT_MINOR: i64 = 500_000;

/// The processor's answer: approved, or declined with a reason.
pub fn authorize(version: Version, token: &str, amount_minor: i64) -> Result<(), String> {
    if token == DECLINED_TOKEN {
        return Err("card declined by issuer (sandbox token declined_token)".into());
    }
    if version == Version::V2 && amount_minor > V2_RISK_LIMIT_MINOR {
        return Err(format!(
            "v2 risk check: a single charge above {V2_RISK_LIMIT_MINOR} minor units needs review"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declined_token_is_declined_by_both_versions() {
        assert!(authorize(Version::V1, DECLINED_TOKEN, 100).is_err());
        assert!(authorize(Version::V2, DECLINED_TOKEN, 100).is_err());
    }

    #[test]
    fn only_v2_declines_large_charges() {
        assert!(authorize(Version::V1, "tok_visa", V2_RISK_LIMIT_MINOR + 1).is_ok());
        assert!(authorize(Version::V2, "tok_visa", V2_RISK_LIMIT_MINOR + 1).is_err());
        assert!(authorize(Version::V2, "tok_visa", V2_RISK_LIMIT_MINOR).is_ok());
    }
}
