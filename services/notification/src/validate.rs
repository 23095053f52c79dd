//! Request validation for the notification API: a pure function of the request, so the handler
//! only reads, and the fuzz targets (`fuzz/`) can drive it without a database.

use ordermesh::{
    domain::parse_uuid,
    proto::notification::{ListNotificationsRequest, NotificationKind},
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
