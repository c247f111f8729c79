//! The deployment files say what the code and the README say: every
//! variable the service reads is in the README's table and in build.yaml's
//! ConfigMap with the same default; the grace period covers the drain; the
//! probes and port match METRICS_ADDR; the image and CI build the release
//! binary with the same command. No database needed.

use std::collections::BTreeMap;
use std::time::Duration;

use background_processing::config::VARS;
use background_processing::service::INTERRUPT_GRACE;

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The documents of a multi-document YAML file, by `kind`, and by
/// `kind/name` too.
fn documents(yaml: &str) -> BTreeMap<String, String> {
    let mut docs = BTreeMap::new();
    for doc in yaml.split("\n---\n") {
        let Some(kind) = doc.lines().find_map(|l| l.strip_prefix("kind: ")) else {
            continue;
        };
        let name = doc
            .lines()
            .find_map(|l| l.strip_prefix("  name: "))
            .unwrap_or_default();
        docs.entry(kind.trim().to_string())
            .or_insert_with(|| doc.to_string());
        docs.insert(format!("{}/{}", kind.trim(), name.trim()), doc.to_string());
    }
    docs
}

/// `KEY: "value"` lines of the ConfigMap's `data:` block.
fn configmap_data(doc: &str) -> BTreeMap<String, String> {
    doc.lines()
        .skip_while(|l| *l != "data:")
        .skip(1)
        .take_while(|l| l.starts_with("  ") || l.is_empty())
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.trim().split_once(": ").unwrap_or_else(|| panic!("{l}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// `(name, default)` rows of the README's Configuration table.
fn readme_vars(readme: &str) -> BTreeMap<String, String> {
    readme
        .lines()
        .skip_while(|l| *l != "## Configuration")
        .take_while(|l| *l != "## Commands")
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((
                name.to_string(),
                cells.get(2)?.trim_matches('`').to_string(),
            ))
        })
        .collect()
}

/// The integer after `key: ` on the first line that has it.
fn number(doc: &str, key: &str) -> u64 {
    doc.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{doc}"))
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn readme_table_lists_every_variable_with_its_default() {
    let table = readme_vars(&read("README.md"));
    for v in VARS {
        assert_eq!(
            table.get(v.name).map(String::as_str),
            Some(v.default),
            "README's Configuration table, row {}",
            v.name
        );
    }
    assert_eq!(
        table.len(),
        VARS.len(),
        "README lists extra rows: {table:?}"
    );
}

#[test]
fn configmap_holds_every_tunable_with_its_default() {
    let docs = documents(&read("build.yaml"));
    let data = configmap_data(&docs["ConfigMap"]);
    for v in VARS {
        match v.name {
            // Secrets, and each pod's own name: not shared configuration.
            "DATABASE_URL" | "WORKER_NAME" | "DASHBOARD_TOKEN" => {
                assert!(!data.contains_key(v.name), "{} in the ConfigMap", v.name)
            }
            // Empty means the computed default.
            "DB_POOL_SIZE" => assert_eq!(data.get(v.name).map(String::as_str), Some("")),
            _ => assert_eq!(
                data.get(v.name).map(String::as_str),
                Some(v.default),
                "ConfigMap key {}",
                v.name
            ),
        }
    }
    assert_eq!(
        data.len(),
        VARS.len() - 3,
        "unknown ConfigMap keys: {data:?}"
    );
}

#[test]
fn deployment_matches_the_service() {
    let docs = documents(&read("build.yaml"));
    let data = configmap_data(&docs["ConfigMap"]);
    let deployment = &docs["Deployment/background-processing"];

    // The kubelet must not SIGKILL a replica that is still draining.
    let drain = humantime::parse_duration(&data["SHUTDOWN_TIMEOUT"]).unwrap() + INTERRUPT_GRACE;
    let grace = Duration::from_secs(number(deployment, "terminationGracePeriodSeconds"));
    assert!(grace > drain, "grace period {grace:?} <= drain {drain:?}");

    let port = data["METRICS_ADDR"].rsplit_once(':').unwrap().1;
    assert_eq!(number(deployment, "containerPort").to_string(), port);
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "fieldPath: metadata.name",
        "maxUnavailable: 0",
        "args: [\"migrate\"]",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
    ] {
        assert!(deployment.contains(needle), "Deployment lacks {needle:?}");
    }
    assert_eq!(number(deployment, "replicas"), 2);
    assert_eq!(number(&docs["PodDisruptionBudget"], "minAvailable"), 1);
    assert!(docs["Secret"].contains("app.kubernetes.io/component: secret-template"));
}

#[test]
fn image_and_ci_build_with_the_same_command() {
    let dockerfile = read("Dockerfile");
    let ci = read(".ci/run");
    assert!(read("scripts/build-release").contains("cargo build --release --locked"));
    assert!(
        dockerfile
            .lines()
            .map(|l| l
                .trim_start()
                .trim_start_matches("RUN ")
                .trim_start_matches("&& "))
            .filter(|l| l.starts_with("scripts/build-release"))
            .count()
            >= 2,
        "the Dockerfile builds dependencies and the service with scripts/build-release"
    );
    assert!(
        !dockerfile.contains("cargo build"),
        "a second build command"
    );
    assert!(ci.lines().any(|l| l.trim() == "scripts/build-release"));
    // What the binary embeds at compile time is in the image's build.
    for embedded in ["schema.sql", "templates", "static", "src"] {
        assert!(
            dockerfile.contains(&format!("COPY {embedded} ")),
            "the Dockerfile does not copy {embedded}"
        );
    }
}

#[test]
fn the_dashboard_runs_apart_locked_down_behind_a_service() {
    let docs = documents(&read("build.yaml"));
    let d = &docs["Deployment/background-processing-dashboard"];
    assert_eq!(number(d, "replicas"), 1, "sessions live in one process");
    for needle in [
        "args: [\"dashboard\"]",
        "name: DASHBOARD_ADDR",
        "value: \"0.0.0.0:8080\"",
        "containerPort: 8080",
        "path: /healthz",
        "name: background-processing-dashboard",
        "optional: true",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
    ] {
        assert!(
            d.contains(needle),
            "the dashboard's Deployment lacks {needle:?}"
        );
    }
    let s = &docs["Service/background-processing-dashboard"];
    assert!(s.contains("app.kubernetes.io/component: dashboard") && s.contains("targetPort: http"));
}
