//! One test per finding of the hardening review (issue 9), each named after what it guards.
//! They drive the public API the way a user or an attacker would: HTTP requests to the router,
//! snapshot files, the `place` command.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use vramfit::core::filter::Reason;
use vramfit::core::{build_node, fit_node, pod_demand, Catalog, Config, NodeFacts, PodFacts};
use vramfit::extender::http::{router, App, ServerConfig, MAX_NODES_FROM_REQUESTS};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::snapshot::Objects;

fn state() -> Arc<ExtenderState> {
    Arc::new(ExtenderState::from_snapshot(
        &Objects::default(),
        Config::default(),
        Catalog::default(),
        SystemTime::now(),
    ))
}

fn app(cluster: Arc<ExtenderState>) -> axum::Router {
    let app = App {
        cluster,
        metrics: Arc::new(Metrics::default()),
    };
    router(
        app,
        &ServerConfig {
            body_limit_bytes: 16 * 1024 * 1024,
            ..ServerConfig::default()
        },
    )
}

async fn post(app: &axum::Router, path: &str, body: String) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn t4_node(name: &str, allocatable: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: map(&[
            ("nvidia.com/gpu.product", "Tesla-T4"),
            ("nvidia.com/gpu.memory", "15360"),
        ]),
        annotations: BTreeMap::new(),
        allocatable: map(&[("nvidia.com/gpu", allocatable)]),
        unschedulable: false,
    }
}

fn gpu_pod(devices: &str, annotations: &[(&str, &str)]) -> PodFacts {
    PodFacts {
        namespace: "default".into(),
        name: "p".into(),
        annotations: map(annotations),
        containers: vec![vramfit::core::ContainerResources {
            requests: map(&[("nvidia.com/gpu", devices)]),
            ..Default::default()
        }],
        ..Default::default()
    }
}

// ---- item 1: one label kills the server -------------------------------------------------

#[tokio::test]
async fn a_node_claiming_four_billion_devices_is_a_bad_request_not_an_allocation() {
    let cluster = state();
    let app = app(cluster.clone());
    // The reproducer of the review, verbatim: 400 naming the node and the limit.
    let body = r#"{"Pod":{"metadata":{"name":"p"}},"Nodes":{"items":[{"metadata":{"name":"evil","labels":{"nvidia.com/gpu.product":"Tesla-T4","nvidia.com/gpu.memory":"15360"}},"status":{"allocatable":{"nvidia.com/gpu":"4294967295"}}}]}}"#;
    let (status, reply) = post(&app, "/filter", body.into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(
        reply["error"],
        "invalid Node \"evil\" in Nodes.items: allocatable nvidia.com/gpu claims 4294967295 devices, more than 64"
    );
    assert!(cluster.read().node("evil").is_none());
    // A GPU pod gets the same answer, and the server keeps serving.
    let gpu = body.replace(
        r#""metadata":{"name":"p"}}"#,
        r#""metadata":{"name":"p"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/gpu":"1"}}}]}}"#,
    );
    let (status, _) = post(&app, "/filter", gpu).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, reply) = post(
        &app,
        "/filter",
        r#"{"Pod":{"metadata":{"name":"p"}},"NodeNames":[]}"#.into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[test]
fn every_source_of_a_device_count_is_capped_per_node() {
    let config = Config::default();
    let now = SystemTime::now();
    let pod = pod_demand(&gpu_pod("1", &[]), &config, &Catalog::default()).unwrap();
    // Allocatable.
    let node = build_node(&t4_node("a", "65"), &config, now);
    assert!(node.devices.is_empty());
    assert!(matches!(
        fit_node(&node, &pod),
        Err(Reason::InvalidNode { .. })
    ));
    // The GFD count label.
    let mut labelled = t4_node("b", "8");
    labelled
        .labels
        .insert("nvidia.com/gpu.count".into(), "2000000".into());
    let node = build_node(&labelled, &config, now);
    assert!(node.devices.is_empty());
    let reason = fit_node(&node, &pod).unwrap_err();
    assert!(
        reason.to_string().contains("nvidia.com/gpu.count"),
        "{reason}"
    );
    // The configured default (no labels at all).
    let config_default = Config {
        default_device_vram_mib: Some(16384),
        ..Config::default()
    };
    let mut bare = t4_node("c", "1000000");
    bare.labels.clear();
    assert!(build_node(&bare, &config_default, now).devices.is_empty());
    // Ascend counts.
    let ascend = NodeFacts {
        name: "d".into(),
        labels: map(&[("node.kubernetes.io/npu.chip.name", "910B3")]),
        allocatable: map(&[("huawei.com/Ascend910", "100000")]),
        ..Default::default()
    };
    assert!(build_node(&ascend, &config, now).devices.is_empty());
    // 64 is still a node.
    assert_eq!(
        build_node(&t4_node("e", "64"), &config, now).devices.len(),
        64
    );
}

// ---- item 2: `%` in reasons ---------------------------------------------------------------

/// Every reason, with values that contain `%` wherever a value comes from a pod or a node.
fn every_reason() -> Vec<Reason> {
    let all = vec![
        Reason::InvalidPod {
            message: "invalid vramfit.io/headroom \"15%%\": expected a percent".into(),
        },
        Reason::UnknownNode,
        Reason::NoDevices {
            resource: "nvidia.com/gpu".into(),
        },
        Reason::NotSharing,
        Reason::VramUnknown,
        Reason::InvalidNode {
            message: "allocatable claims 100% devices".into(),
        },
        Reason::ProductNotAllowed {
            allowed: "A100%".into(),
            present: "T4%s".into(),
        },
        Reason::TooFewDevices { need: 1, have: 0 },
        Reason::DeviceTooSmall {
            need_mib: 200 * 1024,
            headroom: 15,
            largest_mib: 80 * 1024,
        },
        Reason::Unhealthy {
            need: 1,
            healthy: 0,
        },
        Reason::Insufficient {
            need: 1,
            need_mib: 1024,
            free: 0,
        },
        Reason::Insufficient {
            need: 1,
            need_mib: 0,
            free: 0,
        },
    ];
    // Adding a variant without listing it here fails to compile.
    for reason in &all {
        match reason {
            Reason::InvalidPod { .. }
            | Reason::UnknownNode
            | Reason::NoDevices { .. }
            | Reason::NotSharing
            | Reason::VramUnknown
            | Reason::InvalidNode { .. }
            | Reason::ProductNotAllowed { .. }
            | Reason::TooFewDevices { .. }
            | Reason::DeviceTooSmall { .. }
            | Reason::Unhealthy { .. }
            | Reason::Insufficient { .. } => {}
        }
    }
    all
}

#[test]
fn no_reason_text_contains_a_percent_sign_for_printf_style_events() {
    for reason in every_reason() {
        let text = reason.to_string();
        assert!(!text.contains('%'), "{:?} gives {text:?}", reason.code());
    }
}

#[test]
fn a_headroom_annotation_with_a_percent_sign_gives_a_reason_without_one() {
    let config = Config::default();
    let node = build_node(&t4_node("t4", "1"), &config, SystemTime::now());
    for headroom in ["150%", "15%s", "%d"] {
        let demand = pod_demand(
            &gpu_pod("1", &[("vramfit.io/headroom", headroom)]),
            &config,
            &Catalog::default(),
        );
        let reason = vramfit::core::schedule::verdict(Some(&node), &demand).unwrap_err();
        assert!(!reason.to_string().contains('%'), "{reason}");
    }
    let demand = pod_demand(
        &gpu_pod("1", &[("vramfit.io/vram", "200Gi")]),
        &config,
        &Catalog::default(),
    );
    let reason = vramfit::core::schedule::verdict(Some(&node), &demand).unwrap_err();
    assert_eq!(
        reason.to_string(),
        "vramfit: needs 200Gi per device (plus 15 percent headroom); largest device here has 15Gi"
    );
}

// ---- item 10 (wording): "needs 1 devices" -------------------------------------------------

#[test]
fn reasons_say_one_device_in_the_singular() {
    for reason in every_reason() {
        let text = reason.to_string();
        assert!(!text.contains(" 1 devices"), "{text}");
        assert!(!text.contains(" 1 free devices"), "{text}");
        assert!(!text.contains(" 1 healthy devices"), "{text}");
    }
    let two = Reason::TooFewDevices { need: 2, have: 1 }.to_string();
    assert_eq!(two, "vramfit: needs 2 devices; node has 1");
}

// ---- item 5: Node objects from filter requests stored forever ------------------------------

fn node_json(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360"}},
           "status": {"allocatable": {"nvidia.com/gpu": "1"}}})
}

#[tokio::test]
async fn nodes_from_filter_requests_stop_being_remembered_at_the_bound() {
    let cluster = state();
    let app = app(cluster.clone());
    let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}});
    let total = MAX_NODES_FROM_REQUESTS + 500;
    let mut sent = 0;
    while sent < total {
        let batch: Vec<Value> = (sent..(sent + 5000).min(total))
            .map(|i| node_json(&format!("made-up-{i}")))
            .collect();
        let count = batch.len();
        let body = json!({"Pod": pod, "Nodes": {"items": batch}}).to_string();
        let (status, reply) = post(&app, "/filter", body).await;
        assert_eq!(status, StatusCode::OK);
        // Every node is still answered, remembered or not.
        assert_eq!(reply["Nodes"]["items"].as_array().unwrap().len(), count);
        sent += count;
    }
    assert_eq!(cluster.read().node_count(), MAX_NODES_FROM_REQUESTS);
}

#[tokio::test]
async fn a_node_with_a_name_longer_than_kubernetes_allows_is_answered_not_remembered() {
    let cluster = state();
    let app = app(cluster.clone());
    let long = "n".repeat(100_000);
    let body = json!({"Pod": {"metadata": {"name": "p"}}, "Nodes": {"items": [node_json(&long)]}})
        .to_string();
    let (status, _) = post(&app, "/filter", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster.read().node_count(), 0);
}

// ---- item 6: products allow-lists ---------------------------------------------------------

#[test]
fn a_products_allow_list_is_bounded_and_deduplicated_once_per_pod() {
    let config = Config::default();
    let catalog = Catalog::default();
    let long: Vec<String> = (0..1000).map(|i| format!("GPU{i}")).collect();
    let err = pod_demand(
        &gpu_pod("1", &[("vramfit.io/products", &long.join(","))]),
        &config,
        &catalog,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 32 products"), "{err}");
    // The quoted value is cut, so the reason stays readable.
    assert!(err.to_string().len() < 300, "{}", err.to_string().len());

    let demand = pod_demand(
        &gpu_pod("1", &[("vramfit.io/products", " t4 , T4,t4,A100 ")]),
        &config,
        &catalog,
    )
    .unwrap();
    assert_eq!(demand.products, vec!["t4".to_string(), "A100".to_string()]);
    // Matching ignores case.
    let node = build_node(&t4_node("t4", "1"), &config, SystemTime::now());
    let fit = fit_node(&node, &demand).unwrap();
    assert_eq!((fit.devices.as_slice(), fit.exclusive), (&[0][..], true));
    let err = pod_demand(
        &gpu_pod("1", &[("vramfit.io/products", &"X".repeat(129))]),
        &config,
        &catalog,
    )
    .unwrap_err();
    assert!(err.to_string().contains("longer than 128"), "{err}");
}

#[test]
fn a_hundred_thousand_character_product_label_is_cut_to_a_name() {
    let mut facts = t4_node("t4", "1");
    facts
        .labels
        .insert("nvidia.com/gpu.product".into(), "A".repeat(100_000));
    let node = build_node(&facts, &Config::default(), SystemTime::now());
    assert_eq!(
        node.devices[0].product().len(),
        vramfit::core::node::MAX_PRODUCT_NAME_LEN
    );
}

// ---- item 7: drain, header-read timeout, idle timeout, connection limit ---------------------

mod serving {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use vramfit::extender::http::serve_on;

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<()>,
    }

    fn start(server: ServerConfig) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = App {
            cluster: state(),
            metrics: Arc::new(Metrics::default()),
        };
        let done = tokio::spawn(async move {
            serve_on(app, &server, listener, None, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(stop),
            done,
        }
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Reads one HTTP/1.1 response to `/healthz` (`ok`, 2 bytes of body); its head.
    async fn read_response(stream: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() >= end + 4 + 2 {
                    return Some(String::from_utf8_lossy(&got[..end]).into_owned());
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Whether the server closes the connection (after an error answer, if any) within 10 s.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_answers_requests_already_sent_on_keep_alive_connections() {
        let mut server = start(ServerConfig::default());
        let mut connections = Vec::new();
        for _ in 0..48 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(HEALTHZ).await.unwrap();
            let head = read_response(&mut stream).await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            connections.push(stream);
        }
        // Every connection is idle and kept alive. Send a second request on each, and stop the
        // server before it can have read them.
        for stream in &mut connections {
            stream.write_all(HEALTHZ).await.unwrap();
        }
        server.stop.take().unwrap().send(()).unwrap();
        for (i, stream) in connections.iter_mut().enumerate() {
            let head = read_response(stream)
                .await
                .unwrap_or_else(|| panic!("request {i} got no answer"));
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        tokio::time::timeout(Duration::from_secs(15), server.done)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let server = start(ServerConfig {
            header_read_timeout_seconds: 1,
            ..ServerConfig::default()
        });
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"POST /filter HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(&mut slow).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_silent_mid_body_is_closed_by_the_idle_timeout() {
        let server = start(ServerConfig {
            idle_timeout_seconds: 1,
            ..ServerConfig::default()
        });
        let mut stalled = TcpStream::connect(server.addr).await.unwrap();
        stalled
            .write_all(b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"Pod\"")
            .await
            .unwrap();
        assert!(closed_by_server(&mut stalled).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_limit_are_closed_and_slots_come_back() {
        let server = start(ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        });
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            stream.write_all(HEALTHZ).await.unwrap();
            let head = read_response(&mut stream).await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            held.push(stream);
        }
        let mut over = TcpStream::connect(server.addr).await.unwrap();
        assert!(closed_by_server(&mut over).await);
        drop(held.pop());
        // The slot is free once the server has seen the close.
        let mut answered = false;
        for _ in 0..100 {
            let mut again = TcpStream::connect(server.addr).await.unwrap();
            if again.write_all(HEALTHZ).await.is_ok() && read_response(&mut again).await.is_some() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "a connection is served again after one closed");
    }
}

// ---- items 3 and 4: free VRAM means placeable now; scrapes are consistent ------------------

/// `nodes` one-T4 nodes (non-sharing), the first `held` of them running a whole-T4 pod.
fn t4_cluster(nodes: usize, held: usize) -> Arc<ExtenderState> {
    let mut objects = Objects::default();
    for i in 0..nodes {
        objects.nodes.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("t4-{i}"), "labels": {
                    "nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360"}},
                "status": {"allocatable": {"nvidia.com/gpu": "1"}}
            }))
            .unwrap(),
        );
    }
    for i in 0..held {
        objects.pods.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("whole-{i}"), "namespace": "default", "uid": format!("u{i}"),
                             "annotations": {"vramfit.io/assigned-devices": "0"}},
                "spec": {"nodeName": format!("t4-{i}"), "containers": [{"name": "c",
                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                "status": {"phase": "Running"}
            }))
            .unwrap(),
        );
    }
    Arc::new(ExtenderState::from_snapshot(
        &objects,
        Config::default(),
        Catalog::default(),
        SystemTime::now(),
    ))
}

fn sample(text: &str, family: &str, class: &str) -> i64 {
    let prefix = format!("{family}{{class=\"{class}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} missing"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn free_vram_counts_nothing_on_devices_held_whole() {
    let metrics = Metrics::default();
    let all_held = t4_cluster(11, 11);
    let text = metrics.scrape(&all_held);
    assert_eq!(sample(&text, "vramfit_device_class_free_devices", "T4"), 0);
    assert_eq!(sample(&text, "vramfit_device_class_free_vram_mib", "T4"), 0);
    // One idle T4 left: its usable VRAM under the default 15 percent headroom.
    let one_left = t4_cluster(12, 11);
    let text = metrics.scrape(&one_left);
    assert_eq!(sample(&text, "vramfit_device_class_free_devices", "T4"), 1);
    assert_eq!(
        sample(&text, "vramfit_device_class_free_vram_mib", "T4"),
        15360 * 85 / 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scrapes_all_report_the_same_values() {
    let router = app(t4_cluster(200, 50));
    let mut scrapes = Vec::new();
    for _ in 0..20 {
        let router = router.clone();
        scrapes.push(tokio::spawn(async move {
            let response = router
                .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }));
    }
    for scrape in scrapes {
        let text = scrape.await.unwrap();
        assert_eq!(
            sample(&text, "vramfit_device_class_free_devices", "T4"),
            150
        );
        assert_eq!(
            sample(&text, "vramfit_device_class_free_vram_mib", "T4"),
            150 * (15360 * 85 / 100)
        );
    }
}

// ---- items 8, 9 and 11: the dry run and snapshot files --------------------------------------

mod dry_run {
    use std::path::Path;

    use super::*;
    use vramfit::dryrun::place::{render_table, DryRun};
    use vramfit::kubernetes::snapshot::{parse_objects, MAX_NESTING};

    fn objects(text: &str, workloads: bool) -> Objects {
        parse_objects(text, Path::new("test.yaml"), workloads).unwrap()
    }

    fn t4_nodes(count: usize, devices: u32) -> String {
        (0..count)
            .map(|i| {
                format!(
                    "---\nkind: Node\nmetadata:\n  name: t4-{i}\n  labels:\n    nvidia.com/gpu.product: Tesla-T4\n    nvidia.com/gpu.memory: \"15360\"\nstatus:\n  allocatable:\n    nvidia.com/gpu: \"{devices}\"\n    cpu: \"8\"\n    memory: 64Gi\n    pods: \"110\"\n"
                )
            })
            .collect()
    }

    const GPU_POD: &str = "---\nkind: Pod\nmetadata:\n  name: NAME\nspec:\n  containers:\n  - name: c\n    resources:\n      limits:\n        nvidia.com/gpu: \"1\"\n";

    #[test]
    fn place_lists_the_nodes_tied_with_its_choice() {
        let cluster = objects(&t4_nodes(3, 1), false);
        let pods = objects(&GPU_POD.replace("NAME", "p"), true);
        let config = Config::default();
        let mut dry = DryRun::new(&cluster, &config, &Catalog::default(), SystemTime::now());
        let report = dry.place_all(&pods.pods, &config, &Catalog::default());
        let placed = &report.pods[0];
        assert_eq!(placed.node.as_deref(), Some("t4-0"));
        assert_eq!(placed.tied, vec!["t4-1".to_string(), "t4-2".to_string()]);
        assert!(render_table(&report).contains("t4-0 +2 tied"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["pods"][0]["tied"], json!(["t4-1", "t4-2"]));
    }

    #[test]
    fn place_shows_pods_that_already_exist_where_they_are() {
        let mut cluster_text = t4_nodes(2, 2);
        // `p` is bound on t4-1, device 1; a Deployment `web` has one replica bound on t4-0.
        cluster_text.push_str("---\nkind: Pod\nmetadata:\n  name: p\n  namespace: default\n  uid: u-p\n  annotations:\n    vramfit.io/assigned-devices: \"1\"\nspec:\n  nodeName: t4-1\n  containers:\n  - name: c\n    resources:\n      limits:\n        nvidia.com/gpu: \"1\"\nstatus:\n  phase: Running\n");
        cluster_text.push_str("---\nkind: Pod\nmetadata:\n  name: web-5d8f9c-x2k4p\n  namespace: default\n  uid: u-web\n  ownerReferences:\n  - kind: ReplicaSet\n    name: web-5d8f9c\n    controller: true\n  annotations:\n    vramfit.io/assigned-devices: \"0\"\nspec:\n  nodeName: t4-0\n  containers:\n  - name: c\n    resources:\n      limits:\n        nvidia.com/gpu: \"1\"\nstatus:\n  phase: Running\n");
        let cluster = objects(&cluster_text, false);
        let mut file = GPU_POD.replace("NAME", "p");
        file.push_str("---\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n      - name: c\n        resources:\n          limits:\n            nvidia.com/gpu: \"1\"\n");
        let pods = objects(&file, true);
        let config = Config::default();
        let mut dry = DryRun::new(&cluster, &config, &Catalog::default(), SystemTime::now());
        let report = dry.place_all(&pods.pods, &config, &Catalog::default());
        let p = &report.pods[0];
        assert!(p.existing);
        assert_eq!(p.node.as_deref(), Some("t4-1"));
        assert_eq!(p.devices.iter().map(|d| d.index).collect::<Vec<_>>(), [1]);
        let web0 = &report.pods[1];
        assert!(web0.existing, "{web0:?}");
        assert_eq!(web0.node.as_deref(), Some("t4-0"));
        // The second replica does not exist yet: placed on one of the two free devices left.
        let web1 = &report.pods[2];
        assert!(!web1.existing);
        let chosen = (
            web1.node.as_deref(),
            web1.devices.iter().map(|d| d.index).collect::<Vec<_>>(),
        );
        assert!(
            chosen == (Some("t4-0"), vec![1]) || chosen == (Some("t4-1"), vec![0]),
            "{web1:?}"
        );
        // Four devices, three pods: nothing was placed twice.
        assert_eq!(dry.inventory.placements().count(), 3);
        assert!(render_table(&report).contains("t4-1 (existing)"));
    }

    #[test]
    fn a_table_cell_longer_than_65535_characters_does_not_panic() {
        let cluster = objects(&t4_nodes(1, 1), false);
        let long = "p".repeat(100_000);
        let pods = objects(&GPU_POD.replace("NAME", &long), true);
        let config = Config::default();
        let mut dry = DryRun::new(&cluster, &config, &Catalog::default(), SystemTime::now());
        let report = dry.place_all(&pods.pods, &config, &Catalog::default());
        let table = render_table(&report);
        assert!(table.contains(&long));
    }

    #[test]
    fn a_yaml_file_nested_a_hundred_thousand_deep_is_refused_before_parsing() {
        let deep = 100_000;
        let flow = format!("{}{}", "[".repeat(deep), "]".repeat(deep));
        let yaml_flow = format!("kind: {flow}");
        let err = parse_objects(&yaml_flow, Path::new("deep.yaml"), false).unwrap_err();
        assert!(
            err.to_string().contains(&format!("at most {MAX_NESTING}")),
            "{err}"
        );
        let mut block = String::new();
        for level in 0..2_000 {
            block.push_str(&" ".repeat(level * 2));
            block.push_str("a:\n");
        }
        let err = parse_objects(&block, Path::new("deep.yaml"), false).unwrap_err();
        assert!(
            err.to_string().contains(&format!("at most {MAX_NESTING}")),
            "{err}"
        );
        // The error names the line where the limit was passed (two columns per level).
        let line = MAX_NESTING + 2;
        assert!(
            err.to_string()
                .starts_with(&format!("deep.yaml:{line}: nested at least")),
            "{err}"
        );
        let dashes = format!("{}x\n", "- ".repeat(deep));
        let err = parse_objects(&dashes, Path::new("deep.yaml"), false).unwrap_err();
        // One line of `- ` markers, each a level.
        assert_eq!(
            err.to_string(),
            format!(
                "deep.yaml:1: nested at least {deep} levels deep; at most {MAX_NESTING} are read"
            )
        );
        // JSON is held to the same depth by its parser.
        let err = parse_objects(&flow, Path::new("deep.json"), false).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn a_bound_pod_without_assigned_devices_never_takes_an_annotated_pods_device() {
        let mut text = t4_nodes(1, 2);
        // The unannotated pod comes first in the file; the annotated one holds device 0.
        for (name, annotation) in [
            ("guessed", ""),
            (
                "annotated",
                "  annotations:\n    vramfit.io/assigned-devices: \"0\"\n",
            ),
        ] {
            text.push_str(&format!("---\nkind: Pod\nmetadata:\n  name: {name}\n  uid: u-{name}\n{annotation}spec:\n  nodeName: t4-0\n  containers:\n  - name: c\n    resources:\n      limits:\n        nvidia.com/gpu: \"1\"\nstatus:\n  phase: Running\n"));
        }
        let cluster = objects(&text, false);
        let state = ExtenderState::from_snapshot(
            &cluster,
            Config::default(),
            Catalog::default(),
            SystemTime::now(),
        );
        let inventory = state.read();
        let device = |id: &str| inventory.placement(id).unwrap().shares[0].index;
        assert_eq!(device("u-annotated"), 0);
        assert_eq!(device("u-guessed"), 1);
        let node = inventory.node("t4-0").unwrap();
        assert!(node.devices.iter().all(|d| d.exclusive_holders == 1));
    }
}

// ---- item 10: a 503 from /readyz is an answer, not an ERROR line ---------------------------

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn readyz_before_ready_logs_no_error() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let not_ready = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(vramfit::extender::binder::RecordOnly),
    ));
    let router = app(not_ready);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            for _ in 0..3 {
                let response = router
                    .clone()
                    .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
        })
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!log.contains("ERROR"), "{log}");
}

// ---- found by tests/fuzz_http.rs: device sizes near u64::MAX --------------------------------

#[tokio::test]
async fn a_gpu_memory_label_near_u64_max_is_ignored_not_overflowed() {
    let app = app(state());
    let body = json!({"Pod": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}},
        "Nodes": {"items": [{"metadata": {"name": "huge", "labels": {
            "nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": u64::MAX.to_string()}},
            "status": {"allocatable": {"nvidia.com/gpu": "2"}}}]}})
    .to_string();
    for verb in ["/filter", "/prioritize"] {
        let (status, reply) = post(&app, verb, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{verb}: {reply}");
    }
    let (_, reply) = post(&app, "/filter", body).await;
    let reason = reply["FailedAndUnresolvableNodes"]["huge"]
        .as_str()
        .unwrap();
    assert!(reason.contains("VRAM unknown"), "{reason}");
}
