//! Clients generated from proto/ in other ecosystems keep working: the Python example
//! (examples/python, grpcio-tools) and the TypeScript one (examples/typescript, protoc-gen-es
//! with Connect's gRPC transport, type-checked by `tsc --noEmit`) are generated at test time and
//! run against a live mesh.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    TestEnv,
    saga::{FORWARD_STEPS, stock},
};
use ordermesh::{
    config::ServiceName, proto::inventory::inventory_service_client::InventoryServiceClient,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args` in `dir`, panicking with its output unless it succeeds.
fn run(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &Path)],
) -> String {
    let output = Command::new(program.as_ref())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{:?} {args:?} (scripts/infra.sh installs it): {e}",
                program.as_ref()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?} {args:?} failed:\n{stdout}\n{}",
        program.as_ref(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Starts a mesh with laptops in stock, runs `example` (given the order service's host:port and
/// URL) and checks what it printed: the order CONFIRMED and every forward step succeeded, in
/// the client's own spelling of the enum values (`final`/`step` lines with `status` names).
async fn place_an_order_with(
    example: impl FnOnce(String, String) -> String + Send + 'static,
    confirmed: &str,
    succeeded: &str,
) {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 3).await;
    let order = mesh.get(ServiceName::Order);
    let (addr, url) = (order.grpc_addr.to_string(), order.url());
    let stdout = tokio::task::spawn_blocking(move || example(addr, url))
        .await
        .expect("join");
    assert!(stdout.contains(&format!("final {confirmed}")), "{stdout}");
    for step in FORWARD_STEPS {
        assert!(
            stdout.contains(&format!("step {step} {succeeded}")),
            "{step} missing from the timeline:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_python_client_places_an_order_watches_it_and_reads_its_timeline() {
    let generated: PathBuf =
        std::env::temp_dir().join(format!("ordermesh-py-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&generated).expect("temp dir");
    let out = generated.display().to_string();
    let (python_out, grpc_out) = (
        format!("--python_out={out}"),
        format!("--grpc_python_out={out}"),
    );
    let mut args = vec![
        "-m",
        "grpc_tools.protoc",
        "-I",
        "proto",
        &python_out,
        &grpc_out,
    ];
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
    args.extend(protos.iter().map(String::as_str));
    run("python3", &args, root(), &[]);

    let path = generated.clone();
    place_an_order_with(
        move |addr, _| {
            run(
                "python3",
                &[
                    "examples/python/place_order.py",
                    "--target",
                    &addr,
                    "--sku",
                    "LAPTOP",
                ],
                root(),
                &[("PYTHONPATH", &path)],
            )
        },
        "ORDER_STATUS_CONFIRMED",
        "STEP_STATUS_SUCCEEDED",
    )
    .await;
    let _ = std::fs::remove_dir_all(&generated);
}

/// The TypeScript example's compiler, from its own package (scripts/infra.sh runs `npm ci`).
fn tsc(example: &Path) -> PathBuf {
    example.join("node_modules/.bin/tsc")
}

/// Generates the TypeScript client from proto/ into examples/typescript/gen.
fn generate_typescript(example: &Path) {
    run(
        root().join("tools/node_modules/.bin/buf"),
        &["generate", "--template", "buf.gen.yaml", "../../proto"],
        example,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_generated_typescript_client_type_checks_places_an_order_watches_it_and_reads_its_timeline()
 {
    let example = root().join("examples/typescript");
    generate_typescript(&example);
    run(tsc(&example), &["--noEmit", "-p", "."], &example, &[]);
    type_check_rejects_a_field_of_the_wrong_type(&example);
    run(tsc(&example), &["-p", "."], &example, &[]);
    place_an_order_with(
        move |_, url| {
            run(
                "node",
                &["dist/place_order.js", "--target", &url, "--sku", "LAPTOP"],
                &example,
                &[],
            )
        },
        "CONFIRMED",
        "SUCCEEDED",
    )
    .await;
}

/// The type check has teeth: the example with a number where the generated type says string
/// does not compile, so a drifted proto breaks `make test` rather than a user's build.
fn type_check_rejects_a_field_of_the_wrong_type(example: &Path) {
    let source = std::fs::read_to_string(example.join("place_order.ts")).expect("place_order.ts");
    let wrong = source.replace(r#"customerId: "cust-ts-example""#, "customerId: 42");
    assert_ne!(
        wrong, source,
        "the example no longer sets customerId as the probe expects"
    );
    let probe = example.join(format!("type-probe-{}.ts", std::process::id()));
    std::fs::write(&probe, wrong).expect("write the probe");
    let output = Command::new(tsc(example))
        .args([
            "--noEmit", "--strict", "--target", "es2022", "--module", "nodenext",
        ])
        .args([
            "--moduleResolution",
            "nodenext",
            "--types",
            "node",
            "--skipLibCheck",
        ])
        .arg(&probe)
        .current_dir(example)
        .output()
        .expect("run tsc (scripts/infra.sh installs it)");
    let _ = std::fs::remove_file(&probe);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "tsc accepted a number as customerId:\n{stdout}"
    );
    assert!(
        stdout.contains("TS2322") && stdout.contains("'number' is not assignable to type 'string'"),
        "tsc failed for another reason than the wrong type:\n{stdout}"
    );
}
