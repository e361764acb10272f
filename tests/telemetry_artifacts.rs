//! The operator-facing files of issue 17 name only series Courier records.
//!
//! - `docs/grafana/courier.json` (the Grafana dashboard): it parses, every panel (rows' nested
//!   panels included) has a query, every query uses the provisioned data source, every
//!   `courier_…` name in a query is in [`courier::telemetry::SERIES`] (a histogram's `_bucket`,
//!   `_sum` and `_count` series count as the histogram), and the panels an operator needs first
//!   are there.
//! - `docs/prometheus/alerts.yml` and its promtool tests `alerts.test.yml`: the same name check
//!   on the text, and every alert carries a severity, a summary, a description and a runbook.
//!
//! promtool itself checks the rules' syntax and behaviour in CI (scripts/promtool.sh); this test
//! only ties the files to the list of series.

use std::collections::BTreeSet;
use std::path::Path;

use courier::telemetry::SERIES;
use serde_json::Value;

/// Series the dashboard must show: depth by priority, handler latency, group lag and dead
/// letters stored.
const DASHBOARD_MUST_SHOW: &[&str] = &[
    "courier_queue_ready",
    "courier_handler_duration_seconds",
    "courier_group_lag",
    "courier_queue_dead",
];

/// The uid of the data source docs/grafana/provisioning/datasources/prometheus.yml provisions.
const DATA_SOURCE_UID: &str = "prometheus";

/// The suffixes an exporter adds to a histogram's name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("docs/grafana/courier.json"))
        .unwrap_or_else(|e| panic!("docs/grafana/courier.json is not JSON: {e}"))
}

/// Every `courier_…` name in `text`: `courier_` at the start of a word, then at least one of
/// `[a-z0-9_:]` (digits and colons included so that a misspelt name is caught, not cut short).
fn series_names(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("courier_").map(|i| from + i) {
        let mut end = at + "courier_".len();
        from = end;
        if at > 0 && (is_name(bytes[at - 1]) || bytes[at - 1].is_ascii_uppercase()) {
            continue;
        }
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        if end > from {
            out.push(&text[at..end]);
            from = end;
        }
    }
    out
}

/// The recorded series `name` stands for: itself, or the histogram whose `_bucket`, `_sum` or
/// `_count` series it is. `None` if Courier records no such series.
fn recorded(name: &str) -> Option<&'static str> {
    if let Some(s) = SERIES.iter().find(|s| **s == name) {
        return Some(s);
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        SERIES
            .iter()
            .find(|s| **s == base && s.ends_with("_seconds"))
            .copied()
    })
}

/// Every panel, rows' nested panels included, in order.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// How a panel is named in a failure: its id, title and type.
fn panel_name(panel: &Value) -> String {
    format!(
        "panel {} {:?} ({})",
        panel["id"],
        panel["title"].as_str().unwrap_or("(untitled)"),
        panel["type"].as_str().unwrap_or("no type")
    )
}

/// The `expr` of every target of every panel, with the panel's name and the target's refId.
fn queries(dash: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("{} target {}", panel_name(p), t["refId"]), expr));
            }
        }
    }
    out
}

/// Problems with the `courier_…` names in `text` (found at `at`).
fn unknown_series(at: &str, text: &str, problems: &mut Vec<String>) {
    for name in series_names(text) {
        if recorded(name).is_none() {
            problems.push(format!(
                "{at}: `{name}` is not a series Courier records (courier::telemetry::SERIES)"
            ));
        }
    }
}

#[track_caller]
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn series_names_are_found_as_whole_words() {
    assert_eq!(
        series_names(
            r#"sum(rate(courier_acked_total{q="x"}[5m])) / courier_queue_wait_seconds_bucket"#
        ),
        vec!["courier_acked_total", "courier_queue_wait_seconds_bucket"]
    );
    assert_eq!(
        series_names("courier_queue_ready2 xcourier_acked"),
        vec!["courier_queue_ready2"]
    );
    assert!(series_names(r#"{__name__=~"courier_.+"} courier_"#).is_empty());
    assert_eq!(
        recorded("courier_handler_duration_seconds_count"),
        Some("courier_handler_duration_seconds")
    );
    assert_eq!(recorded("courier_published_total_count"), None);
    assert_eq!(recorded("courier_queue_ready"), Some("courier_queue_ready"));
}

#[test]
fn dashboard_panels_each_have_a_query_on_the_provisioned_data_source() {
    let dash = dashboard();
    let all = panels(&dash);
    assert!(
        all.iter().filter(|p| !is_row(p)).count() >= 10,
        "docs/grafana/courier.json: expected the dashboard's panels, found {}",
        all.len()
    );
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for p in &all {
        let name = panel_name(p);
        if !ids.insert(p["id"].to_string()) {
            problems.push(format!("{name}: the id is used by another panel too"));
        }
        if is_row(p) {
            continue;
        }
        if p["datasource"]["uid"] != DATA_SOURCE_UID {
            problems.push(format!(
                "{name}: data source {} is not the provisioned uid {DATA_SOURCE_UID:?}",
                p["datasource"]
            ));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{name}: no target (query)"));
        }
        for t in targets {
            let at = format!("{name} target {}", t["refId"]);
            match t["expr"].as_str() {
                Some(e) if !e.trim().is_empty() => {}
                _ => problems.push(format!("{at}: no `expr`")),
            }
            if t["datasource"]["uid"] != DATA_SOURCE_UID {
                problems.push(format!(
                    "{at}: data source {} is not the provisioned uid {DATA_SOURCE_UID:?}",
                    t["datasource"]
                ));
            }
        }
    }
    let text = read("docs/grafana/courier.json");
    if text.contains("${DS") {
        problems.push("the dashboard names a `${DS…}` input; use the fixed uid".to_string());
    }
    assert_no_problems("docs/grafana/courier.json", &problems);
}

#[test]
fn dashboard_queries_name_only_recorded_series() {
    let dash = dashboard();
    let mut problems = Vec::new();
    let queries = queries(&dash);
    for (at, expr) in &queries {
        if series_names(expr).is_empty() {
            problems.push(format!("{at}: names no courier_ series: {expr}"));
        }
        unknown_series(at, expr, &mut problems);
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let at = format!("variable {}", v["name"]);
        unknown_series(&at, &v["definition"].to_string(), &mut problems);
        unknown_series(&at, &v["query"].to_string(), &mut problems);
    }
    assert_no_problems("docs/grafana/courier.json", &problems);
}

#[test]
fn dashboard_shows_the_must_have_series() {
    let dash = dashboard();
    let used: BTreeSet<&str> = queries(&dash)
        .iter()
        .flat_map(|(_, expr)| series_names(expr))
        .filter_map(recorded)
        .collect();
    let missing: Vec<_> = DASHBOARD_MUST_SHOW
        .iter()
        .filter(|s| !used.contains(**s))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/grafana/courier.json: no panel queries {missing:?}"
    );
    let variables: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["backend", "queue"] {
        assert!(
            variables.contains(v),
            "docs/grafana/courier.json: no `{v}` template variable (found {variables:?})"
        );
    }
}

#[test]
fn alert_rules_and_their_tests_name_only_recorded_series() {
    let mut problems = Vec::new();
    for file in [
        "docs/prometheus/alerts.yml",
        "docs/prometheus/alerts.test.yml",
    ] {
        for (n, line) in read(file).lines().enumerate() {
            unknown_series(&format!("{file}:{}", n + 1), line, &mut problems);
        }
    }
    assert_no_problems("docs/prometheus", &problems);
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    const FILE: &str = "docs/prometheus/alerts.yml";
    const NEEDED: &[&str] = &["expr:", "severity:", "summary:", "description:", "runbook:"];
    let text = read(FILE);
    // Each alert's lines: from its `- alert:` line to the next rule or group.
    let mut alerts: Vec<(String, usize, Vec<&str>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alerts.push((name.trim().to_string(), n + 1, Vec::new()));
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            alerts.push((String::new(), n + 1, Vec::new()));
        } else if let Some((_, _, lines)) = alerts.last_mut() {
            lines.push(t);
        }
    }
    alerts.retain(|(name, _, _)| !name.is_empty());
    assert!(
        alerts.len() >= 6,
        "{FILE}: expected the six alerts of issue 17 at least, found {}",
        alerts.len()
    );
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (name, line, lines) in &alerts {
        let at = format!("{FILE}:{line} alert {name}");
        if !names.insert(name) {
            problems.push(format!("{at}: another alert has this name"));
        }
        for key in NEEDED {
            if !lines.iter().any(|l| l.starts_with(key)) {
                problems.push(format!("{at}: no `{key}`"));
            }
        }
        let runbook = lines.iter().find(|l| l.starts_with("runbook:"));
        if runbook.is_some_and(|l| !l.contains("`courier ")) {
            problems.push(format!(
                "{at}: the runbook names no `courier …` command to run"
            ));
        }
        if lines.iter().all(|l| series_names(l).is_empty()) {
            problems.push(format!("{at}: names no courier_ series"));
        }
    }
    let alert_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let runbook_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("runbook:"))
        .count();
    if alert_lines != runbook_lines {
        problems.push(format!(
            "{alert_lines} `- alert:` lines but {runbook_lines} `runbook:` lines"
        ));
    }
    assert_no_problems(FILE, &problems);
}
