//! Reading a live cluster, read-only: list Nodes and Pods through the API server (kube-rs), with
//! kubeconfig and context handled the kube-rs way (`--kubeconfig`, `--context`, else `KUBECONFIG`,
//! `~/.kube/config`, or the in-cluster service account).

use std::path::Path;

use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::kubernetes::snapshot::Objects;

/// Why the cluster could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// No client could be built from the config.
    #[error("connecting to the API server: {0}")]
    Client(#[source] kube::Error),
    /// A list call failed.
    #[error("listing {what}: {source}")]
    List {
        /// What was being listed (`nodes`, `pods`).
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A listed object could not be decoded.
    #[error("reading a {what} from the API server: {message}")]
    Decode {
        /// What was being listed (`nodes`, `pods`).
        what: &'static str,
        /// The decoding error.
        message: String,
    },
}

/// Page size of list calls.
const PAGE: u32 = 500;

/// A client from an explicit kubeconfig file and/or context, or inferred.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client, LiveError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| LiveError::Kubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| LiveError::Kubeconfig(e.to_string()))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| LiveError::Kubeconfig(e.to_string()))?,
        None => Config::infer()
            .await
            .map_err(|e| LiveError::Kubeconfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(LiveError::Client)
}

async fn list_all<K, T>(
    api: Api<K>,
    params: ListParams,
    what: &'static str,
) -> Result<Vec<T>, LiveError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    T: DeserializeOwned,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| LiveError::List { what, source })?;
        for item in page.items {
            let value = serde_json::to_value(&item).map_err(|e| LiveError::Decode {
                what,
                message: e.to_string(),
            })?;
            out.push(
                serde_json::from_value(value).map_err(|e| LiveError::Decode {
                    what,
                    message: e.to_string(),
                })?,
            );
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(out),
        }
    }
}

/// Lists every Node and every unfinished Pod: the same content as a snapshot file.
pub async fn read_cluster(client: Client) -> Result<Objects, LiveError> {
    let nodes = list_all(
        Api::<ApiNode>::all(client.clone()),
        ListParams::default(),
        "nodes",
    )
    .await?;
    let unfinished = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let pods = list_all(Api::<ApiPod>::all(client), unfinished, "pods").await?;
    let mut objects = Objects {
        nodes,
        pods,
        skipped: Default::default(),
    };
    objects.order_for_loading();
    Ok(objects)
}
