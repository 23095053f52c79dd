//! Clients generated from proto/ in other ecosystems keep working: the Python example
//! (examples/python, grpcio-tools) and the JavaScript one (examples/typescript, protoc-gen-es
//! with Connect's gRPC transport) are generated at test time and run against a live mesh.

mod common;

use std::{path::Path, process::Command};

use common::{TestEnv, saga::stock};
use ordermesh::{
    config::ServiceName, proto::inventory::inventory_service_client::InventoryServiceClient,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_python_client_places_an_order_watches_it_and_reads_its_timeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = std::env::temp_dir().join(format!("ordermesh-py-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&generated).expect("temp dir");
    let protos: Vec<String> = [
        "common",
        "order",
        "inventory",
        "payment",
        "shipping",
        "notification",
    ]
    .iter()
    .map(|s| format!("proto/ordermesh/{s}/v1/{s}.proto"))
    .collect();
    let out = format!("{}", generated.display());
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={out}"))
        .arg(format!("--grpc_python_out={out}"))
        .args(&protos)
        .current_dir(root)
        .status()
        .expect("python3 -m grpc_tools.protoc (scripts/infra.sh installs grpcio-tools)");
    assert!(status.success(), "generating the Python client failed");

    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 3).await;

    let target = mesh.get(ServiceName::Order).grpc_addr.to_string();
    let run = tokio::task::spawn_blocking({
        let root = root.to_path_buf();
        let generated = generated.clone();
        move || {
            Command::new("python3")
                .arg("examples/python/place_order.py")
                .args(["--target", &target, "--sku", "LAPTOP"])
                .env("PYTHONPATH", &generated)
                .current_dir(root)
                .output()
                .expect("run the Python example")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "example failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("final ORDER_STATUS_CONFIRMED"), "{stdout}");
    for step in [
        "reserve-inventory",
        "process-payment",
        "create-shipping-label",
        "confirm-order",
    ] {
        assert!(
            stdout.contains(&format!("step {step} STEP_STATUS_SUCCEEDED")),
            "{step} missing from the timeline:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&generated);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_javascript_client_places_an_order_watches_it_and_reads_its_timeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/typescript");
    let status = Command::new(root.join("tools/node_modules/.bin/buf"))
        .args(["generate", "--template", "buf.gen.yaml", "../../proto"])
        .current_dir(&example)
        .status()
        .expect("buf generate (scripts/infra.sh installs tools/ and examples/typescript/)");
    assert!(status.success(), "generating the JavaScript client failed");

    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 3).await;

    let target = mesh.get(ServiceName::Order).url();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["place_order.mjs", "--target", &target, "--sku", "LAPTOP"])
            .current_dir(example)
            .output()
            .expect("run the JavaScript example")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "example failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("final CONFIRMED"), "{stdout}");
    for step in [
        "reserve-inventory",
        "process-payment",
        "create-shipping-label",
        "confirm-order",
    ] {
        assert!(
            stdout.contains(&format!("step {step} SUCCEEDED")),
            "{step} missing from the timeline:\n{stdout}"
        );
    }
}
