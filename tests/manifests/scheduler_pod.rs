//! The scheduler pod: kube-scheduler's config, the sidecar's flags and files, the probes.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

use vramfit::extender::binder::RecordOnly;
use vramfit::extender::http::{ops_router, router, App};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::settings::{load_catalog, Settings};
use vramfit::extender::state::ExtenderState;

use crate::base::*;
use crate::common::api::FakeApi;
use crate::common::objects::node_json;
use crate::common::{self, free_port};
use crate::rbac::{effective_grants, Grant};
use vramfit::extender::probe::ProbeError;

#[test]
fn scheduler_config_is_the_sample_with_its_lease_where_the_role_allows() {
    let base = Base::load();
    let config = scheduler_config(&base);
    assert_eq!(
        config,
        yaml("manifests/config/kube-scheduler.yaml"),
        "the mounted file is config/kube-scheduler.yaml"
    );
    let (ns, spec) = scheduler_pod(&base);
    let lease_ns = config["leaderElection"]["resourceNamespace"]
        .as_str()
        .unwrap();
    let lease = config["leaderElection"]["resourceName"].as_str().unwrap();
    assert_eq!(config["leaderElection"]["leaderElect"], true);
    assert_eq!(lease_ns, ns, "the Lease lives beside the scheduler");
    assert_eq!(lease, "vramfit-scheduler");

    // Same as scheduler-config/kube-scheduler-v1.yaml but for the Lease's namespace.
    let mut sample = yaml("scheduler-config/kube-scheduler-v1.yaml");
    sample["leaderElection"]["resourceNamespace"] = Value::from(lease_ns);
    assert_eq!(config, sample);

    // A Role in that namespace lets the pod's ServiceAccount get and update that Lease.
    let sa = spec.service_account_name.as_deref().unwrap();
    let granted = effective_grants(&base).0;
    for verb in ["get", "update"] {
        assert!(
            granted.contains(&Grant::new(
                sa,
                lease_ns,
                "coordination.k8s.io",
                "leases",
                verb,
                lease
            )),
            "{sa} may {verb} lease {lease_ns}/{lease}"
        );
    }
}

#[test]
fn vramfit_config_is_the_sample_and_every_file_loads() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let (_, config) = &sidecar.files["config"];
    let mut mounted = documents(config, "vramfit.yaml");
    // The one difference: the sidecar names the Lease its kube-scheduler elects through.
    let lease = mounted[0]["server"]
        .as_object_mut()
        .unwrap()
        .remove("leaderLease");
    assert_eq!(
        mounted,
        vec![yaml("scheduler-config/vramfit-config.yaml")],
        "manifests/config/vramfit.yaml is scheduler-config/vramfit-config.yaml"
    );
    let election = &scheduler_config(&base)["leaderElection"];
    assert_eq!(
        lease,
        Some(Value::from(format!(
            "{}/{}",
            election["resourceNamespace"].as_str().unwrap(),
            election["resourceName"].as_str().unwrap()
        ))),
        "the refresher's Lease is the one kube-scheduler.yaml elects through"
    );
    let files = scratch_files(&sidecar, "load");
    let settings = Settings::load(Some(&files["config"])).unwrap();
    assert_eq!(
        settings.server.leader_lease.map(|l| l.to_string()),
        lease.and_then(|l| l.as_str().map(String::from))
    );
    assert_eq!(
        settings.server.leader_identity, None,
        "the host name, shared with kube-scheduler in the pod"
    );
    assert_eq!(
        settings.server.tls_cert_file, None,
        "plain HTTP on loopback"
    );
    load_catalog(Some(&files["catalog"])).unwrap();
    assert_eq!(
        settings.server.metrics_listen, None,
        "the ops listener is set by the flag, in one place"
    );
    assert!(
        settings.server.bind_timeout_millis < 3000,
        "a Binding's time at the API server fits in the extender's httpTimeout (3s)"
    );
}

/// The sidecar's server as live mode builds it (binds recorded in memory instead of sent),
/// ready as after both initial lists.
fn app_of(sidecar: &Sidecar) -> (App, Settings) {
    let files = scratch_files(sidecar, "app");
    let settings = Settings::load(Some(&files["config"])).unwrap();
    let catalog = load_catalog(Some(&files["catalog"])).unwrap();
    let cluster = ExtenderState::new(settings.placement.clone(), catalog, Box::new(RecordOnly));
    cluster.set_ready(true);
    let app = App {
        cluster: Arc::new(cluster),
        metrics: Arc::new(Metrics::default()),
    };
    (app, settings)
}

/// A body each verb accepts (the bind names a pod never filtered: an error reply, still 200).
fn body_for(method: &str, path: &str) -> &'static str {
    if method != "POST" {
        ""
    } else if path.ends_with("/bind") {
        r#"{"PodName":"p","PodNamespace":"default","PodUID":"u","Node":"n"}"#
    } else {
        r#"{"Pod":{"metadata":{"name":"p","namespace":"default"}},"NodeNames":[]}"#
    }
}

/// The status of a call to the extender listener (`--listen`).
async fn status(app: &App, settings: &Settings, method: &str, path: &str) -> StatusCode {
    let router = router(app.clone(), &settings.server);
    common::router::send(&router, method, path, body_for(method, path))
        .await
        .0
}

/// The status of a call to the ops listener (`--metrics-listen`).
async fn ops_status(app: &App, method: &str, path: &str) -> StatusCode {
    let router = ops_router(app.clone());
    common::router::send(&router, method, path, body_for(method, path))
        .await
        .0
}

#[tokio::test]
async fn extender_url_is_the_sidecars_listen_address_and_its_verbs_are_served_routes() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let config = scheduler_config(&base);
    let extenders = config["extenders"].as_array().unwrap();
    assert_eq!(extenders.len(), 1);
    let extender = &extenders[0];
    let (addr, path) = split_url(extender["urlPrefix"].as_str().unwrap());
    assert_eq!(
        addr, sidecar.listen,
        "urlPrefix host:port is serve --listen"
    );
    assert!(
        addr.ip().is_loopback(),
        "the sidecar is reached on loopback"
    );
    let (app, settings) = app_of(&sidecar);
    assert_eq!(
        path, settings.server.path_prefix,
        "urlPrefix path is server.pathPrefix"
    );
    assert_eq!(
        extender["bindVerb"], "bind",
        "serve runs live and is the binder"
    );
    let mut verbs = 0;
    for key in ["filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"] {
        if let Some(verb) = extender.get(key).and_then(Value::as_str) {
            verbs += 1;
            // kube-scheduler POSTs to urlPrefix + "/" + verb.
            let route = format!("{path}/{verb}");
            assert_eq!(
                status(&app, &settings, "POST", &route).await,
                StatusCode::OK,
                "{key}: POST {route}"
            );
        }
    }
    assert_eq!(verbs, 3, "filter, prioritize and bind");
    assert_eq!(
        status(&app, &settings, "POST", &format!("{path}/preempt")).await,
        StatusCode::NOT_FOUND,
        "an unserved verb is caught"
    );
    // The ops listener on the pod IP serves none of the verbs.
    assert!(!sidecar.metrics_listen.ip().is_loopback());
    for verb in ["filter", "prioritize", "bind"] {
        assert_eq!(
            ops_status(&app, "POST", &format!("{path}/{verb}")).await,
            StatusCode::NOT_FOUND,
            "{verb} is not served on --metrics-listen"
        );
    }
}

/// The httpGet probe of the vramfit container: (port, path), the port resolved through the
/// container's named ports.
fn http_probe(
    container: &Container,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
    what: &str,
) -> (u16, String) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let probe = probe.unwrap_or_else(|| panic!("vramfit has a {what} probe"));
    assert!(
        probe.exec.is_none() && probe.tcp_socket.is_none(),
        "{what}: httpGet on the ops listener"
    );
    let get = probe.http_get.as_ref().unwrap();
    assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP", "{what}");
    assert_eq!(get.host, None, "{what}: the kubelet connects to the pod IP");
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(named) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(named.as_str()))
                .unwrap_or_else(|| panic!("{what}: no container port named {named}"))
                .container_port
        }
    };
    (
        u16::try_from(port).unwrap(),
        get.path.clone().unwrap_or_default(),
    )
}

#[tokio::test]
async fn probes_hit_served_routes_on_the_metrics_port() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let (_, spec) = scheduler_pod(&base);
    let vramfit = container(spec, "vramfit");
    let (app, _) = app_of(&sidecar);
    let metrics_port = vramfit
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(
        metrics_port.container_port,
        i32::from(sidecar.metrics_listen.port()),
        "the metrics port is --metrics-listen's"
    );
    assert!(
        sidecar.metrics_listen.ip().is_unspecified(),
        "the kubelet and Prometheus reach the pod IP"
    );
    for (probe, what, expected) in [
        (vramfit.liveness_probe.as_ref(), "liveness", "/healthz"),
        (vramfit.readiness_probe.as_ref(), "readiness", "/readyz"),
    ] {
        let (port, path) = http_probe(vramfit, probe, what);
        assert_eq!(
            port,
            sidecar.metrics_listen.port(),
            "{what} probes the ops listener"
        );
        assert_eq!(path, expected, "{what}");
        assert_eq!(
            ops_status(&app, "GET", &path).await,
            StatusCode::OK,
            "{what}"
        );
        assert!(probe.unwrap().timeout_seconds.unwrap_or(1) >= 2, "{what}");
    }
    // Readiness waits for the initial lists; liveness does not.
    app.cluster.set_ready(false);
    assert_eq!(
        ops_status(&app, "GET", "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(ops_status(&app, "GET", "/healthz").await, StatusCode::OK);
    // Prometheus scrapes the same port, through the pod template's annotations.
    let template = &base
        .deployment("vramfit-scheduler")
        .spec
        .as_ref()
        .unwrap()
        .template;
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        sidecar.metrics_listen.port().to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(ops_status(&app, "GET", "/metrics").await, StatusCode::OK);
    // kube-scheduler's own probes use its HTTPS port, which it serves on every interface.
    let ks = container(spec, "kube-scheduler");
    for probe in [&ks.liveness_probe, &ks.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10259)
        );
    }
}

/// Runs the container's command line (paths and ports moved to this machine; a kubeconfig for a
/// fake API server in place of the in-cluster token) with the built binary, then does what the
/// kubelet's httpGet probes do on the metrics port: 503 until the initial lists are in, then 200.
#[test]
fn the_sidecar_command_serves_live_and_its_probes_pass() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let files = scratch_files(&sidecar, "e2e");
    // One GPU node; the pod list is held, so readiness can be seen to wait for it.
    let api = FakeApi::builder()
        .nodes([node_json("gpu-1", 2).build()])
        .hold_pod_list()
        .start();
    let kubeconfig = files["config"].with_file_name("kubeconfig.yaml");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args: Vec<String> = sidecar
        .args
        .iter()
        .map(|a| {
            if *a == sidecar.listen.to_string() {
                return listen.clone();
            }
            if *a == sidecar.metrics_listen.to_string() {
                return metrics.to_string();
            }
            for (flag_, (path, _)) in &sidecar.files {
                if a == path {
                    return files[flag_].to_string_lossy().into_owned();
                }
            }
            a.clone()
        })
        .collect();
    args.push("--kubeconfig".into());
    args.push(kubeconfig.to_string_lossy().into_owned());
    let mut server = Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, spec) = scheduler_pod(&base);
    let vramfit = container(spec, "vramfit");
    let (_, live_path) = http_probe(vramfit, vramfit.liveness_probe.as_ref(), "liveness");
    let (_, ready_path) = http_probe(vramfit, vramfit.readiness_probe.as_ref(), "readiness");
    // An HTTP GET that passes on 200 only, as the kubelet's httpGet (and `vramfit probe`).
    let get = |path: &str| vramfit::extender::probe::check(metrics, path, Duration::from_secs(5));
    // Polls until `ok`, failing at once if the server exits (bounded only as a hang guard).
    let wait = |what: &str, server: &mut std::process::Child, ok: &dyn Fn() -> bool| {
        for _ in 0..6_000 {
            if ok() {
                return;
            }
            if let Some(exit) = server.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("vramfit serve exited ({exit}): {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("never happened: {what}");
    };
    wait("liveness passes", &mut server, &|| get(&live_path).is_ok());
    let before = get(&ready_path);
    api.release_pod_list();
    wait(
        "readiness passes once the lists are in",
        &mut server,
        &|| get(&ready_path).is_ok(),
    );
    let exposition = get("/metrics");
    let verb = get("/scheduler/filter");
    let main = vramfit::extender::probe::check(
        listen.parse().unwrap(),
        &ready_path,
        Duration::from_secs(5),
    );
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        before.unwrap_err().to_string(),
        format!("GET http://{metrics}{ready_path}: status 503"),
        "not ready before the pod list"
    );
    let exposition = exposition.unwrap();
    assert!(
        exposition.contains(r#"vramfit_device_vram_total_mib{node="gpu-1",device="0""#),
        "the watched node's devices are exported: {exposition}"
    );
    assert_eq!(
        verb.unwrap_err().to_string(),
        format!("GET http://{metrics}/scheduler/filter: status 404"),
        "no extender verb on the metrics port"
    );
    main.expect("the extender listener answers /readyz too");
    // Nothing listens any more: the probe fails rather than hangs.
    match get(&live_path) {
        Err(ProbeError::Io { addr, error }) => {
            assert_eq!(addr, metrics);
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("a refused connection, not {other:?}"),
    }
}

#[test]
fn probe_answers_on_status_200_only() {
    use std::io::{Read, Write};
    fn answer(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply.as_bytes());
        });
        addr
    }
    let t = Duration::from_secs(5);
    let addr = answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert_eq!(
        vramfit::extender::probe::check(addr, "/healthz", t).unwrap(),
        "ok"
    );
    let addr = answer("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
    let e = vramfit::extender::probe::check(addr, "/readyz", t).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("GET http://{addr}/readyz: status 503")
    );
    let addr = answer("SSH-2.0-OpenSSH\r\n");
    match vramfit::extender::probe::check(addr, "/healthz", t) {
        Err(ProbeError::NotHttp { addr: at, line }) => {
            assert_eq!((at, line.as_str()), (addr, "SSH-2.0-OpenSSH"));
        }
        other => panic!("not HTTP, not {other:?}"),
    }
    for bad in ["healthz", "/a b"] {
        match vramfit::extender::probe::check(addr, bad, t) {
            Err(ProbeError::BadPath(path)) => assert_eq!(path, bad),
            other => panic!("{bad}: a bad path, not {other:?}"),
        }
    }
}

#[test]
fn scheduler_pod_mounts_the_token_only_into_the_containers_that_call_the_api() {
    let base = Base::load();
    let (_, spec) = scheduler_pod(&base);
    assert_eq!(spec.automount_service_account_token, Some(false));
    let token_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(token_volumes.len(), 1);
    for c in &spec.containers {
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| token_volumes.contains(&m.name.as_str()))
            .collect();
        // kube-scheduler, and vramfit in live mode (watches, Bindings).
        if c.name == "kube-scheduler" || c.name == "vramfit" {
            assert_eq!(mounts.len(), 1, "{}", c.name);
            assert_eq!(
                mounts[0].mount_path,
                "/var/run/secrets/kubernetes.io/serviceaccount"
            );
        } else {
            assert!(mounts.is_empty(), "{} gets no API token", c.name);
        }
    }
    let sa = spec.service_account_name.as_deref().unwrap();
    assert!(base
        .service_accounts
        .iter()
        .any(|s| name(&s.metadata) == sa));
    // The extender's role is bound to the ServiceAccount the vramfit container runs as.
    let binding = base
        .cluster_role_bindings
        .iter()
        .find(|b| b.role_ref.name == "vramfit-extender")
        .expect("the vramfit-extender ClusterRole is bound");
    assert!(binding
        .subjects
        .iter()
        .flatten()
        .any(|s| s.kind == "ServiceAccount" && s.name == sa));
    let sidecar = sidecar(&base);
    assert!(
        spec.termination_grace_period_seconds.unwrap_or(30) as u64
            > settings_of(&sidecar).server.shutdown_grace_seconds,
        "the pod waits for vramfit's drain"
    );
}

#[test]
fn pdb_keeps_one_of_the_scheduler_replicas() {
    let base = Base::load();
    let deployment = base.deployment("vramfit-scheduler");
    let spec = deployment.spec.as_ref().unwrap();
    let replicas = spec.replicas.unwrap_or(1);
    let pdb = &base.pdbs[0];
    assert_eq!(namespace(&pdb.metadata), namespace(&deployment.metadata));
    let pdb_spec = pdb.spec.as_ref().unwrap();
    let selector = pdb_spec
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(IntOrString::Int(min)) = pdb_spec.min_available else {
        panic!("minAvailable as a number")
    };
    assert!(
        min >= 1 && min < replicas,
        "a drain can still move one of {replicas}"
    );
}
