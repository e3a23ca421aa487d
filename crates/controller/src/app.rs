//! Applications in the plan (their types are the plan's): the order their
//! sources come back in (each after the ones it names), what a hook does
//! in a line, and what `plan check` finds wrong with them.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{AppSource, Application, Plan, RestoreHook};

impl RestoreHook {
    /// What it does, in a line (protocol entries name hooks by it).
    pub fn describe(&self) -> String {
        match (&self.scale, &self.command, &self.http) {
            (Some(s), _, _) => match s.replicas {
                Some(n) => format!("scale {} in {} to {n}", s.workload, s.namespace),
                None => format!("scale {} in {} back", s.workload, s.namespace),
            },
            (_, Some(c), _) => format!("command {:?}", tresor_sources::shown_command(c)),
            (_, _, Some(h)) => format!("http {}", h.url),
            _ => "nothing".into(),
        }
    }
}

impl Application {
    /// Its sources in the order they come back: each after those it names,
    /// otherwise as listed. A cycle is an error naming it.
    pub fn order(&self) -> Result<Vec<&AppSource>, String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        while out.len() < self.sources.len() {
            let next = self
                .sources
                .iter()
                .find(|s| !done.contains(s.source.as_str()) && s.after.iter().all(|a| done.contains(a.as_str()) || !self.has(a)));
            match next {
                Some(s) => {
                    done.insert(&s.source);
                    out.push(s);
                }
                None => return Err(format!("application {}: the order has a cycle: {}", self.name, self.cycle(&done).join(" → "))),
            }
        }
        Ok(out)
    }

    fn has(&self, source: &str) -> bool {
        self.sources.iter().any(|s| s.source == source)
    }

    /// A cycle among the sources not yet ordered, first one repeated at the end.
    fn cycle(&self, done: &BTreeSet<&str>) -> Vec<String> {
        let waits: BTreeMap<&str, &str> = self
            .sources
            .iter()
            .filter(|s| !done.contains(s.source.as_str()))
            .filter_map(|s| s.after.iter().find(|a| !done.contains(a.as_str()) && self.has(a)).map(|a| (s.source.as_str(), a.as_str())))
            .collect();
        let mut path: Vec<&str> = Vec::new();
        let mut at = waits.keys().next().copied().unwrap_or_default();
        while !path.contains(&at) {
            path.push(at);
            at = waits.get(at).copied().unwrap_or(at);
        }
        let from = path.iter().position(|p| *p == at).unwrap_or(0);
        let mut cycle: Vec<String> = path[from..].iter().map(|s| s.to_string()).collect();
        cycle.push(at.to_string());
        cycle
    }
}

/// Every fault of the plan's applications: (the entry's name, what is wrong).
pub fn faults(plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for app in &plan.applications {
        let say = |m: String| (app.name.clone(), format!("application {}: {m}", app.name));
        if !names.insert(app.name.as_str()) {
            out.push(say("named twice".into()));
        }
        if app.sources.is_empty() {
            out.push(say("names no source".into()));
        }
        if let Some(d) = &app.drill {
            if let Err(e) = crate::schedule::Schedule::parse(&d.schedule) {
                out.push(say(format!("drill {e}")));
            }
            // The daemon's jobs go by name: its drill would be taken for that source's.
            if plan.sources.iter().any(|s| s.name == app.name) {
                out.push(say("a source has this name too, so its scheduled drill cannot be told from that source's".into()));
            }
        }
        let mut seen = BTreeSet::new();
        for s in &app.sources {
            if !plan.sources.iter().any(|p| p.name == s.source) {
                out.push(say(format!("unknown source {:?}", s.source)));
            }
            if !seen.insert(s.source.as_str()) {
                out.push(say(format!("source {} is listed twice", s.source)));
            }
            for a in s.after.iter().filter(|a| !app.has(a)) {
                out.push(say(format!("source {} comes after {a:?}, which is not one of its sources", s.source)));
            }
        }
        if let Err(e) = app.order() {
            out.push((app.name.clone(), e));
        }
        out.extend(app.verify.queries.iter().filter_map(crate::plan::Query::contradiction).map(say));
        for h in app.hooks.pre.iter().chain(&app.hooks.post) {
            let given = [h.scale.is_some(), h.command.is_some(), h.http.is_some()].iter().filter(|g| **g).count();
            if given != 1 {
                out.push(say(format!("a hook takes exactly one of scale, command and http ({given} given)")));
            }
            if let Some(s) = &h.scale
                && let Err(e) = tresor_sources::restore_hooks::Workload::parse("k8s://", &s.namespace, &s.workload)
            {
                out.push(say(e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> Application {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn sources_come_back_after_those_they_name_and_a_cycle_is_named() {
        let a = app("name: shop\nsources:\n- {source: web, after: [db, cache]}\n- {source: cache, after: [db]}\n- {source: db}\n");
        let order: Vec<&str> = a.order().unwrap().iter().map(|s| s.source.as_str()).collect();
        assert_eq!(order, ["db", "cache", "web"]);
        let c = app("name: shop\nsources:\n- {source: db}\n- {source: web, after: [cache]}\n- {source: cache, after: [web]}\n");
        assert_eq!(c.order().unwrap_err(), "application shop: the order has a cycle: cache → web → cache");
    }

    #[test]
    fn a_scheduled_drill_needs_a_schedule_and_a_name_no_source_has() {
        let plan = "repositories:\n  main: {url: /r, password_file: /pw}\nclasses:\n  c: {rpo: 1d, rto: 1d}\n\
                    sources:\n  - {name: db, class: c, url: /srv/db, schedule: '@daily'}\n\
                    applications:\n  - {name: db, sources: [{source: db}], drill: {schedule: 'every day'}}\n";
        let plan = Plan::parse(plan, "t.yaml".as_ref()).unwrap();
        let said: Vec<String> = faults(&plan).into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            said,
            [
                "application db: drill schedule \"every day\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)",
                "application db: a source has this name too, so its scheduled drill cannot be told from that source's",
            ]
        );
    }
}
