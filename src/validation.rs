//! Request validation that reports every problem at once as `INVALID_ARGUMENT` with
//! `google.rpc.BadRequest` field violations, before anything is written.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Collects field violations; [`Violations::into_result`] turns them into one status.
#[derive(Debug, Default)]
pub struct Violations {
    found: Vec<(String, String)>,
}

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records that `field` (a path such as `lines[2].sku`) is wrong, and why.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.found.push((field.into(), description.into()));
    }

    /// Records a violation unless `ok`.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Records the error of a parse result under `field` and returns its value, if any.
    pub fn parse<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok` when nothing was recorded, else INVALID_ARGUMENT naming every field.
    pub fn into_result(self) -> Result<(), Status> {
        if self.found.is_empty() {
            return Ok(());
        }
        let summary: Vec<String> = self
            .found
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect();
        let mut details = ErrorDetails::new();
        for (field, description) in self.found {
            details.add_bad_request_violation(field, description);
        }
        Err(Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {}", summary.join("; ")),
            details,
        ))
    }
}

/// The field violations carried by a status (empty if none), for clients and tests.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_is_reported_with_its_field() {
        let mut v = Violations::new();
        v.check(false, "lines[0].sku", "must not be empty");
        v.check(true, "customer_id", "never reported");
        v.add("lines[1].quantity", "must be at least 1");
        let status = v.into_result().expect_err("two violations");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("lines[0].sku"));
        assert_eq!(
            field_violations(&status),
            vec![
                ("lines[0].sku".to_string(), "must not be empty".to_string()),
                (
                    "lines[1].quantity".to_string(),
                    "must be at least 1".to_string()
                ),
            ]
        );
    }

    #[test]
    fn no_violation_is_ok() {
        assert!(Violations::new().into_result().is_ok());
    }
}
