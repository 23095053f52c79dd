//! Request validation for the notification API: a pure function of the request, so the handler
//! only reads, and the fuzz targets (`fuzz/`) can drive it without a database.

use ordermesh::{
    domain::parse_uuid,
    proto::notification::{FindNotifiedRequest, ListNotificationsRequest, NotificationKind},
    validation::{self, Violations},
};
use tonic::Status;
use uuid::Uuid;

/// What ListNotifications asks for: page size, the id to continue after, and the filters.
#[derive(Debug)]
pub struct ListQuery {
    pub size: u32,
    pub before: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub kind: Option<NotificationKind>,
}

pub fn list_notifications(r: &ListNotificationsRequest) -> Result<ListQuery, Status> {
    let mut v = Violations::new();
    let (size, before) = validation::uuid_page(&mut v, r.page.clone());
    let order_id = if r.order_id.is_empty() {
        None
    } else {
        v.parse("order_id", parse_uuid(&r.order_id))
    };
    let kind = match NotificationKind::try_from(r.kind) {
        Ok(NotificationKind::Unspecified) => None,
        Ok(kind) => Some(kind),
        Err(_) => {
            v.add("kind", format!("unknown notification kind {}", r.kind));
            None
        }
    };
    let size = v.finish(size)?;
    Ok(ListQuery {
        size,
        before,
        order_id,
        kind,
    })
}

/// Most event ids one FindNotified call may ask about.
pub const MAX_FIND_NOTIFIED: usize = 1_000;

/// The event ids FindNotified asks about: 1 to [`MAX_FIND_NOTIFIED`] UUIDs.
pub fn find_notified(r: &FindNotifiedRequest) -> Result<Vec<Uuid>, Status> {
    let mut v = Violations::new();
    v.check(
        !r.event_ids.is_empty() && r.event_ids.len() <= MAX_FIND_NOTIFIED,
        "event_ids",
        format!(
            "must hold 1 to {MAX_FIND_NOTIFIED} ids, got {}",
            r.event_ids.len()
        ),
    );
    let ids: Vec<Option<Uuid>> = r
        .event_ids
        .iter()
        .enumerate()
        .map(|(i, id)| v.parse(&format!("event_ids[{i}]"), parse_uuid(id)))
        .collect();
    v.finish(ids.into_iter().collect::<Option<Vec<Uuid>>>())
}

#[cfg(test)]
mod find_notified_tests {
    use super::*;

    fn ids(n: usize) -> FindNotifiedRequest {
        FindNotifiedRequest {
            event_ids: (0..n).map(|_| Uuid::now_v7().to_string()).collect(),
        }
    }

    #[test]
    fn between_one_and_a_thousand_uuids_are_accepted_and_anything_else_is_named() {
        assert_eq!(find_notified(&ids(3)).map(|v| v.len()).ok(), Some(3));
        assert!(find_notified(&ids(MAX_FIND_NOTIFIED)).is_ok());
        let none = find_notified(&ids(0)).expect_err("empty");
        assert!(none.message().contains("event_ids"), "{}", none.message());
        assert!(find_notified(&ids(MAX_FIND_NOTIFIED + 1)).is_err());
        let mut bad = ids(2);
        bad.event_ids[1] = "nope".into();
        let error = find_notified(&bad).expect_err("not a uuid");
        assert!(
            error.message().contains("event_ids[1]"),
            "{}",
            error.message()
        );
    }
}
