//! A class's retention: GFS rules, each a count of periods or a span, and
//! the minimum a stated retention period demands.

use schemars::JsonSchema;
use serde::Deserialize;

use super::Span;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub last: Option<u32>,
    pub hourly: Option<Keep>,
    pub daily: Option<Keep>,
    pub weekly: Option<Keep>,
    pub monthly: Option<Keep>,
    pub yearly: Option<Keep>,
    /// The shortest history the class must keep (a stated minimum, e.g. a
    /// legal retention period): `plan check` refuses a policy shorter.
    #[serde(default, deserialize_with = "retention_minimum")]
    #[schemars(with = "Option<Span>")]
    pub minimum: Option<Span>,
}

/// One GFS rule: keep the newest snapshot of this many periods (`daily: 30`),
/// or of every period within a span (`hourly: 7d`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    Count(u32),
    Within(Span),
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        // A visitor, not an untagged enum: an error then names the rule's own line.
        struct Rule;
        impl serde::de::Visitor<'_> for Rule {
            type Value = Keep;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count of periods (30) or a span (7d)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Keep, E> {
                u32::try_from(n).map(Keep::Count).map_err(|_| E::custom(format!("{n} periods are more than a rule keeps")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Keep, E> {
                u64::try_from(n).map_err(|_| E::custom(format!("{n}: a count of periods is not negative"))).and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Keep, E> {
                // A count written as a string, as templates render an int-or-string ("30").
                if let Ok(n) = text.trim().parse::<u64>() {
                    return self.visit_u64(n);
                }
                retention_span(text).map(Keep::Within).map_err(E::custom)
            }
        }
        d.deserialize_any(Rule)
    }
}

fn retention_minimum<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
    Option::<String>::deserialize(d)?.map(|t| retention_span(&t)).transpose().map_err(serde::de::Error::custom)
}

/// A span of a retention rule. A bare `m`, minutes in every duration of a
/// plan, is refused here: in restic's and `forget`'s `--keep-within` it is
/// months, and a monthly rule read as minutes would let a prune delete
/// what it was meant to keep.
fn retention_span(text: &str) -> Result<Span, String> {
    match text.trim().strip_suffix('m').filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
        Some(n) => Err(format!(
            "retention span {text:?}: `m` would be minutes here, not months as in `forget --keep-within`; write {n}mo for months or {n}min for minutes"
        )),
        None => Span::parse(text),
    }
}

impl Keep {
    /// How far back the rule reaches, for periods of `period` seconds.
    pub fn reach(self, period: u64) -> u64 {
        match self {
            Keep::Count(n) => u64::from(n) * period,
            Keep::Within(s) => s.secs(),
        }
    }

    /// The `forget` option: `--keep-daily 30` or `--keep-within-daily 7d`
    /// (in days, or hours when not whole days: `forget` reads `m` as months).
    pub fn args(self, period: &str) -> [String; 2] {
        match self {
            Keep::Count(n) => [format!("--keep-{period}"), n.to_string()],
            Keep::Within(s) => {
                let secs = s.secs();
                let span = if secs.is_multiple_of(86_400) { format!("{}d", secs / 86_400) } else { format!("{}h", secs.div_ceil(3600)) };
                [format!("--keep-within-{period}"), span]
            }
        }
    }
}

// By hand: an untagged count-or-span is Kubernetes' int-or-string, which a
// structural schema cannot say with `anyOf`.
impl JsonSchema for Keep {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Keep".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"x-kubernetes-int-or-string": true, "description": "A count of periods (30) or a span (7d)."})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_rules_are_counts_or_spans() {
        let r: Retention = serde_norway::from_str("hourly: 7d\ndaily: 30\nweekly: 90min\nmonthly: 6mo\nminimum: 1y\n").unwrap();
        assert_eq!(r.hourly.unwrap().args("hourly"), ["--keep-within-hourly".to_string(), "7d".into()]);
        assert_eq!(r.daily.unwrap().args("daily"), ["--keep-daily".to_string(), "30".into()]);
        assert_eq!(r.weekly.unwrap().args("weekly"), ["--keep-within-weekly".to_string(), "2h".into()], "minutes are not forget's months");
        assert_eq!(r.monthly.unwrap().args("monthly"), ["--keep-within-monthly".to_string(), "180d".into()]);
        assert_eq!(r.hourly.unwrap().reach(3600), 7 * 86_400);
        assert!(serde_norway::from_str::<Retention>("daily: soon\n").is_err());
        let quoted: Retention = serde_norway::from_str("daily: \"30\"\n").unwrap();
        assert_eq!(quoted.daily, Some(Keep::Count(30)), "a count as a template renders an int-or-string");
        // `m`, minutes in a plan, is months to restic's --keep-within: refused in retention.
        for text in ["monthly: 6m\n", "minimum: 12m\n"] {
            let err = serde_norway::from_str::<Retention>(text).unwrap_err().to_string();
            assert!(err.contains("`m` would be minutes here, not months as in `forget --keep-within`; write "), "{err}");
        }
        let err = serde_norway::from_str::<Retention>("monthly: soonm\n").unwrap_err().to_string();
        assert!(err.contains("cannot read duration \"soonm\""), "not taken for minutes: {err}");
        let err = serde_norway::from_str::<Retention>("monthly: 6m\n").unwrap_err().to_string();
        assert!(err.contains("retention span \"6m\": `m` would be minutes here, not months as in `forget --keep-within`; write 6mo for months or 6min for minutes"), "{err}");
    }
}
