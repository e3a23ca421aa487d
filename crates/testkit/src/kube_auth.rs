//! Who is asking, and may they: bearer tokens mapped to identities (an
//! administrator for the harness, service accounts through TokenRequest),
//! and RBAC evaluated from the stored Roles, ClusterRoles and bindings as
//! the real authorizer evaluates them. The cluster's bootstrap policy
//! (cluster-admin for `system:masters`, discovery and self-reviews for every
//! authenticated user) is modelled here rather than stored, so backups of
//! the fake's cluster objects hold only what the tests put there.

use serde_json::{Value, json};

use crate::kube_store::{ApiError, Store};

/// The token the harness uses to set clusters up; never what tresor runs as.
pub const ADMIN_TOKEN: &str = "tresor-fake-admin-token";

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn admin() -> Identity {
        Identity { user: "kubernetes-admin".into(), groups: vec!["system:masters".into(), "system:authenticated".into()] }
    }

    pub fn service_account(ns: &str, name: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()],
        }
    }

    /// Who a request without credentials is (anonymous authentication is on by default).
    pub fn anonymous() -> Identity {
        Identity { user: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
    }

    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Set for non-resource requests (discovery, /version).
    pub path: Option<String>,
}

impl Attrs {
    pub fn from_review(spec: &Value) -> Attrs {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        match (&spec["resourceAttributes"], &spec["nonResourceAttributes"]) {
            (r, _) if r.is_object() => Attrs {
                verb: s(&r["verb"]),
                group: s(&r["group"]),
                resource: s(&r["resource"]),
                subresource: s(&r["subresource"]),
                namespace: s(&r["namespace"]),
                name: s(&r["name"]),
                path: None,
            },
            (_, n) => Attrs { verb: s(&n["verb"]), path: Some(s(&n["path"])), ..Attrs::default() },
        }
    }
}

/// 401 with the body a real API server sends.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized".into())
}

/// The identity of a request: anonymous without credentials, None (401)
/// when the credentials name no one.
pub fn authenticate(store: &Store, header: Option<&str>) -> Option<Identity> {
    let Some(header) = header else { return Some(Identity::anonymous()) };
    let token = header.strip_prefix("Bearer ")?.trim();
    if token == ADMIN_TOKEN {
        return Some(Identity::admin());
    }
    store.tokens.get(token).cloned()
}

/// 403 worded as the API server words it (responsewriters.Forbidden).
pub fn forbidden(id: &Identity, a: &Attrs) -> ApiError {
    let detail = match &a.path {
        Some(path) => format!("User \"{}\" cannot {} path \"{path}\"", id.user, a.verb),
        None => {
            let resource = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
            let scope =
                if a.namespace.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{}\"", a.namespace) };
            format!("User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}", id.user, a.verb, a.group)
        }
    };
    let qualified = if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let message = match (qualified.is_empty(), a.name.is_empty()) {
        (true, _) => format!("forbidden: {detail}"),
        (false, true) => format!("{qualified} is forbidden: {detail}"),
        (false, false) => format!("{qualified} \"{}\" is forbidden: {detail}", a.name),
    };
    let mut e = ApiError::new(403, "Forbidden", message);
    e.details = Some(json!({"name": a.name, "group": a.group, "kind": a.resource}));
    e
}

/// Where the rules no stored binding gives come from.
pub const BOOTSTRAP: &str = "the bootstrap policy";

/// Paths anyone may read, even anonymously (system:public-info-viewer).
const PUBLIC_PATHS: [&str; 5] = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
/// Paths every authenticated user may read besides (system:discovery).
const DISCOVERY_PATHS: [&str; 6] = ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*"];

/// The rules the bootstrap bindings give an identity, wherever it asks.
fn bootstrap_rules(id: &Identity) -> Vec<Value> {
    if id.is_admin() {
        return vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}), json!({"verbs": ["*"], "nonResourceURLs": ["*"]})];
    }
    let public = json!({"verbs": ["get"], "nonResourceURLs": PUBLIC_PATHS});
    if !id.groups.iter().any(|g| g == "system:authenticated") {
        return vec![public];
    }
    vec![
        json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}),
        json!({"verbs": ["get"], "nonResourceURLs": DISCOVERY_PATHS}),
        public,
    ]
}

fn subject_matches(subject: &Value, id: &Identity, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
            id.user == format!("system:serviceaccount:{ns}:{name}")
        }
        Some("User") => id.user == name,
        Some("Group") => id.groups.iter().any(|g| g == name),
        _ => false,
    }
}

/// A rule with the binding that brought it, for review reasons and the least-privilege check.
#[derive(Debug, Clone)]
pub struct Granted {
    pub rule: Value,
    /// `ClusterRoleBinding "b" of ClusterRole "r"`, or `RoleBinding "ns/b" of Role "r"`.
    pub via: String,
}

/// The rules that apply to `id` in `ns` ("" for the cluster scope): every
/// ClusterRoleBinding's, plus the RoleBindings' of that namespace.
pub fn rules_for(store: &Store, id: &Identity, ns: &str) -> Vec<Granted> {
    let mut out: Vec<Granted> = bootstrap_rules(id).into_iter().map(|rule| Granted { rule, via: BOOTSTRAP.into() }).collect();
    let rbac = "rbac.authorization.k8s.io";
    let bindings =
        store.all(rbac, "clusterrolebindings").chain(store.all(rbac, "rolebindings").filter(|b| b["metadata"]["namespace"] == ns));
    for b in bindings {
        let b_ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
        if !b["subjects"].as_array().is_some_and(|s| s.iter().any(|s| subject_matches(s, id, b_ns))) {
            continue;
        }
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let (role, kind) = match b["roleRef"]["kind"].as_str() {
            Some("Role") => (store.objects.get(&format!("{rbac}/roles/{b_ns}/{role_name}")), "Role"),
            _ => (store.objects.get(&format!("{rbac}/clusterroles//{role_name}")), "ClusterRole"),
        };
        let binding = if b_ns.is_empty() {
            format!("ClusterRoleBinding \"{}\"", b["metadata"]["name"].as_str().unwrap_or_default())
        } else {
            format!("RoleBinding \"{b_ns}/{}\"", b["metadata"]["name"].as_str().unwrap_or_default())
        };
        for rule in role.and_then(|r| r["rules"].as_array()).into_iter().flatten() {
            out.push(Granted { rule: rule.clone(), via: format!("{binding} of {kind} \"{role_name}\"") });
        }
    }
    out
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

/// Does one RBAC rule allow the request (rbac/v1 helpers' VerbMatches, APIGroupMatches, …)?
pub fn rule_allows(rule: &Value, a: &Attrs) -> bool {
    if !has(&rule["verbs"], &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return rule["nonResourceURLs"].as_array().is_some_and(|urls| {
            urls.iter().filter_map(Value::as_str).any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p)))
        });
    }
    let combined = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter()
            .filter_map(Value::as_str)
            .any(|r| r == "*" || r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str())))
    });
    // A rule naming objects never matches a request without a name (create, list, watch).
    let names_ok = rule["resourceNames"].as_array().is_none_or(|n| n.is_empty() || n.iter().any(|v| v == a.name.as_str()));
    resource_ok && has(&rule["apiGroups"], &a.group) && names_ok
}

/// The rule and binding that allow the request, or None (denied).
pub fn authorize(store: &Store, id: &Identity, a: &Attrs) -> Option<Granted> {
    rules_for(store, id, &a.namespace).into_iter().find(|g| rule_allows(&g.rule, a))
}

/// POST …/serviceaccounts/NAME/token: a token that authenticates as that service account.
pub fn token_request(store: &mut Store, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    if !store.objects.contains_key(&format!("/serviceaccounts/{ns}/{name}")) {
        return Err(ApiError::new(404, "NotFound", format!("serviceaccounts \"{name}\" not found")));
    }
    store.rv += 1;
    let token = format!("fake-sa-token.{ns}.{name}.{}", store.rv);
    store.tokens.insert(token.clone(), Identity::service_account(ns, name));
    let expiration = body["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {"audiences": body["spec"]["audiences"].as_array().cloned().unwrap_or_else(|| vec!["https://kubernetes.default.svc".into()]),
                 "expirationSeconds": expiration, "boundObjectRef": null},
        "status": {"token": token, "expirationTimestamp": "2026-11-21T11:00:00Z"},
    }))
}

/// SelfSubjectAccessReview: may I do this? Answered by the same evaluation as requests.
pub fn access_review(store: &Store, id: &Identity, mut body: Value) -> Value {
    let attrs = Attrs::from_review(&body["spec"]);
    body["status"] = match authorize(store, id, &attrs) {
        Some(g) => json!({"allowed": true, "reason": format!("RBAC: allowed by {}", g.via)}),
        None => json!({"allowed": false}),
    };
    body["metadata"] = json!({"creationTimestamp": null});
    body
}

/// SelfSubjectRulesReview: what may I do in this namespace?
pub fn rules_review(store: &Store, id: &Identity, mut body: Value) -> Result<Value, ApiError> {
    let Some(ns) = body["spec"]["namespace"].as_str().filter(|n| !n.is_empty()).map(String::from) else {
        return Err(ApiError::new(400, "BadRequest", "no namespace on request".into()));
    };
    let field = |rule: &Value, k: &str| rule.get(k).cloned().filter(|v| !v.is_null());
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    for g in rules_for(store, id, &ns) {
        if let Some(urls) = field(&g.rule, "nonResourceURLs") {
            non_resource_rules.push(json!({"verbs": g.rule["verbs"], "nonResourceURLs": urls}));
        } else {
            let mut r = json!({"verbs": g.rule["verbs"], "apiGroups": g.rule["apiGroups"], "resources": g.rule["resources"]});
            if let Some(names) = field(&g.rule, "resourceNames") {
                r["resourceNames"] = names;
            }
            resource_rules.push(r);
        }
    }
    body["status"] = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    body["metadata"] = json!({"creationTimestamp": null});
    Ok(body)
}
