//! `vramfit replay` on small traces generated here (the openb trace is never copied into the
//! repository): the table, the CSV, every policy, and clear errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

use common::{scratch, succeeded};

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run vramfit")
}

/// 8 nodes of two models and ~40 pods of every class (cpu-only, shared, 1, 2 and 4 GPUs).
fn tiny_trace() -> (PathBuf, PathBuf) {
    let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
    for i in 0..8 {
        let (gpus, model) = if i % 2 == 0 {
            (4, "V100M16")
        } else {
            (2, "T4")
        };
        nodes.push_str(&format!("openb-node-{i:04},64000,262144,{gpus},{model}\n"));
    }
    let mut pods = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n");
    let shapes = [
        (4000, 0, 0, ""),
        (8000, 1, 500, ""),
        (8000, 1, 250, "T4"),
        (12000, 1, 1000, ""),
        (16000, 2, 1000, "V100M16"),
        (32000, 4, 1000, ""),
    ];
    for i in 0..40 {
        let (cpu, gpus, milli, spec) = shapes[i % shapes.len()];
        pods.push_str(&format!(
            "openb-pod-{i:04},{cpu},16384,{gpus},{milli},{spec},LS,Running,{i},{},{i}\n",
            i + 100
        ));
    }
    (
        scratch("nodes.csv", &nodes),
        scratch("openb_pod_list_tiny.csv", &pods),
    )
}

#[test]
fn replay_runs_every_policy_and_writes_the_csv() {
    let (nodes, pods) = tiny_trace();
    // Beside the trace, in the scratch folder; replay writes it.
    let csv = nodes.with_file_name("out.csv");
    let out = replay(&[
        "--nodes",
        nodes.to_str().unwrap(),
        pods.to_str().unwrap(),
        "--seeds",
        "1-3",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    let table = succeeded(&out);
    assert!(table.contains("trace tiny"), "{table}");
    for policy in [
        "vramfit",
        "Random",
        "DotProd",
        "Clustering",
        "Packing",
        "BestFit",
        "FGD",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(policy)),
            "{policy} row in\n{table}"
        );
    }
    assert!(
        table.contains("21 runs (1 traces × 7 policies × 3 seeds)"),
        "{table}"
    );
    let written = std::fs::read_to_string(&csv).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("trace,policy,seed,arrived_pct,unalloc_gpu_pct,alloc_ratio_pct,frag_amount_pct,frag_ratio_pct"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().any(|r| r[1] == "vramfit"));
    for row in &rows {
        let unalloc: f64 = row[4].parse().unwrap();
        let alloc: f64 = row[5].parse().unwrap();
        assert!(
            (unalloc + alloc - 100.0).abs() < 1e-6,
            "unallocated + allocated = 100 in {row:?}"
        );
    }

    // Same seeds, same figures.
    let again = replay(&[
        "--nodes",
        nodes.to_str().unwrap(),
        pods.to_str().unwrap(),
        "--seeds",
        "1-3",
        "--policies",
        "vramfit,FGD",
    ]);
    let again = String::from_utf8(again.stdout).unwrap();
    let row = |t: &str, p: &str| {
        t.lines()
            .find(|l| l.starts_with(p))
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .to_string()
    };
    assert_eq!(row(&table, "vramfit"), row(&again, "vramfit"));
    assert_eq!(row(&table, "FGD"), row(&again, "FGD"));
}

#[test]
fn bad_traces_and_arguments_are_clear_errors() {
    let (nodes, pods) = tiny_trace();
    let missing = scratch(
        "missing.csv",
        "name,cpu_milli,memory_mib,num_gpu\nopenb-pod-0,1000,10,0\n",
    );
    let out = replay(&[
        "--nodes",
        nodes.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.csv:1: missing required column `gpu_milli`"),
        "{stderr}"
    );

    let garbage = scratch("garbage.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nopenb-pod-0,1000,10,1,500\nopenb-pod-1,lots,10,0,0\n");
    let out = replay(&[
        "--nodes",
        nodes.to_str().unwrap(),
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("garbage.csv:3: column `cpu_milli`"),
        "{stderr}"
    );

    for (args, fragment) in [
        (vec!["--policies", "Magic"], "unknown policy \"Magic\""),
        (vec!["--seeds", "9-3"], "seed range \"9-3\" is empty"),
        (vec!["--tune-ratio", "0"], "--tune-ratio must be in (0, 10]"),
    ] {
        let mut all = vec!["--nodes", nodes.to_str().unwrap(), pods.to_str().unwrap()];
        all.extend(args);
        let out = replay(&all);
        assert_eq!(out.status.code(), Some(1), "{fragment}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(fragment),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
