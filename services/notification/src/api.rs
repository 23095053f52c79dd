//! The gRPC surface of the notification service.

use ordermesh::{
    domain::parse_uuid,
    proto::{
        common::PageResponse,
        notification::{notification_service_server::NotificationService, *},
    },
    ready::Ready,
    validation::{self, Violations},
};
use tonic::{Request, Response, Status};

use sqlx::PgPool;

use crate::store;

pub struct Notifications {
    pool: Ready<PgPool>,
}

impl Notifications {
    pub fn new(pool: Ready<PgPool>) -> Notifications {
        Notifications { pool }
    }
}

#[tonic::async_trait]
impl NotificationService for Notifications {
    #[tracing::instrument(skip_all)]
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Violations::new();
        let (size, before) = validation::uuid_page(&mut v, r.page);
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
        let notifications = store::list(self.pool.get()?, order_id, kind, before, size).await?;
        let next_page_token = match notifications.last() {
            Some(last) if notifications.len() == size as usize => last.notification_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListNotificationsResponse {
            notifications,
            page: Some(PageResponse { next_page_token }),
        }))
    }
}
