//! The `ordermesh` CLI as a user runs it: `up --demo` starts all five services and places an
//! order, client commands talk to them, Ctrl-C stops everything; bad arguments say what to fix.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{ReservedPort, TestEnv, binary, reserve};
use nix::{sys::signal::Signal, unistd::Pid};

/// `count` consecutive free loopback ports, held until dropped (see [`common::reserve`]):
/// the first is the block's base.
fn free_block(count: u16) -> Vec<ReservedPort> {
    for _ in 0..200 {
        let base = 20_000 + (rand_u16() % 20_000);
        let block: Vec<_> = (0..count).map_while(|i| reserve(base + i)).collect();
        if block.len() == count as usize {
            return block;
        }
    }
    panic!("no block of {count} free ports");
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// `ordermesh up` that is interrupted (Ctrl-C) and reaped even when the test fails.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let _ = self.0.wait();
    }
}

fn ordermesh(args: &[&str]) -> std::process::Output {
    Command::new(binary("ordermesh"))
        .args(args)
        .output()
        .expect("run ordermesh")
}

#[test]
fn up_starts_the_mesh_places_a_demo_order_and_stops_cleanly_on_ctrl_c() {
    let env = TestEnv::new();
    let (grpc_ports, admin_ports) = (free_block(5), free_block(5));
    let (grpc, admin) = (grpc_ports[0].port, admin_ports[0].port);
    let mut up = Up(Command::new(binary("ordermesh"))
        .args([
            "up",
            "--demo",
            "--grpc-base-port",
            &grpc.to_string(),
            "--admin-base-port",
            &admin.to_string(),
        ])
        .envs(env.env().into_iter().filter(|(k, _)| !k.ends_with("_ADDR")))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ordermesh up"));
    let (tx, rx) = mpsc::channel();
    let stdout = up.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let wait_for = |seen: &mut Vec<String>, needle: &str| {
        while !seen.iter().any(|l| l.contains(needle)) {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("never saw {needle:?}; output:\n{}", seen.join("\n")),
            }
        }
    };
    wait_for(&mut seen, "ordermesh is up (5 processes SERVING)");
    wait_for(&mut seen, "demo: placed order");
    wait_for(&mut seen, "demo: order is CONFIRMED");
    wait_for(&mut seen, "confirm-order");
    // The explorer's address is printed, and the demo order's page is there, CONFIRMED.
    let explorer = format!("http://127.0.0.1:{admin}/ui");
    assert!(
        seen.iter()
            .any(|l| l.contains("explorer") && l.contains(&explorer)),
        "{}",
        seen.join("\n")
    );
    wait_for(&mut seen, "demo: see it in the explorer");
    let page = seen
        .iter()
        .find_map(|l| l.split("demo: see it in the explorer: ").nth(1))
        .expect("the demo order's page")
        .trim()
        .to_string();
    assert!(page.starts_with(&explorer), "{page}");
    let mut response = ureq::get(&page)
        .call()
        .expect("the demo order's explorer page");
    let body = response.body_mut().read_to_string().expect("page body");
    assert!(body.contains(">CONFIRMED<"), "{body}");
    assert!(
        seen.iter().any(|l| l.starts_with("confirmation ORD-")),
        "the timeline shows the confirmed order"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("  inventory ") && l.contains(&format!("127.0.0.1:{}", grpc + 1)))
    );
    assert!(
        seen.iter()
            .any(|l| l.trim_start().starts_with("payment | ")),
        "logs are prefixed with the service"
    );

    let order_endpoint = format!("http://127.0.0.1:{grpc}");
    let inventory_endpoint = format!("http://127.0.0.1:{}", grpc + 1);
    let item = ordermesh(&[
        "inventory",
        "get",
        "LAPTOP",
        "--inventory-endpoint",
        &inventory_endpoint,
    ]);
    assert!(
        item.status.success(),
        "{}",
        String::from_utf8_lossy(&item.stderr)
    );
    let item = String::from_utf8_lossy(&item.stdout).to_string();
    assert!(
        item.contains("available       99") && item.contains("committed        1"),
        "{item}"
    );
    let set = ordermesh(&[
        "inventory",
        "set",
        "CABLE",
        "40",
        "--inventory-endpoint",
        &inventory_endpoint,
    ]);
    assert!(String::from_utf8_lossy(&set.stdout).contains("available       40"));
    let created = ordermesh(&[
        "order",
        "create",
        "--line",
        "CABLE:2:999",
        "--order-endpoint",
        &order_endpoint,
    ]);
    let created = String::from_utf8_lossy(&created.stdout).to_string();
    assert!(
        created.contains("status       PENDING") && created.contains("USD 19.98"),
        "{created}"
    );
    let order_id = created
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("order id line")
        .to_string();
    let got = ordermesh(&[
        "order",
        "get",
        &order_id,
        "--order-endpoint",
        &order_endpoint,
    ]);
    assert!(String::from_utf8_lossy(&got.stdout).contains(&order_id));
    let shown = ordermesh(&[
        "saga",
        "show",
        &order_id,
        "--order-endpoint",
        &order_endpoint,
    ]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("reserve-inventory"));
    let graph = ordermesh(&["saga", "graph"]);
    assert!(String::from_utf8_lossy(&graph.stdout).starts_with("stateDiagram-v2"));

    nix::sys::signal::kill(Pid::from_raw(up.0.id() as i32), Signal::SIGINT).expect("Ctrl-C");
    let status = up.0.wait().expect("wait for ordermesh up");
    assert!(
        status.success(),
        "ordermesh up exits 0 after Ctrl-C: {status}"
    );
    for i in 0..5 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", grpc + i)).is_err(),
            "port {} still open",
            grpc + i
        );
    }
}

#[test]
fn bad_arguments_and_unreachable_services_say_what_to_fix() {
    let bad_line = ordermesh(&["order", "create", "--line", "LAPTOP:many:100"]);
    assert!(!bad_line.status.success());
    let stderr = String::from_utf8_lossy(&bad_line.stderr);
    assert!(stderr.contains("quantity \"many\""), "{stderr}");

    let unreachable = ordermesh(&[
        "inventory",
        "get",
        "LAPTOP",
        "--inventory-endpoint",
        "http://127.0.0.1:9",
    ]);
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.contains("cannot reach the inventory service at http://127.0.0.1:9"),
        "{stderr}"
    );

    let missing = ordermesh(&["up", "--bin-dir", "/nonexistent"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("cargo build"),
        "{stderr}"
    );
}
