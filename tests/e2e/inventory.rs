//! Inventory against a real PostgreSQL: all-or-nothing reservations that never oversell under
//! concurrency, idempotent replays, and stock conservation through release and commit.

use crate::common;

use common::TestEnv;
use ordermesh::{
    config::ServiceName,
    proto::inventory::{
        CommitRequest, GetItemRequest, Item, ReleaseRequest, ReservationLine, ReservationStatus,
        ReserveOutcome, ReserveRequest, UpsertItemRequest,
        inventory_service_client::InventoryServiceClient,
    },
};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

type Client = InventoryServiceClient<Channel>;

async fn set_stock(c: &mut Client, sku: &str, available: i64) {
    c.upsert_item(UpsertItemRequest {
        sku: sku.into(),
        name: sku.into(),
        available,
    })
    .await
    .expect("upsert");
}

async fn item(c: &mut Client, sku: &str) -> Item {
    c.get_item(GetItemRequest { sku: sku.into() })
        .await
        .expect("get item")
        .into_inner()
        .item
        .expect("item")
}

fn reserve(order_id: Uuid, lines: &[(&str, i64)]) -> ReserveRequest {
    ReserveRequest {
        idempotency_key: format!("{order_id}:reserve-inventory"),
        order_id: order_id.to_string(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| ReservationLine {
                sku: sku.to_string(),
                quantity: *quantity,
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_hundred_concurrent_reservations_against_stock_ten_reserve_exactly_ten() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = Client::new(inventory.channel().await);
    set_stock(&mut c, "WIDGET", 10).await;

    let calls = (0..100).map(|_| {
        let mut c = c.clone();
        tokio::spawn(async move { c.reserve(reserve(Uuid::now_v7(), &[("WIDGET", 1)])).await })
    });
    let mut reserved = 0;
    let mut insufficient = 0;
    for call in calls {
        let response = call
            .await
            .expect("join")
            .expect("reserve answers")
            .into_inner();
        match response.outcome() {
            ReserveOutcome::Reserved => reserved += 1,
            ReserveOutcome::InsufficientStock => insufficient += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((reserved, insufficient), (10, 90));
    let widget = item(&mut c, "WIDGET").await;
    assert_eq!(
        (widget.available, widget.reserved, widget.committed),
        (0, 10, 0)
    );
}

#[tokio::test]
async fn a_repeated_reserve_returns_the_first_answer_and_changes_stock_once() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = Client::new(inventory.channel().await);
    set_stock(&mut c, "LAPTOP", 5).await;
    let request = reserve(Uuid::now_v7(), &[("LAPTOP", 2)]);

    let first = c
        .reserve(request.clone())
        .await
        .expect("first")
        .into_inner();
    let second = c
        .reserve(request.clone())
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(first.outcome(), ReserveOutcome::Reserved);
    let laptop = item(&mut c, "LAPTOP").await;
    assert_eq!((laptop.available, laptop.reserved), (3, 2));

    // The same key with a different request is a client bug, not a retry.
    let mut changed = request;
    changed.lines[0].quantity = 1;
    let status = c.reserve(changed).await.expect_err("key reuse");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(item(&mut c, "LAPTOP").await.available, 3);
}

#[tokio::test]
async fn a_reservation_is_all_or_nothing_across_lines() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = Client::new(inventory.channel().await);
    set_stock(&mut c, "LAPTOP", 1).await;
    set_stock(&mut c, "MOUSE", 100).await;

    let response = c
        .reserve(reserve(
            Uuid::now_v7(),
            &[("MOUSE", 2), ("LAPTOP", 5), ("NO-SUCH-SKU", 1)],
        ))
        .await
        .expect("reserve")
        .into_inner();
    assert_eq!(response.outcome(), ReserveOutcome::InsufficientStock);
    let shortages: Vec<(String, i64, i64)> = response
        .shortages
        .iter()
        .map(|s| (s.sku.clone(), s.requested, s.available))
        .collect();
    assert_eq!(
        shortages,
        vec![("LAPTOP".into(), 5, 1), ("NO-SUCH-SKU".into(), 1, 0)]
    );
    assert_eq!(
        item(&mut c, "MOUSE").await.available,
        100,
        "no line was reserved"
    );
    assert_eq!(item(&mut c, "LAPTOP").await.available, 1);
}

#[tokio::test]
async fn release_and_commit_conserve_stock_and_a_late_reserve_after_release_is_refused() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = Client::new(inventory.channel().await);
    set_stock(&mut c, "MOUSE", 10).await;

    let shipped = Uuid::now_v7();
    c.reserve(reserve(shipped, &[("MOUSE", 3)]))
        .await
        .expect("reserve");
    let commit = CommitRequest {
        idempotency_key: format!("{shipped}:commit"),
        order_id: shipped.to_string(),
    };
    assert!(
        c.commit(commit.clone())
            .await
            .expect("commit")
            .into_inner()
            .committed
    );
    assert!(
        c.commit(commit)
            .await
            .expect("commit replay")
            .into_inner()
            .committed,
        "replay answers the same"
    );

    let cancelled = Uuid::now_v7();
    c.reserve(reserve(cancelled, &[("MOUSE", 4)]))
        .await
        .expect("reserve");
    let release = ReleaseRequest {
        idempotency_key: format!("{cancelled}:release"),
        order_id: cancelled.to_string(),
        reason: "payment declined".into(),
    };
    assert!(
        c.release(release.clone())
            .await
            .expect("release")
            .into_inner()
            .released
    );
    assert!(
        c.release(release)
            .await
            .expect("release replay")
            .into_inner()
            .released
    );

    let mouse = item(&mut c, "MOUSE").await;
    assert_eq!(
        (mouse.available, mouse.reserved, mouse.committed),
        (7, 0, 3)
    );
    assert_eq!(
        mouse.available + mouse.reserved + mouse.committed,
        10,
        "stock is conserved"
    );

    // The saga gave up on an order before its Reserve arrived: the late Reserve holds nothing.
    let gave_up = Uuid::now_v7();
    let early_release = ReleaseRequest {
        idempotency_key: format!("{gave_up}:release"),
        order_id: gave_up.to_string(),
        reason: "timed out".into(),
    };
    assert!(
        !c.release(early_release)
            .await
            .expect("release")
            .into_inner()
            .released
    );
    let late = c
        .reserve(reserve(gave_up, &[("MOUSE", 1)]))
        .await
        .expect_err("late reserve");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(item(&mut c, "MOUSE").await.available, 7);
}

#[tokio::test]
async fn concurrent_commits_and_releases_sharing_skus_each_happen_once_and_conserve_stock() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = Client::new(inventory.channel().await);
    set_stock(&mut c, "CABLE", 100).await;
    set_stock(&mut c, "PLUG", 100).await;
    let orders: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        c.reserve(reserve(*order, &[("CABLE", 2), ("PLUG", 1)]))
            .await
            .expect("reserve");
    }

    // Every other order ships, the rest are released; each call is sent twice at once, as a
    // retry racing the original would be. Both copies must get the same, single effect.
    let calls = orders.iter().enumerate().flat_map(|(i, order)| {
        let order = *order;
        let c = c.clone();
        (0..2).map(move |_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let request = CommitRequest {
                        idempotency_key: format!("{order}:confirm-order"),
                        order_id: order.to_string(),
                    };
                    c.commit(request).await.map(|r| r.into_inner().committed)
                } else {
                    let request = ReleaseRequest {
                        idempotency_key: format!("{order}:release-inventory"),
                        order_id: order.to_string(),
                        reason: "payment declined".into(),
                    };
                    c.release(request).await.map(|r| r.into_inner().released)
                }
            })
        })
    });
    let calls: Vec<_> = calls.collect();
    for call in calls {
        let done = call
            .await
            .expect("join")
            .expect("commit or release answers");
        assert!(done, "a repeat replays the first answer");
    }

    let (cable, plug) = (item(&mut c, "CABLE").await, item(&mut c, "PLUG").await);
    assert_eq!(
        (cable.available, cable.reserved, cable.committed),
        (60, 0, 40)
    );
    assert_eq!((plug.available, plug.reserved, plug.committed), (80, 0, 20));
}

#[tokio::test]
async fn a_replica_that_reserved_settles_what_another_replica_left_not_what_it_remembers() {
    // Two replicas on one database: each remembers the reservations it made, and that memory
    // must lose to what the other replica did since.
    let env = TestEnv::new();
    let (a, b) = (
        env.start(ServiceName::Inventory).await,
        env.start(ServiceName::Inventory).await,
    );
    let (mut a, mut b) = (
        Client::new(a.channel().await),
        Client::new(b.channel().await),
    );
    set_stock(&mut a, "LAMP", 10).await;

    let released = Uuid::now_v7();
    a.reserve(reserve(released, &[("LAMP", 2)]))
        .await
        .expect("reserve on a");
    let release = b
        .release(ReleaseRequest {
            idempotency_key: format!("{released}:release"),
            order_id: released.to_string(),
            reason: "payment declined".into(),
        })
        .await
        .expect("release on b")
        .into_inner();
    assert!(release.released);
    let late_commit = a
        .commit(CommitRequest {
            idempotency_key: format!("{released}:commit"),
            order_id: released.to_string(),
        })
        .await
        .expect_err("commit of a released reservation");
    assert_eq!(late_commit.code(), Code::FailedPrecondition);

    let committed = Uuid::now_v7();
    a.reserve(reserve(committed, &[("LAMP", 3)]))
        .await
        .expect("reserve on a");
    let commit = b
        .commit(CommitRequest {
            idempotency_key: format!("{committed}:commit"),
            order_id: committed.to_string(),
        })
        .await
        .expect("commit on b")
        .into_inner();
    assert!(commit.committed);
    let late_release = a
        .release(ReleaseRequest {
            idempotency_key: format!("{committed}:release"),
            order_id: committed.to_string(),
            reason: "timed out".into(),
        })
        .await
        .expect("release of a committed reservation answers")
        .into_inner();
    // The saga releases a committed reservation only when it cancels the order after all
    // (ConfirmOrder past its deadline): the stock goes back, whatever replica A remembered.
    assert!(
        late_release.released,
        "a cancelled order's stock comes back"
    );
    assert_eq!(
        late_release.reservation.map(|r| r.status),
        Some(ReservationStatus::Released as i32)
    );
    let late_commit = a
        .commit(CommitRequest {
            idempotency_key: format!("{committed}:commit-again"),
            order_id: committed.to_string(),
        })
        .await
        .expect_err("commit of a returned reservation");
    assert_eq!(late_commit.code(), Code::FailedPrecondition);

    let lamp = item(&mut a, "LAMP").await;
    assert_eq!((lamp.available, lamp.reserved, lamp.committed), (10, 0, 0));
}
