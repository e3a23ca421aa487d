//! The CustomResourceDefinitions, generated: `BackupPlan` (deploy/
//! kubernetes/crd-backupplan.yaml), whose spec schema comes from the plan's
//! own types (`JsonSchema` on [`Plan`] and what it holds), and the runs
//! `BackupRun`, `RestoreRun`, `DrillRun` (crd-runs.yaml, from [`crate::runs`]'
//! types), made structural as an API server demands, so no field can be
//! missing from them and pruned by the server. Tests hold the shipped files
//! to this output.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::plan::Plan;
use crate::runs::{BackupRunSpec, RestoreRunSpec, RunKind, RunStatus};

/// How to rewrite the shipped file after a change to the plan's types.
pub const REGENERATE: &str = "cargo run -q -p tresor-cli -- plan crd > deploy/kubernetes/crd-backupplan.yaml";
/// How to rewrite the shipped run CRDs after a change to their types.
pub const REGENERATE_RUNS: &str = "cargo run -q -p tresor-cli -- plan run-crds > deploy/kubernetes/crd-runs.yaml";

/// The CRD as YAML, with a header saying it is generated.
pub fn backup_plan_crd() -> String {
    let status = json!({"type": "object", "description": "What the daemon made of the spec.", "properties": {
        "accepted": {"type": "string", "description": "True when the spec is the running plan; False when it was refused."},
        "message": {"type": "string", "description": "Why the spec was refused: the first error, with its line in the rendered plan."},
        "classes": {"type": "integer", "description": "The accepted plan's classes."},
        "sources": {"type": "integer", "description": "The accepted plan's sources."},
    }});
    let mut spec = schema_of::<Plan>();
    spec.insert("description".into(), "The plan file's fields (tresor.yaml; examples/tresor.yaml documents each).".into());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "backupplans.tresor.dev", "labels": {"app.kubernetes.io/name": "tresor"}},
        "spec": {
            "group": "tresor.dev",
            "scope": "Namespaced",
            "names": {"plural": "backupplans", "singular": "backupplan", "kind": "BackupPlan", "shortNames": ["bp"]},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Classes", "type": "integer", "jsonPath": ".status.classes"},
                    {"name": "Sources", "type": "integer", "jsonPath": ".status.sources"},
                    {"name": "Accepted", "type": "string", "jsonPath": ".status.accepted"},
                ],
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A backup plan as a Kubernetes object: `tresor daemon --plan-resource` runs it.",
                    "required": ["spec"],
                    "properties": {"spec": spec, "status": status},
                }},
            }],
        },
    });
    let yaml = serde_norway::to_string(&crd).expect("a JSON value always serializes as YAML");
    format!(
        "# Generated from the plan's types by `tresor plan crd`: do not edit by hand.\n\
         # Regenerate with: {REGENERATE}\n\
         # A BackupPlan is the plan file as a Kubernetes object: the same fields\n\
         # as tresor.yaml (examples/tresor.yaml), checked by this schema.\n{yaml}"
    )
}

/// The three run CRDs as YAML documents, with a header saying they are generated.
pub fn run_crds() -> String {
    let docs: Vec<String> =
        RunKind::ALL.iter().map(|k| serde_norway::to_string(&run_crd(*k)).expect("a JSON value always serializes as YAML")).collect();
    format!(
        "# Generated from the run types by `tresor plan run-crds`: do not edit by hand.\n\
         # Regenerate with: {REGENERATE_RUNS}\n\
         # Each backup, restore and drill of a daemon with --plan-resource is one\n\
         # of these, in the BackupPlan's namespace (docs/KUBERNETES.md).\n{}",
        docs.join("---\n")
    )
}

fn run_crd(kind: RunKind) -> Value {
    let (mut spec, about) = match kind {
        RunKind::Backup => (
            schema_of::<BackupRunSpec>(),
            "A backup of one of the plan's sources: one the daemon ran, or one asked for by creating this object.",
        ),
        RunKind::Restore => (
            schema_of::<RestoreRunSpec>(),
            "A restore of one of the plan's sources: one the daemon ran, or one asked for by creating this object (into its own namespace, unless the plan's daemon.restore_namespaces allows more).",
        ),
        RunKind::Drill => (schema_of::<BackupRunSpec>(), "A restore drill the daemon ran: restored, validated and timed in scratch space."),
    };
    spec.insert("description".into(), "What the run is for.".into());
    let mut status = schema_of::<RunStatus>();
    status.insert("description".into(), "What the daemon made of it.".into());
    let column = |name: &str, kind: &str, path: &str| json!({"name": name, "type": kind, "jsonPath": path});
    let mut columns = vec![
        column("Phase", "string", ".status.phase"),
        column("Source", "string", ".spec.source"),
        column("Snapshot", "string", ".status.snapshot"),
        column("Size", "string", ".status.size"),
    ];
    if kind == RunKind::Drill {
        columns.push(column("RTO", "number", ".status.rto_seconds"));
        columns.push(column("RPO", "number", ".status.rpo_seconds"));
    }
    columns.push(json!({"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1}));
    columns.push(column("Age", "date", ".metadata.creationTimestamp"));
    let plural = kind.plural();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.tresor.dev"), "labels": {"app.kubernetes.io/name": "tresor"}},
        "spec": {
            "group": "tresor.dev",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.kind().to_lowercase(), "kind": kind.kind()},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "additionalPrinterColumns": columns,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": about,
                    "required": ["spec"],
                    "properties": {"spec": spec, "status": status},
                }},
            }],
        },
    })
}

/// A type's JSON schema, made structural.
fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let settings = SchemaSettings::openapi3().with(|s| {
        // An API server takes neither `$ref` nor definitions.
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    structural(object(schema.to_value()))
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("a plan type's schema is not an object: {other}"),
    }
}

/// One node and those below it, rewritten to what a structural schema allows.
fn structural(mut node: Map<String, Value>) -> Map<String, Value> {
    // Defaults would have the API server write serde's defaults into every
    // stored spec; the daemon applies them itself when it reads the plan.
    for key in ["title", "default"] {
        node.remove(key);
    }
    integer_format(&mut node);
    for junctor in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alternatives)) = node.remove(junctor) {
            fold(&mut node, alternatives);
        }
    }
    // An optional enum's `null` is `nullable`'s to say: an API server checks enum values against the type.
    if let Some(Value::Array(values)) = node.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    // `deny_unknown_fields` says `additionalProperties: false`; a structural
    // schema may not have it beside `properties`, and prunes unknown fields anyway.
    if node.contains_key("properties") {
        node.remove("additionalProperties");
    }
    if let Some(Value::Object(props)) = node.get_mut("properties") {
        for prop in props.values_mut() {
            *prop = Value::Object(structural(object(prop.take())));
        }
    }
    for key in ["additionalProperties", "items"] {
        if let Some(sub @ Value::Object(_)) = node.get_mut(key) {
            *sub = Value::Object(structural(object(sub.take())));
        }
    }
    node
}

/// Kubernetes knows `int32` and `int64`, not Rust's unsigned formats (their
/// `minimum: 0` stays); `uint32`'s upper bound becomes a `maximum`.
fn integer_format(node: &mut Map<String, Value>) {
    let Some(format) = node.get("format").and_then(Value::as_str) else { return };
    match format {
        "int32" | "int64" => {}
        "uint32" => {
            node.insert("maximum".into(), u32::MAX.into());
            node.remove("format");
        }
        _ => {
            node.remove("format");
        }
    }
}

/// A unit enum's documented variants (a `oneOf` of one-value string enums)
/// as one string enum whose description lists them: a structural schema
/// has no alternatives of its own.
fn fold(node: &mut Map<String, Value>, alternatives: Vec<Value>) {
    let mut values = Vec::new();
    let mut lines = Vec::new();
    for a in alternatives.into_iter().map(object) {
        let (Some(Value::Array(one)), Some("string")) = (a.get("enum"), a.get("type").and_then(Value::as_str)) else {
            panic!("a plan type's schema has alternatives a structural schema cannot say: {}", Value::Object(a));
        };
        if let Some(text) = a.get("description").and_then(Value::as_str) {
            lines.push(format!("{}: {text}", one.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")));
        }
        values.extend(one.iter().cloned());
    }
    node.insert("type".into(), "string".into());
    node.insert("enum".into(), values.into());
    if !lines.is_empty() {
        let head = node.get("description").and_then(Value::as_str).map(|d| format!("{d}\n")).unwrap_or_default();
        node.insert("description".into(), format!("{head}{}", lines.join("\n")).into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> Value {
        serde_norway::from_str(&backup_plan_crd()).unwrap()
    }

    fn is_shipped(file: &str, generated: &str, regenerate: &str) {
        let shipped = std::fs::read_to_string(format!("{}/../../deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let differs = shipped
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(shipped.lines().count().min(generated.lines().count()), |i| i);
        assert!(
            shipped == generated,
            "deploy/kubernetes/{file} is not what the types make (from line {}); regenerate it: {regenerate}",
            differs + 1
        );
    }

    #[test]
    fn the_shipped_crds_are_the_generated_ones() {
        is_shipped("crd-backupplan.yaml", &backup_plan_crd(), REGENERATE);
        is_shipped("crd-runs.yaml", &run_crds(), REGENERATE_RUNS);
    }

    #[test]
    fn the_run_schemas_are_structural_and_take_a_restore_run() {
        let docs: Vec<Value> = run_crds().split("---\n").map(|d| serde_norway::from_str(d).unwrap()).collect();
        assert_eq!(
            docs.iter().map(|d| d["spec"]["names"]["kind"].as_str().unwrap()).collect::<Vec<_>>(),
            ["BackupRun", "RestoreRun", "DrillRun"]
        );
        for d in &docs {
            let mut faults = Vec::new();
            structural_faults(&d["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "", &mut faults);
            assert!(faults.is_empty(), "{}: not structural: {faults:#?}", d["metadata"]["name"]);
        }
        let root = &docs[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let run = json!({
            "spec": {"source": "shop", "snapshot": "latest", "to": "k8s://", "namespace_mapping": ["shop:shop"], "server_dry_run": true},
            "status": {"phase": "Succeeded", "job": 7, "snapshot": "ab12", "bytes": 10, "size": "10 B", "start_time": "2026-11-30T09:00:00+00:00",
                "end_time": "2026-11-30T09:00:05+00:00", "reason": null, "message": null},
        });
        let mut out = Vec::new();
        violations(&run, root, "", &mut out);
        assert!(out.is_empty(), "{out:#?}");
        let columns: Vec<&str> = docs[2]["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Phase", "Source", "Snapshot", "Size", "RTO", "RPO", "Reason", "Age"]);
    }

    /// The keys an apiextensions.k8s.io/v1 schema node may have here: no
    /// `$ref`, definitions or junctors at all, which is stricter than the
    /// structural rules and all this generator needs.
    const ALLOWED: &[&str] = &[
        "type",
        "description",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "enum",
        "nullable",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ];

    fn structural_faults(node: &Value, at: &str, faults: &mut Vec<String>) {
        let Some(n) = node.as_object() else { return faults.push(format!("{at}: not an object")) };
        faults.extend(n.keys().filter(|k| !ALLOWED.contains(&k.as_str())).map(|k| format!("{at}: {k}")));
        let exempt = ["x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"].iter().any(|k| n.get(*k) == Some(&json!(true)));
        if !exempt && !n.get("type").is_some_and(Value::is_string) {
            faults.push(format!("{at}: no type"));
        }
        if n.contains_key("properties") && n.contains_key("additionalProperties") {
            faults.push(format!("{at}: properties beside additionalProperties"));
        }
        for (name, prop) in n.get("properties").and_then(Value::as_object).into_iter().flatten() {
            structural_faults(prop, &format!("{at}.{name}"), faults);
        }
        for (key, mark) in [("additionalProperties", "{}"), ("items", "[]")] {
            if let Some(sub) = n.get(key) {
                structural_faults(sub, &format!("{at}{mark}"), faults);
            }
        }
    }

    /// Where `value` breaks `schema` in the ways an API server would: a key
    /// the schema lacks (pruned), a missing required key, a wrong type, a
    /// failed pattern, bound or enum.
    fn violations(value: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
        if schema["x-kubernetes-preserve-unknown-fields"] == true || (value.is_null() && schema["nullable"] == true) {
            return;
        }
        if schema["x-kubernetes-int-or-string"] == true {
            if !(value.is_u64() || value.is_i64() || value.is_string()) {
                out.push(format!("{at}: neither integer nor string"));
            }
            return;
        }
        let fits = match schema["type"].as_str() {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            _ => false,
        };
        if !fits {
            return out.push(format!("{at}: not {}", schema["type"]));
        }
        if let Some(allowed) = schema["enum"].as_array().filter(|e| !e.contains(value)) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let (Some(p), Some(s)) = (schema["pattern"].as_str(), value.as_str())
            && !regex::Regex::new(p).unwrap().is_match(s)
        {
            out.push(format!("{at}: {s:?} does not match {p}"));
        }
        if let (Some(min), Some(v)) = (schema["minimum"].as_i64(), value.as_i64())
            && v < min
        {
            out.push(format!("{at}: below {min}"));
        }
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            violations(item, &schema["items"], &format!("{at}[{i}]"), out);
        }
        let Some(fields) = value.as_object() else { return };
        for req in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(req) {
                out.push(format!("{at}: {req} missing"));
            }
        }
        for (k, v) in fields {
            match (schema["properties"].get(k), schema.get("additionalProperties")) {
                (Some(sub), _) => violations(v, sub, &format!("{at}.{k}"), out),
                (None, Some(sub)) if schema.get("properties").is_none() => violations(v, sub, &format!("{at}.{k}"), out),
                _ => out.push(format!("{at}.{k}: not in the schema, so pruned")),
            }
        }
    }

    /// examples/tresor.yaml with its commented-out cluster sources (`scope:`, `pod:`) taken in.
    fn example() -> String {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tresor.yaml")).unwrap();
        let uncomment = |l: &str| l.strip_prefix("  # ").filter(|r| r.starts_with("- ") || r.starts_with("  ")).map(|r| format!("  {r}"));
        text.lines().map(|l| uncomment(l).unwrap_or_else(|| l.to_string()) + "\n").collect()
    }

    #[test]
    fn the_schema_is_structural_and_takes_the_example_plan_whole() {
        let crd = generated();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut faults = Vec::new();
        structural_faults(root, "", &mut faults);
        assert!(faults.is_empty(), "not structural: {faults:#?}");

        let text = example();
        let plan = Plan::parse(&text, "examples/tresor.yaml".as_ref()).unwrap();
        assert!(
            plan.sources.iter().any(|s| s.scope.is_some()) && plan.sources.iter().any(|s| s.pod.is_some()),
            "the cluster sources are in"
        );
        let spec: Value = serde_norway::from_str(&text).unwrap();
        let mut out = Vec::new();
        violations(&spec, &root["properties"]["spec"], "spec", &mut out);
        assert!(out.is_empty(), "{out:#?}");

        let mut bad = spec.clone();
        bad["classes"]["critical"]["rpo"] = json!("soon");
        bad["sources"][0]["scope"] = json!({"namespace": ["shop"]});
        bad["classes"]["important"]["retention"]["daily"] = json!(true);
        out.clear();
        violations(&bad, &root["properties"]["spec"], "spec", &mut out);
        assert_eq!(
            out,
            [
                "spec.classes.critical.rpo: \"soon\" does not match ^\\s*[0-9]+(s|m|min|h|d|w|mo|y)\\s*$",
                "spec.classes.important.retention.daily: neither integer nor string",
                "spec.sources[0].scope.namespace: not in the schema, so pruned",
            ]
        );
    }

    #[test]
    fn the_span_pattern_accepts_what_the_plan_reads() {
        let pattern = regex::Regex::new(crate::plan::SPAN_PATTERN).unwrap();
        for text in
            ["90s", "15m", "15min", "2h", "30d", "2w", "6mo", "1y", " 7d ", "2x", "15", "m", "-1d", "1.5h", "15 m", "15mins", "1H", "6mon"]
        {
            assert_eq!(pattern.is_match(text), crate::plan::Span::parse(text).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn documented_enum_variants_become_one_described_string_enum() {
        let crd = generated();
        let format = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["notifications"]["items"]
            ["properties"]["format"];
        assert_eq!(format["type"], "string");
        assert_eq!(format["enum"], json!(["json", "alertmanager"]));
        assert!(format["description"].as_str().unwrap().contains("alertmanager: Alertmanager's `POST /api/v2/alerts` body"), "{format}");
    }
}
