//! The Kubernetes and Istio manifests, offline: every overlay renders with kustomize, every
//! object validates against the Kubernetes schemas (kubernetes-validate) and every Istio and
//! Prometheus Operator object against its CRD schema (tools/validate-crds.mjs), and the rendered
//! objects agree with each other and with what the binaries really serve and read.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ordermesh::config::{Section, Settings};
use prost::Message;
use serde_json::Value;

/// Overlays users apply, relative to the repository root.
const OVERLAYS: &[&str] = &[
    "k8s/overlays/dev",
    "k8s/overlays/prod",
    "k8s/overlays/canary",
    "istio/fault-injection",
];
/// The five services (Deployment/Service/ServiceAccount names and `app` labels).
const SERVICES: &[&str] = &["order", "inventory", "payment", "shipping", "notification"];
/// gRPC retry conditions that are safe against idempotent callees: the request never ran, or the
/// server shed it / was unavailable. Never `deadline-exceeded` or `internal`.
const SAFE_RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "reset",
    "unavailable",
    "resource-exhausted",
];
/// For the order API, where CreateOrder without a request_id is not idempotent: only failures
/// that prove the request never reached the service.
const NEVER_REACHED_RETRY_ON: &[&str] = &["connect-failure", "refused-stream"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tool(variable: &str, fallback: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| fallback.to_string())
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo("."))
        .output()
        .unwrap_or_else(|e| panic!("running {program} (scripts/infra.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `kubectl kustomize <overlay>` as YAML text.
fn render(overlay: &str) -> String {
    run(
        &tool("ORDERMESH_KUBECTL", "kubectl"),
        &["kustomize", overlay],
    )
}

/// The rendered objects as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

#[test]
fn every_overlay_renders_and_validates_against_kubernetes_and_crd_schemas() {
    let dir = std::env::temp_dir().join(format!("ordermesh-k8s-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for overlay in OVERLAYS {
        let yaml = render(overlay);
        assert!(
            objects(&yaml).len() > 10,
            "{overlay} rendered almost nothing"
        );
        let file = dir.join(format!("{}.yaml", overlay.replace('/', "_")));
        std::fs::write(&file, yaml).expect("write rendered");
        files.push(file.to_string_lossy().to_string());
    }
    let mut args = vec!["-k", "1.32.0", "--strict", "--quiet", "--no-warn"];
    args.extend(files.iter().map(String::as_str));
    run(
        &tool("ORDERMESH_KUBERNETES_VALIDATE", "kubernetes-validate"),
        &args,
    );

    let mut args = vec!["tools/validate-crds.mjs"];
    args.extend(files.iter().map(String::as_str));
    let out = run("node", &args);
    assert!(out.contains(", 0 failures"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every variable any ordermesh binary reads.
fn known_variables() -> BTreeSet<String> {
    let mut known = Settings::variables();
    known.extend(ordermesh_order::SagaSettings::variables());
    known.extend(ordermesh_payment::PaymentSettings::variables());
    known
}

#[test]
fn every_variable_the_binaries_read_is_documented_in_the_configuration_page() {
    let page = std::fs::read_to_string(repo("docs/configuration.md")).expect("configuration page");
    let known = known_variables();
    assert!(known.contains("ORDERMESH_DATABASE__MAX_CONNECTIONS"));
    assert!(known.contains("ORDERMESH_SAGA__INVENTORY_TIMEOUT"));
    assert!(known.contains("ORDERMESH_PAYMENT__VERSION"));
    for variable in &known {
        assert!(
            page.contains(&format!("`{variable}`")),
            "{variable} is read but not in docs/configuration.md"
        );
    }
}

fn duration(text: &str) -> Duration {
    humantime_serde::re::humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("{text:?} is not a duration: {e}"))
}

/// Full names of the gRPC services in the contracts.
fn contract_services() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(ordermesh::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    set.file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect()
}

#[test]
fn rendered_objects_agree_with_each_other_and_with_the_binaries() {
    let known = known_variables();
    let contracts = contract_services();
    for overlay in OVERLAYS {
        let mut all = objects(&render(overlay));
        if overlay.starts_with("istio/") {
            // An Istio-only overlay is applied on top of an environment: check it against prod.
            all.extend(objects(&render("k8s/overlays/prod")));
        }
        let deployments = of_kind(&all, "Deployment");
        let ours: Vec<&Value> = deployments
            .iter()
            .copied()
            .filter(|d| {
                SERVICES.contains(
                    &d["spec"]["template"]["metadata"]["labels"]["app"]
                        .as_str()
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            ours.len() >= SERVICES.len(),
            "{overlay}: missing Deployments"
        );
        let config = shared_config(&all);
        let grpc_port: u64 = config["ORDERMESH_GRPC_ADDR"]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("ORDERMESH_GRPC_ADDR has a port");

        // Every variable set for a service container is one the binaries read.
        for key in config.keys() {
            assert!(
                known.contains(key),
                "{overlay}: ConfigMap sets unknown {key}"
            );
        }
        for deployment in &ours {
            let app = deployment["spec"]["template"]["metadata"]["labels"]["app"]
                .as_str()
                .unwrap_or_default();
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            for env in container["env"].as_array().into_iter().flatten() {
                let variable = env["name"].as_str().unwrap_or_default();
                assert!(
                    known.contains(variable),
                    "{overlay}: {} sets {variable}, which no binary reads",
                    name(deployment)
                );
            }
            // Probes hit the gRPC port the binary listens on, and health names it serves.
            let named_grpc = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "grpc")
                .and_then(|p| p["containerPort"].as_u64());
            assert_eq!(named_grpc, Some(grpc_port), "{overlay}: {app} grpc port");
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let grpc = &container[probe]["grpc"];
                assert_eq!(
                    grpc["port"].as_u64(),
                    Some(grpc_port),
                    "{overlay}: {app} {probe}"
                );
                let service = grpc["service"].as_str().unwrap_or_default();
                if probe == "livenessProbe" {
                    // Liveness must not follow dependencies (a database outage would restart
                    // every pod): the process-only health name.
                    assert_eq!(
                        service,
                        ordermesh::server::LIVENESS,
                        "{overlay}: {app} liveness"
                    );
                } else {
                    assert!(
                        contracts.contains(service)
                            && service.starts_with(&format!("ordermesh.{app}.v1.")),
                        "{overlay}: {app} {probe} asks for health of {service:?}, which it does not serve"
                    );
                }
            }
            // preStop + the service's own shutdown delay + drain fit in the grace period.
            let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            let delay = config
                .get("ORDERMESH_SHUTDOWN__DELAY")
                .map_or(Duration::ZERO, |d| duration(d));
            let drain = config
                .get("ORDERMESH_SHUTDOWN__DRAIN_TIMEOUT")
                .map_or(Duration::from_secs(20), |d| duration(d));
            assert!(
                Duration::from_secs(pre_stop) + delay + drain < Duration::from_secs(grace),
                "{overlay}: {app}: preStop {pre_stop}s + delay {delay:?} + drain {drain:?} >= grace {grace}s"
            );
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{overlay}: {app}");
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"], true,
                "{overlay}: {app}"
            );
        }

        // A disruption budget must leave room to evict: minAvailable < replicas.
        for pdb in of_kind(&all, "PodDisruptionBudget") {
            let app = pdb["spec"]["selector"]["matchLabels"]["app"]
                .as_str()
                .unwrap_or_default();
            if !SERVICES.contains(&app) {
                continue; // NATS's budget: the stream replicas test
            }
            let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
            let replicas: u64 = ours
                .iter()
                .filter(|d| d["spec"]["template"]["metadata"]["labels"]["app"] == app)
                .map(|d| d["spec"]["replicas"].as_u64().unwrap_or(1))
                .sum();
            let hpa_min = of_kind(&all, "HorizontalPodAutoscaler")
                .iter()
                .find(|h| h["spec"]["scaleTargetRef"]["name"] == app)
                .and_then(|h| h["spec"]["minReplicas"].as_u64());
            let floor = hpa_min.map_or(replicas, |m| m.min(replicas));
            assert!(
                min < floor,
                "{overlay}: PDB {app} minAvailable {min} >= replicas {floor}"
            );
        }

        // Routing: hosts are Services, subsets exist and select Deployments, weights sum to 100,
        // retries only on conditions that are safe against the callee.
        let services: BTreeSet<&str> = of_kind(&all, "Service").iter().map(|s| name(s)).collect();
        let rules = of_kind(&all, "DestinationRule");
        for vs in of_kind(&all, "VirtualService") {
            for route in vs["spec"]["http"].as_array().into_iter().flatten() {
                let destinations = route["route"].as_array().expect("route");
                if destinations.len() > 1 || destinations.iter().any(|d| d.get("weight").is_some())
                {
                    let total: u64 = destinations
                        .iter()
                        .map(|d| d["weight"].as_u64().unwrap_or(0))
                        .sum();
                    assert_eq!(total, 100, "{overlay}: VirtualService {} weights", name(vs));
                }
                let mut hosts = BTreeSet::new();
                for destination in destinations {
                    let host = destination["destination"]["host"].as_str().expect("host");
                    let service = host
                        .strip_suffix(".ordermesh.svc.cluster.local")
                        .unwrap_or(host);
                    assert!(
                        services.contains(service),
                        "{overlay}: route to unknown {host}"
                    );
                    hosts.insert(service.to_string());
                    if let Some(subset) = destination["destination"]["subset"].as_str() {
                        let labels = rules
                            .iter()
                            .find(|r| r["spec"]["host"] == host)
                            .and_then(|r| {
                                r["spec"]["subsets"]
                                    .as_array()?
                                    .iter()
                                    .find(|s| s["name"] == subset)
                                    .map(|s| s["labels"].clone())
                            })
                            .unwrap_or_else(|| panic!("{overlay}: {host} has no subset {subset}"));
                        let selects = ours.iter().any(|d| {
                            let pod = &d["spec"]["template"]["metadata"]["labels"];
                            pod["app"] == service
                                && labels
                                    .as_object()
                                    .is_some_and(|l| l.iter().all(|(k, v)| &pod[k] == v))
                        });
                        assert!(
                            selects,
                            "{overlay}: subset {subset} of {host} selects no Deployment"
                        );
                    }
                }
                let retry_on = route["retries"]["retryOn"].as_str().unwrap_or_default();
                let allowed = if hosts.contains("order") {
                    NEVER_REACHED_RETRY_ON
                } else {
                    SAFE_RETRY_ON
                };
                for condition in retry_on.split(',').filter(|c| !c.is_empty()) {
                    assert!(
                        allowed.contains(&condition.trim()),
                        "{overlay}: VirtualService {} retries on {condition}, unsafe for {hosts:?}",
                        name(vs)
                    );
                }
            }
        }

        // Everything lands in the ordermesh namespace, except the edge (gateway, JWT policy),
        // which must live where the ingress gateway runs.
        for object in &all {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            match object["kind"].as_str().unwrap_or_default() {
                "Namespace" => {}
                _ if namespace == "istio-system" => assert!(
                    object["spec"]["selector"]["istio"] == "ingressgateway"
                        || object["spec"]["selector"]["matchLabels"]["istio"] == "ingressgateway",
                    "{overlay}: {} {} in istio-system does not target the ingress gateway",
                    object["kind"],
                    name(object)
                ),
                kind => assert_eq!(
                    namespace,
                    "ordermesh",
                    "{overlay}: {kind} {} has no (or another) namespace",
                    name(object)
                ),
            }
        }

        // Every principal an AuthorizationPolicy allows inside the namespace has a ServiceAccount.
        let accounts: BTreeSet<&str> = of_kind(&all, "ServiceAccount")
            .iter()
            .map(|s| name(s))
            .collect();
        for policy in of_kind(&all, "AuthorizationPolicy") {
            let text = policy.to_string();
            for account in text.split("cluster.local/ns/ordermesh/sa/").skip(1) {
                let account: String = account
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    accounts.contains(account.as_str()),
                    "{overlay}: no ServiceAccount {account}"
                );
            }
        }
    }
}

#[test]
fn the_canary_overlay_routes_the_header_to_v2_and_splits_the_rest() {
    let all = objects(&render("k8s/overlays/canary"));
    let vs = of_kind(&all, "VirtualService")
        .into_iter()
        .find(|v| name(v) == "payment")
        .expect("payment VirtualService");
    let routes = vs["spec"]["http"].as_array().expect("http routes");
    assert_eq!(routes[0]["match"][0]["headers"]["x-version"]["exact"], "v2");
    assert_eq!(routes[0]["route"][0]["destination"]["subset"], "v2");
    let split: Vec<(String, u64)> = routes[1]["route"]
        .as_array()
        .expect("split")
        .iter()
        .map(|d| {
            (
                d["destination"]["subset"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d["weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(split, [("v1".to_string(), 90), ("v2".to_string(), 10)]);
    let v2 = of_kind(&all, "Deployment")
        .into_iter()
        .find(|d| name(d) == "payment-v2")
        .expect("payment-v2 Deployment");
    let env = v2["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("ORDERMESH_PAYMENT__VERSION") && env.contains("\"v2\""));

    // Production without the canary sends everything to v1.
    let prod = objects(&render("k8s/overlays/prod"));
    let vs = of_kind(&prod, "VirtualService")
        .into_iter()
        .find(|v| name(v) == "payment")
        .expect("payment VirtualService");
    assert_eq!(
        vs["spec"]["http"][0]["route"][0]["destination"]["subset"],
        "v1"
    );
    assert_eq!(vs["spec"]["http"][0]["route"][0]["weight"], 100);
}

#[test]
fn the_prometheus_rule_is_exactly_the_tested_alert_rules() {
    let rule_file: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo("prometheus/alerts.yml")).expect("rules"),
    )
    .expect("rules parse");
    let all = objects(&render("k8s/overlays/prod"));
    let resource = of_kind(&all, "PrometheusRule")
        .into_iter()
        .next()
        .expect("prod renders a PrometheusRule");
    assert_eq!(
        resource["spec"]["groups"], rule_file["groups"],
        "k8s/components/monitoring/prometheusrule.yaml is stale: run python3 scripts/prometheus-rule.py"
    );
}

/// The ordermesh-config data of one rendered overlay.
fn shared_config(all: &[Value]) -> HashMap<String, String> {
    of_kind(all, "ConfigMap")
        .iter()
        .filter(|c| name(c).starts_with("ordermesh-config"))
        .flat_map(|c| c["data"].as_object().cloned().unwrap_or_default())
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn stream_replicas_never_exceed_the_jetstream_servers_and_prod_routes_to_every_server() {
    for overlay in [
        "k8s/overlays/dev",
        "k8s/overlays/prod",
        "k8s/overlays/canary",
    ] {
        let all = objects(&render(overlay));
        let replicas: u64 = shared_config(&all)
            .get("ORDERMESH_NATS__REPLICAS")
            .map_or(1, |r| {
                r.parse().expect("ORDERMESH_NATS__REPLICAS is a number")
            });
        let nats = of_kind(&all, "StatefulSet")
            .into_iter()
            .find(|s| name(s) == "nats")
            .unwrap_or_else(|| panic!("{overlay}: no NATS StatefulSet"));
        let servers = nats["spec"]["replicas"].as_u64().expect("NATS replicas");
        assert!(
            replicas <= servers,
            "{overlay}: {replicas} stream replicas on {servers} NATS servers"
        );
        if overlay == "k8s/overlays/dev" {
            assert_eq!((replicas, servers), (1, 1), "{overlay}");
            continue;
        }
        assert_eq!(
            (replicas, servers),
            (3, 3),
            "{overlay}: R3 on a 3-node cluster"
        );
        let conf = of_kind(&all, "ConfigMap")
            .into_iter()
            .find(|c| name(c).starts_with("nats-config"))
            .and_then(|c| c["data"]["nats.conf"].as_str())
            .unwrap_or_else(|| panic!("{overlay}: no nats.conf"));
        let headless = nats["spec"]["serviceName"].as_str().expect("serviceName");
        for pod in 0..servers {
            let route = format!("nats://nats-{pod}.{headless}.ordermesh.svc.cluster.local:6222");
            assert!(conf.contains(&route), "{overlay}: no route {route}");
        }
        assert!(conf.contains("jetstream") && conf.contains("server_name: $POD_NAME"));
        let budget = of_kind(&all, "PodDisruptionBudget")
            .into_iter()
            .find(|p| name(p) == "nats")
            .unwrap_or_else(|| panic!("{overlay}: no NATS disruption budget"));
        assert_eq!(
            budget["spec"]["maxUnavailable"], 1,
            "{overlay}: a drain may take one server of three, never the majority"
        );
    }
}
