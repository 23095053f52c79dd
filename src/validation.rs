//! Request validation that reports every problem at once as `INVALID_ARGUMENT` with
//! `google.rpc.BadRequest` field violations, before anything is written.

use std::collections::HashSet;

use tonic::{Code, Status};

use crate::domain::{Sku, parse_quantity, parse_uuid};
use crate::limits::MAX_LINES;
use crate::proto::common::PageRequest;
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

    /// Ends validation: INVALID_ARGUMENT if anything was recorded, else the parsed values
    /// (which every successful `parse` produced, so `None` here is a bug, reported as INTERNAL).
    pub fn finish<T>(self, parsed: Option<T>) -> Result<T, Status> {
        self.into_result()?;
        parsed.ok_or_else(|| Status::internal("validation passed without a parsed value"))
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

/// FAILED_PRECONDITION with a `google.rpc.PreconditionFailure` detail: the request is well formed,
/// but the state of `subject` (e.g. an order id) does not allow it. `kind` names the state checked
/// (e.g. `ORDER_STATUS`), `description` says what it is and what to do.
pub fn precondition_failed(kind: &str, subject: &str, description: String) -> Status {
    let mut details = ErrorDetails::new();
    details.add_precondition_failure_violation(kind, subject, description.clone());
    Status::with_error_details(Code::FailedPrecondition, description, details)
}

/// Checks the lines of an order or reservation: 1 to [`MAX_LINES`], valid SKUs and quantities,
/// each SKU at most once. Returns the parsed lines when all are valid.
pub fn lines<'a>(
    v: &mut Violations,
    field: &str,
    lines: impl ExactSizeIterator<Item = (&'a str, i64)>,
) -> Vec<(Sku, i64)> {
    if lines.len() == 0 {
        v.add(field, "at least one line is required");
        return Vec::new();
    }
    if lines.len() > MAX_LINES {
        v.add(
            field,
            format!("at most {MAX_LINES} lines are allowed, got {}", lines.len()),
        );
        return Vec::new();
    }
    let mut parsed = Vec::with_capacity(lines.len());
    let mut seen = HashSet::new();
    for (i, (sku, quantity)) in lines.enumerate() {
        let sku = v.parse(&format!("{field}[{i}].sku"), Sku::parse(sku));
        let quantity = v.parse(&format!("{field}[{i}].quantity"), parse_quantity(quantity));
        if let (Some(sku), Some(quantity)) = (sku, quantity) {
            if !seen.insert(sku.clone()) {
                v.add(
                    format!("{field}[{i}].sku"),
                    format!("SKU {sku} appears more than once; merge the lines"),
                );
            }
            parsed.push((sku, quantity));
        }
    }
    parsed
}

/// Parses the `idempotency_key` and `order_id` that every mutating saga call carries.
pub fn keyed(
    v: &mut Violations,
    idempotency_key: &str,
    order_id: &str,
) -> Option<(String, uuid::Uuid)> {
    let key = v.parse(
        "idempotency_key",
        crate::domain::parse_idempotency_key(idempotency_key),
    );
    let order_id = v.parse("order_id", parse_uuid(order_id));
    key.zip(order_id)
}

/// Checks a list request's page whose token is the last id (a UUID) of the previous page.
/// Returns the page size (default when 0) and the id to continue after.
pub fn uuid_page(
    v: &mut Violations,
    page: Option<PageRequest>,
) -> (Option<u32>, Option<uuid::Uuid>) {
    let page = page.unwrap_or_default();
    let size = v.parse("page.page_size", crate::limits::page_size(page.page_size));
    let after = if page.page_token.is_empty() {
        None
    } else {
        v.parse(
            "page.page_token",
            parse_uuid(&page.page_token).map_err(|_| "is not a token from this API"),
        )
    };
    (size, after)
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
