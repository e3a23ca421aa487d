//! The API server's validation of what restores rewrite, word for word as
//! Kubernetes 1.30 says it (apimachinery's validation messages): namespace
//! names are DNS-1123 labels (a rehearsal's `<ns>-dr` can pass 63
//! characters), Ingress hosts DNS-1123 subdomains or wildcards (a
//! rehearsal prefixes them), Services' node ports and traffic policy (a
//! rehearsal makes its Services internal). A refusal is 422 Invalid with the causes
//! kubectl prints.

use serde_json::{Value, json};

use crate::kube_store::{ApiError, Res, Store};

const LABEL: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && inner(&b[0]) && inner(&b[b.len() - 1]) && b.iter().all(|c| inner(c) || *c == b'-')
}

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!("{msg} (e.g. {}regex used for validation is '{fmt}')", examples.join(" or "))
}

/// `IsDNS1123Label`'s complaints.
fn dns_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_label(s) {
        let msg = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
        errs.push(regex_error(msg, LABEL, &["my-name", "123-abc"]));
    }
    errs
}

/// `IsDNS1123Subdomain`'s complaints, or `IsWildcardDNS1123Subdomain`'s for a host with `*`.
fn dns_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    let subdomain = format!("{LABEL}(\\.{LABEL})*");
    match s.strip_prefix("*.") {
        _ if !s.contains('*') => {
            if !s.split('.').all(is_label) {
                let msg = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
                errs.push(regex_error(msg, &subdomain, &["example.com"]));
            }
        }
        Some(rest) if rest.split('.').all(is_label) => {}
        _ => {
            let msg = "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character";
            errs.push(regex_error(msg, &format!("\\*\\.{subdomain}"), &["*.example.com"]));
        }
    }
    errs
}

/// A refusal's cause: reason, field, message.
type Cause = (&'static str, String, String);

fn invalid(causes: &mut Vec<Cause>, field: String, value: &str, errs: Vec<String>) {
    causes.extend(errs.into_iter().map(|e| ("FieldValueInvalid", field.clone(), format!("Invalid value: {value}: {e}"))));
}

/// Ingress hosts: DNS subdomains, or wildcards.
fn ingress(obj: &Value, causes: &mut Vec<Cause>) {
    for (i, rule) in obj["spec"]["rules"].as_array().into_iter().flatten().enumerate() {
        let host = rule["host"].as_str().unwrap_or_default();
        if !host.is_empty() {
            invalid(causes, format!("spec.rules[{i}].host"), &format!("{host:?}"), dns_subdomain(host));
        }
    }
    for (i, tls) in obj["spec"]["tls"].as_array().into_iter().flatten().enumerate() {
        for (j, host) in tls["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str).enumerate() {
            invalid(causes, format!("spec.tls[{i}].hosts[{j}]"), &format!("{host:?}"), dns_subdomain(host));
        }
    }
}

/// Services: node ports and an external traffic policy only on externally
/// reachable types, and a node port taken by another Service refused (the
/// fake checks node ports, it does not allocate them).
fn service(store: &Store, ns: Option<&str>, name: &str, obj: &Value, causes: &mut Vec<Cause>) {
    let kind = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
    let external = matches!(kind, "NodePort" | "LoadBalancer");
    if let Some(policy) = obj["spec"]["externalTrafficPolicy"].as_str().filter(|_| !external) {
        let why = vec!["may only be set for externally-accessible services".to_string()];
        invalid(causes, "spec.externalTrafficPolicy".into(), &format!("{policy:?}"), why);
    }
    let others: Vec<u64> = store
        .all("", "services")
        .filter(|s| !(s["metadata"]["namespace"].as_str() == ns && s["metadata"]["name"] == name))
        .flat_map(|s| s["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["nodePort"].as_u64()))
        .collect();
    for (i, port) in obj["spec"]["ports"].as_array().into_iter().flatten().enumerate() {
        let Some(n) = port["nodePort"].as_u64() else { continue };
        let field = format!("spec.ports[{i}].nodePort");
        if !external {
            causes.push(("FieldValueForbidden", field, format!("Forbidden: may not be used when `type` is '{kind}'")));
        } else if others.contains(&n) {
            invalid(causes, field, &n.to_string(), vec!["provided port is already allocated".into()]);
        }
    }
}

/// Refuse `obj` as the API server would, or let it through.
pub fn validate(store: &Store, res: &Res, ns: Option<&str>, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes: Vec<Cause> = Vec::new();
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "namespaces") => invalid(&mut causes, "metadata.name".into(), &format!("{name:?}"), dns_label(name)),
        ("", "services") => service(store, ns, name, obj, &mut causes),
        ("networking.k8s.io", "ingresses") => ingress(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        return Ok(());
    }
    let kind = if res.group.is_empty() { res.kind.clone() } else { format!("{}.{}", res.kind, res.group) };
    let each: Vec<String> = causes.iter().map(|(_, f, m)| format!("{f}: {m}")).collect();
    let all = if each.len() == 1 { each[0].clone() } else { format!("[{}]", each.join(", ")) };
    let mut e = ApiError::new(422, "Invalid", format!("{kind} {name:?} is invalid: {all}"));
    let causes: Vec<Value> = causes.iter().map(|(r, f, m)| json!({"reason": r, "message": m, "field": f})).collect();
    e.details = Some(json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}));
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hosts_are_judged_as_apimachinery_judges_them() {
        assert!(dns_label("shop-dr").is_empty());
        assert_eq!(dns_label(&"a".repeat(64)), ["must be no more than 63 characters"]);
        assert!(
            dns_label("Shop")[0].ends_with("(e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
        );
        assert!(dns_subdomain("dr-shop.example.com").is_empty());
        assert!(dns_subdomain("*.dr-example.com").is_empty());
        assert!(dns_subdomain("dr-*.example.com")[0].starts_with("a wildcard DNS-1123 subdomain must start with '*.'"));
        assert!(dns_subdomain("shop_.example.com")[0].starts_with("a lowercase RFC 1123 subdomain"));
    }
}
