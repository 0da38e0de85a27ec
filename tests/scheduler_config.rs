//! The shipped KubeSchedulerConfigurations agree with what the server serves.

use std::path::Path;

use serde_json::Value;
use vramfit::core::node::DEVICE_RESOURCES;
use vramfit::extender::settings::Settings;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn extender_entries_match_the_server() {
    let settings = Settings::load(Some(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("scheduler-config/vramfit-config.yaml"),
    ))
    .unwrap();
    assert_eq!(
        settings.placement,
        vramfit::core::Config::default(),
        "the sample config spells out the defaults"
    );
    for (file, api) in [
        (
            "scheduler-config/kube-scheduler-v1.yaml",
            "kubescheduler.config.k8s.io/v1",
        ),
        (
            "scheduler-config/kube-scheduler-v1beta3.yaml",
            "kubescheduler.config.k8s.io/v1beta3",
        ),
    ] {
        let config = yaml(file);
        assert_eq!(config["apiVersion"], api, "{file}");
        assert_eq!(config["kind"], "KubeSchedulerConfiguration");
        assert_eq!(config["percentageOfNodesToScore"], 100, "{file}");
        assert_ne!(
            config["leaderElection"]["resourceName"], "kube-scheduler",
            "{file}"
        );
        let profiles: Vec<&str> = config["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["schedulerName"].as_str().unwrap())
            .collect();
        for name in profiles.iter() {
            assert!(
                settings.placement.profiles.contains_key(*name),
                "{file}: profile {name} has vramfit weights"
            );
        }
        let extender = &config["extenders"][0];
        let url = extender["urlPrefix"].as_str().unwrap();
        assert!(url.ends_with(&settings.server.path_prefix), "{file}: {url}");
        assert!(
            url.starts_with("http://127.0.0.1:8888"),
            "{file}: the default listen address"
        );
        assert_eq!(extender["filterVerb"], "filter");
        assert_eq!(extender["prioritizeVerb"], "prioritize");
        assert_eq!(extender["bindVerb"], "bind");
        assert!(extender["weight"].as_i64().unwrap() > 0);
        assert_eq!(extender["nodeCacheCapable"], true);
        let managed: Vec<(&str, bool)> = extender["managedResources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["ignoredByScheduler"].as_bool().unwrap(),
                )
            })
            .collect();
        let vram_vocabularies = ["vramfit.io/vram", "nvidia.com/gpumem", "aliyun.com/gpu-mem"];
        // Advertised by `vramfit device-plugin`, so the in-tree fit may count it.
        let advertised = [vramfit::core::demand::RESOURCE_VRAM_GIB];
        for (name, ignored) in &managed {
            let is_device = DEVICE_RESOURCES.contains(name) || advertised.contains(name);
            assert!(
                is_device || vram_vocabularies.contains(name),
                "{file}: {name} is understood by vramfit"
            );
            assert_eq!(
                *ignored, !is_device,
                "{file}: only VRAM vocabularies are ignored by the in-tree fit"
            );
        }
        for resource in DEVICE_RESOURCES
            .iter()
            .chain(&vram_vocabularies)
            .chain(&advertised)
        {
            assert!(
                managed.iter().any(|(n, _)| n == resource),
                "{file}: {resource} reaches vramfit"
            );
        }
    }
}
