//! The gRPC surface of the notification service.

use ordermesh::{
    proto::{
        common::PageResponse,
        notification::{notification_service_server::NotificationService, *},
    },
    ready::Ready,
};
use tonic::{Request, Response, Status};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{store, validate};

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
        let q = validate::list_notifications(request.get_ref())?;
        let size = q.size;
        let notifications =
            store::list(self.pool.get()?, q.order_id, q.kind, q.before, size).await?;
        let next_page_token = match notifications.last() {
            Some(last) if notifications.len() == size as usize => last.notification_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListNotificationsResponse {
            notifications,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn find_notified(
        &self,
        request: Request<FindNotifiedRequest>,
    ) -> Result<Response<FindNotifiedResponse>, Status> {
        let ids = validate::find_notified(request.get_ref())?;
        let found = store::notified(self.pool.get()?, &ids).await?;
        Ok(Response::new(FindNotifiedResponse {
            event_ids: found.iter().map(Uuid::to_string).collect(),
        }))
    }
}
