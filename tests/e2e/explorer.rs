//! The saga explorer on the order service's admin port (`/ui`): in a real headless Chromium
//! against a real mesh — orders appear and move on their pages without a reload, a declined
//! order's compensation is in its timeline, a saga whose callee hangs is in Attention, markup
//! in a customer id is text — and over plain HTTP, every bad address gets a 400 or 404 page.
//! The browser test writes screenshots of the three pages to `target/screenshots/`
//! (`ORDERMESH_BLESS=1` also copies them to `docs/images/`, where the README shows them).

use crate::common;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::{
    TestEnv,
    browser::Browser,
    http_get,
    saga::{place, stock, wait_for},
};
use nix::sys::signal::Signal;
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{CreateOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
    },
};

/// Pages and live updates take well under a second; this is the patience for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// A customer id that is markup: the pages must show it as text.
const MARKUP_CUSTOMER: &str = "<script>window.__pwned=1</script><b>bold</b>";

fn ui(admin: SocketAddr, path: &str) -> String {
    format!("http://{admin}{path}")
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

async fn place_as(
    orders: &mut OrderServiceClient<tonic::transport::Channel>,
    customer: &str,
) -> String {
    let mut request: CreateOrderRequest = common::saga::order(&[("MOUSE", 1, 2_500)], "tok_visa");
    request.customer_id = customer.into();
    orders
        .create_order(request)
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order")
        .order_id
}

#[tokio::test]
async fn the_explorer_follows_orders_live_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::new();
    // Shipping gets a long deadline, so an order waits (retrying) while shipping hangs.
    let settings = [
        ("ORDERMESH_SAGA__SHIPPING_TIMEOUT", "120s"),
        ("ORDERMESH_SAGA__MAX_DELIVER", "100"),
        ("ORDERMESH_SAGA__RETRY_BACKOFF", "1s"),
        ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
    ];
    let mut mesh = env.start_mesh_with(&settings).await;
    let admin = mesh.get(ServiceName::Order).admin_addr;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 50).await;
    stock(&mut inventory, "LAPTOP", 10).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);

    // The list is open before the order exists: it appears, and is counted, without a reload.
    browser.goto(&ui(admin, "/ui")).await;
    browser
        .wait_text("#connection", PATIENCE, |t| t == "live")
        .await;
    browser.mark_document().await;
    let first = place(&mut orders, &[("LAPTOP", 1, 129_900)], "tok_visa").await;
    browser
        .wait_text(
            &format!("#order-{} .badge", first.order_id),
            PATIENCE,
            |t| t == "CONFIRMED",
        )
        .await;
    browser
        .wait_text(r#"li[data-status="CONFIRMED"] strong"#, PATIENCE, |t| {
            t == "1"
        })
        .await;
    assert!(browser.same_document().await, "the list updated in place");

    // A declined payment: its page shows the compensation that released the stock.
    let declined = place(&mut orders, &[("MOUSE", 2, 2_500)], "declined_token").await;
    wait_for(&mut orders, &declined.order_id, OrderStatus::Cancelled).await;
    browser
        .goto(&ui(admin, &format!("/ui/orders/{}", declined.order_id)))
        .await;
    assert_eq!(
        browser.text("h1 .badge").await.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(
        browser
            .text(r#"tr[data-step="release-inventory"] .badge"#)
            .await
            .as_deref(),
        Some("SUCCEEDED"),
        "the compensation is in the timeline"
    );
    let refusal = browser
        .text(r#"tr[data-step="process-payment"] td.error"#)
        .await
        .unwrap_or_default();
    assert!(!refusal.is_empty(), "the payment step shows why it failed");
    assert_eq!(
        browser
            .text(".saga-diagram .edge.taken title")
            .await
            .map(|t| t.starts_with("process-payment failed")),
        Some(true),
        "the diagram highlights where compensation began"
    );
    assert_eq!(
        browser
            .count(".saga-diagram .state.current[data-state=CANCELLED]")
            .await,
        1
    );

    // Shipping hangs: the order waits at create-shipping-label, retrying, and the open
    // Attention page shows it without a reload.
    browser.goto(&ui(admin, "/ui/attention")).await;
    browser
        .wait_text("#connection", PATIENCE, |t| t == "live")
        .await;
    assert_eq!(
        browser.text("#attention .empty").await.as_deref(),
        Some("Nothing needs attention.")
    );
    browser.mark_document().await;
    let shipping = mesh.get(ServiceName::Shipping);
    shipping.signal(Signal::SIGSTOP);
    let hung = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
    let row = format!("#stuck-{}", hung.order_id);
    browser
        .wait_text(&format!("{row} .badge"), PATIENCE, |t| t == "retrying")
        .await;
    assert!(browser.same_document().await, "Attention updated in place");
    assert_eq!(
        browser
            .text(&format!("{row} td:nth-child(4)"))
            .await
            .as_deref(),
        Some("create-shipping-label")
    );
    let error = browser
        .text(&format!("{row} td.error"))
        .await
        .unwrap_or_default();
    assert!(!error.is_empty(), "Attention shows the last error");

    // Its page is open while shipping comes back: it reaches CONFIRMED without a reload.
    browser
        .goto(&ui(admin, &format!("/ui/orders/{}", hung.order_id)))
        .await;
    browser
        .wait_text("#connection", PATIENCE, |t| t == "live")
        .await;
    assert_eq!(
        browser.text("h1 .badge").await.as_deref(),
        Some("PAYMENT_PROCESSED")
    );
    browser.mark_document().await;
    shipping.signal(Signal::SIGCONT);
    browser
        .wait_text("h1 .badge", PATIENCE, |t| t == "CONFIRMED")
        .await;
    assert!(
        browser.same_document().await,
        "the order page updated in place"
    );
    let label = browser
        .text(r#"tr[data-step="create-shipping-label"] td.num"#)
        .await
        .unwrap_or_default();
    assert!(
        label.parse::<u32>().is_ok_and(|attempts| attempts >= 2),
        "the timeline counts the attempts made while shipping hung: {label}"
    );
    browser
        .wait_text("#connection", PATIENCE, |t| t == "final")
        .await;
    assert_eq!(browser.count(".saga-diagram .edge.taken").await, 6);
    browser.screenshot(&screenshots(), "explorer-order").await;

    // Markup in a customer id is text on the list and on the order's page.
    let marked = place_as(&mut orders, MARKUP_CUSTOMER).await;
    browser.goto(&ui(admin, "/ui")).await;
    assert_eq!(
        browser
            .text(&format!("#order-{marked} td.customer"))
            .await
            .as_deref(),
        Some(MARKUP_CUSTOMER)
    );
    browser
        .goto(&ui(admin, &format!("/ui/orders/{marked}")))
        .await;
    assert_eq!(
        browser.text("dd.customer").await.as_deref(),
        Some(MARKUP_CUSTOMER)
    );
    assert_eq!(
        browser.count("script").await,
        1,
        "only the explorer's own script"
    );
    assert_eq!(
        browser.count("main b").await,
        0,
        "no element from the customer id"
    );
    assert!(
        browser
            .eval(
                "return window.__pwned === undefined;",
                serde_json::Value::Null
            )
            .await
            .as_bool()
            .unwrap_or(false),
        "the customer id's script never ran"
    );

    // A step that fails on every delivery parks its saga with a dead letter: Attention shows
    // it with the command that resumes it. (The order service restarts allowing two
    // deliveries; inventory is stopped.)
    let order_grpc = mesh.get(ServiceName::Order).grpc_addr;
    mesh.kill(ServiceName::Order);
    let fewer = [("ORDERMESH_SAGA__MAX_DELIVER".to_string(), "2".to_string())];
    mesh.restart_with(&env, ServiceName::Order, order_grpc, &fewer)
        .await;
    let admin = mesh.get(ServiceName::Order).admin_addr;
    mesh.get(ServiceName::Inventory).signal(Signal::SIGSTOP);
    let parked = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
    browser.goto(&ui(admin, "/ui/attention")).await;
    let row = format!("#stuck-{}", parked.order_id);
    browser
        .wait_text(&format!("{row} .badge"), PATIENCE, |t| t == "parked")
        .await;
    let command = browser
        .wait_text(&format!("{row} code"), PATIENCE, |t| !t.is_empty())
        .await;
    assert!(
        command.starts_with(&format!(
            "ordermesh dlq redrive --namespace {} ",
            env.namespace
        )),
        "{command}"
    );
    browser
        .screenshot(&screenshots(), "explorer-attention")
        .await;
    mesh.get(ServiceName::Inventory).signal(Signal::SIGCONT);

    browser.goto(&ui(admin, "/ui")).await;
    browser
        .wait_text("#connection", PATIENCE, |t| t == "live")
        .await;
    // Counts are shared by every viewer for a second; the stream brings them up to date.
    browser
        .wait_text(r#"li[data-status="CONFIRMED"] strong"#, PATIENCE, |t| {
            t == "3"
        })
        .await;
    browser.screenshot(&screenshots(), "explorer-orders").await;
    bless_screenshots();
    browser.close().await;
}

/// `ORDERMESH_BLESS=1`: the README's copies of the screenshots are replaced by this run's.
fn bless_screenshots() {
    if std::env::var_os("ORDERMESH_BLESS").is_none() {
        return;
    }
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/images");
    std::fs::create_dir_all(&docs).expect("docs/images");
    for name in ["explorer-orders", "explorer-order", "explorer-attention"] {
        let file = format!("{name}.png");
        std::fs::copy(screenshots().join(&file), docs.join(&file)).expect("copy screenshot");
    }
}

#[tokio::test]
async fn explorer_pages_answer_bad_addresses_with_400_or_404_and_bound_every_list() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let admin = mesh.get(ServiceName::Order).admin_addr;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 50).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut placed = Vec::new();
    for _ in 0..7 {
        placed.push(place_as(&mut orders, MARKUP_CUSTOMER).await);
    }

    let get = |path: String| async move {
        http_get(admin, &path)
            .await
            .unwrap_or_else(|| panic!("no answer for {path}"))
    };
    for (path, status, says) in [
        (
            "/ui/orders/not-an-id".to_string(),
            400,
            "must be an order id",
        ),
        (
            format!("/ui/orders/{}", uuid::Uuid::now_v7()),
            404,
            "There is no order",
        ),
        ("/ui?status=SHIPPED".into(), 400, "unknown status"),
        ("/ui?size=100000".into(), 400, "must be at most 500"),
        ("/ui?size=ten".into(), 400, "must be a whole number"),
        (
            "/ui?before=yesterday".into(),
            400,
            "is not a token from this API",
        ),
        (
            format!("/ui?customer={}", "x".repeat(200)),
            400,
            "at most 128",
        ),
        (
            "/ui/attention?after=%3Cb%3E".into(),
            400,
            "previous Attention page",
        ),
        (
            "/ui/nothing/here".into(),
            404,
            "has no page /ui/nothing/here",
        ),
        ("/ui/live/orders?status=NOPE".into(), 400, "unknown status"),
        (
            "/ui/live/orders/not-an-id".into(),
            400,
            "must be an order id",
        ),
        (
            "/ui/live/attention?after=nope".into(),
            400,
            "previous Attention page",
        ),
    ] {
        let (code, body) = get(path.clone()).await;
        assert_eq!(code, status, "{path}: {body}");
        assert!(body.contains(says), "{path} says {says:?}: {body}");
        assert!(body.contains("<title>"), "{path} answers with a page");
    }

    // A filter value with markup comes back escaped, and so do the customer ids it matches.
    let (code, body) = get(format!(
        "/ui?customer={}",
        serde_urlencoded::to_string([("", MARKUP_CUSTOMER)])
            .expect("encode")
            .trim_start_matches('=')
    ))
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.contains(MARKUP_CUSTOMER),
        "the raw markup never reaches the page"
    );
    assert!(body.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;"));

    // Pages are bounded like ListOrders: 3 per page here, newest first, then the older ones.
    let (_, first) = get("/ui?size=3".into()).await;
    let rows = |body: &str| -> Vec<String> {
        placed
            .iter()
            .filter(|id| body.contains(&format!("id=\"order-{id}\"")))
            .cloned()
            .collect()
    };
    assert_eq!(rows(&first), placed[4..].to_vec());
    let older = format!("/ui?size=3&amp;before={}", placed[4]);
    assert!(
        first.contains(&older),
        "a link to the older orders: {first}"
    );
    let (_, second) = get(format!("/ui?size=3&before={}", placed[4])).await;
    assert_eq!(rows(&second), placed[1..4].to_vec());

    // The live list is a server-sent event stream of the same escaped fragments.
    let events = first_events(admin, "/ui/live/orders", "event: orders").await;
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: counts"), "{events}");
    assert!(
        events.contains("&lt;script&gt;window.__pwned=1"),
        "{events}"
    );
    assert!(!events.contains(MARKUP_CUSTOMER), "{events}");
}

/// Reads a server-sent event stream (headers included) until `until` shows, then hangs up.
async fn first_events(admin: SocketAddr, path: &str, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {until:?} from {path}: {}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "{path} ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}
