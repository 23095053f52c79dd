//! The container images run: the order and inventory images, built by scripts/image.sh (what
//! `make image` runs) from this build's binaries, run under podman as UID 65532 with a
//! read-only root filesystem on the host network against the test's PostgreSQL and NATS. They
//! report SERVING to grpcurl from outside and confirm an order with the other three services
//! running as processes. Skipped, with a message, where podman is not installed.

use crate::common;

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{
    TestEnv, free_port,
    saga::{place, stock, wait_for},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{OrderStatus, order_service_client::OrderServiceClient},
    },
};

const TAG: &str = "e2e";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

/// A container of this test, removed (killed) when dropped.
struct Container {
    name: String,
    grpc: u16,
}

impl Container {
    /// Runs `service`'s image as the manifests do: UID 65532, read-only root, no capabilities.
    async fn run(env: &TestEnv, service: ServiceName, extra: &[(String, String)]) -> Container {
        let name = format!("{}-{service}", env.namespace);
        let (grpc, admin) = (free_port().await, free_port().await);
        // The test's settings, then the wiring over them, then this container's own ports.
        let mut settings: std::collections::BTreeMap<String, String> =
            env.env().into_iter().chain(extra.iter().cloned()).collect();
        settings.insert("ORDERMESH_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}"));
        settings.insert("ORDERMESH_ADMIN_ADDR".into(), format!("127.0.0.1:{admin}"));
        let image = format!("localhost/ordermesh/{service}:{TAG}");
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            &name,
            // Debian's podman: crun refuses this machine's cgroups, and the default ulimits
            // exceed its hard limits.
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "host",
            "--read-only",
            "--user",
            "65532:65532",
            "--cap-drop",
            "all",
        ]
        .map(String::from)
        .to_vec();
        for (k, v) in settings {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        args.push(image);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = podman(&args);
        assert!(
            output.status.success(),
            "podman run {service}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Container { name, grpc }
    }

    fn logs(&self) -> String {
        let output = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// Waits until grpcurl, from outside the container, gets SERVING for `service`.
    async fn wait_serving(&self, service: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = format!("127.0.0.1:{}", self.grpc);
        let request = format!(r#"{{"service":"{service}"}}"#);
        loop {
            let answer = common::grpcurl(&[
                "-plaintext",
                "-d",
                &request,
                &address,
                "grpc.health.v1.Health/Check",
            ]);
            if answer.as_deref().is_ok_and(|a| a.contains("\"SERVING\"")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reported SERVING ({answer:?}); logs:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The user the container's main process runs as, read by podman from the host.
    fn process_user(&self) -> String {
        let output = podman(&["top", &self.name, "huser"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_order_and_inventory_images_run_read_only_as_nonroot_and_confirm_an_order() {
    if Command::new("podman").arg("--version").output().is_err() {
        println!("SKIPPED: podman is not installed (apt-get install podman runc): no image test");
        return;
    }
    let built = Command::new(root().join("scripts/image.sh"))
        .args(["debug", TAG])
        .current_dir(root())
        .output()
        .expect("run scripts/image.sh");
    assert!(
        built.status.success(),
        "scripts/image.sh debug {TAG}: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let env = TestEnv::new();
    let mut wiring = Vec::new();
    let mut processes = Vec::new();
    for s in [
        ServiceName::Payment,
        ServiceName::Shipping,
        ServiceName::Notification,
    ] {
        let process = env.spawn(s, &[]).await;
        process.wait_serving().await;
        wiring.push((
            format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase()),
            process.url(),
        ));
        processes.push(process);
    }
    let inventory = Container::run(&env, ServiceName::Inventory, &wiring).await;
    inventory
        .wait_serving("ordermesh.inventory.v1.InventoryService")
        .await;
    wiring.push(("ORDERMESH_ENDPOINTS__INVENTORY".into(), inventory.url()));
    let order = Container::run(&env, ServiceName::Order, &wiring).await;
    order.wait_serving("ordermesh.order.v1.OrderService").await;

    assert_eq!(
        order.process_user(),
        "65532",
        "the order image runs as nonroot"
    );
    let inspect = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
        &order.name,
    ]);
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "true");
    // The CA bundle a TLS connection (a managed PostgreSQL, an OTLP collector) verifies with.
    let certs = tempfile::tempdir().expect("temp dir");
    let copied = podman(&[
        "cp",
        &format!("{}:/etc/ssl/certs/ca-certificates.crt", order.name),
        &certs.path().to_string_lossy(),
    ]);
    assert!(copied.status.success(), "{copied:?}");
    let bundle = std::fs::read_to_string(certs.path().join("ca-certificates.crt"))
        .expect("the image's CA bundle");
    assert!(bundle.contains("BEGIN CERTIFICATE"));

    let mut inventory_client = InventoryServiceClient::connect(inventory.url())
        .await
        .expect("connect to the inventory container");
    stock(&mut inventory_client, "LAPTOP", 5).await;
    let mut orders = OrderServiceClient::connect(order.url())
        .await
        .expect("connect to the order container");
    let placed = place(&mut orders, &[("LAPTOP", 1, 129_900)], "tok_visa").await;
    wait_for(&mut orders, &placed.order_id, OrderStatus::Confirmed).await;
    assert!(
        !order.logs().contains("Read-only file system"),
        "{}",
        order.logs()
    );
}

/// The lines of a Containerfile's last stage from USER on.
fn runtime_tail(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(path)).expect("read the Containerfile");
    let last_stage = text.rsplit("\nFROM ").next().unwrap_or_default();
    last_stage
        .lines()
        .skip_while(|l| !l.starts_with("USER "))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_local_runtime_stage_is_the_dockerfiles_own() {
    let dockerfile = runtime_tail("Dockerfile");
    assert!(
        dockerfile.iter().any(|l| l.starts_with("ENTRYPOINT")),
        "{dockerfile:?}"
    );
    assert_eq!(
        runtime_tail("images/runtime.Containerfile"),
        dockerfile,
        "images/runtime.Containerfile drifted from the Dockerfile's runtime stage"
    );
}
