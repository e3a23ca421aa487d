//! The API server's validation of what restores rewrite, word for word as
//! Kubernetes 1.30 says it (apimachinery's validation messages): namespace
//! names are DNS-1123 labels (a rehearsal's `<ns>-dr` can pass 63
//! characters), Ingress hosts DNS-1123 subdomains or wildcards (a
//! rehearsal prefixes them). A refusal is 422 Invalid with the causes
//! kubectl prints.

use serde_json::{Value, json};

use crate::kube_store::{ApiError, Res};

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

/// Refuse `obj` as the API server would, or let it through.
pub fn validate(res: &Res, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes: Vec<(String, String)> = Vec::new();
    let mut invalid = |field: String, value: &str, errs: Vec<String>| {
        causes.extend(errs.into_iter().map(|e| (field.clone(), format!("Invalid value: {value:?}: {e}"))));
    };
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "namespaces") => invalid("metadata.name".into(), name, dns_label(name)),
        ("networking.k8s.io", "ingresses") => {
            for (i, rule) in obj["spec"]["rules"].as_array().into_iter().flatten().enumerate() {
                let host = rule["host"].as_str().unwrap_or_default();
                if !host.is_empty() {
                    invalid(format!("spec.rules[{i}].host"), host, dns_subdomain(host));
                }
            }
            for (i, tls) in obj["spec"]["tls"].as_array().into_iter().flatten().enumerate() {
                for (j, host) in tls["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str).enumerate() {
                    invalid(format!("spec.tls[{i}].hosts[{j}]"), host, dns_subdomain(host));
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        return Ok(());
    }
    let kind = if res.group.is_empty() { res.kind.clone() } else { format!("{}.{}", res.kind, res.group) };
    let each: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    let all = if each.len() == 1 { each[0].clone() } else { format!("[{}]", each.join(", ")) };
    let mut e = ApiError::new(422, "Invalid", format!("{kind} {name:?} is invalid: {all}"));
    let causes: Vec<Value> = causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect();
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
