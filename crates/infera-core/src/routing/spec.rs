//! What an operator writes to route a name: weighted variants, an optional shadow and an
//! optional canary. The same shape arrives as JSON (`PUT /v2/routes/{name}`) and as a table
//! of `routes.toml`; [`RouteSpec::validate`] bounds every field before anything is built.

use serde::{Deserialize, Serialize};

use crate::config::check_model_name;

/// Variants one route may have.
pub const MAX_VARIANTS: usize = 16;
/// The largest weight of one variant (weights are relative; percentages are the usual choice).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The longest step or window a canary may have (a day).
const MAX_CANARY_SECS: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub variants: Vec<VariantSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// How statistics, metrics and the canary name this variant (e.g. `stable`, `candidate`).
    pub name: String,
    /// The model that serves it; the route's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version; the newest ready one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Share of the route's successful requests mirrored, 0–100.
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// A candidate stepped up from `start_weight` by `step_weight` every `step_secs` while its
/// error ratio and p95 latency over the last `window_secs` stay within limits of the stable
/// variant's; rolled back to 0 the moment they do not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The variant on trial; the route's other variant is the stable one.
    pub candidate: String,
    #[serde(default = "default_start")]
    pub start_weight: u32,
    #[serde(default = "default_step")]
    pub step_weight: u32,
    #[serde(default = "default_step_secs")]
    pub step_secs: u64,
    /// Where stepping stops; at 100 the candidate is promoted.
    #[serde(default = "default_max")]
    pub max_weight: u32,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Requests the candidate must have answered in the window before it is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_max_error_ratio")]
    pub max_error_ratio: f64,
    /// The candidate's p95 may be at most this many times the stable variant's ...
    #[serde(default = "default_latency_ratio")]
    pub max_latency_ratio: f64,
    /// ... and this much above it, so microsecond noise on a fast model is not a failure.
    #[serde(default = "default_latency_slack")]
    pub latency_slack_ms: f64,
}

fn default_start() -> u32 {
    5
}
fn default_step() -> u32 {
    10
}
fn default_step_secs() -> u64 {
    60
}
fn default_max() -> u32 {
    100
}
fn default_window() -> u64 {
    60
}
fn default_min_requests() -> u64 {
    20
}
fn default_max_error_ratio() -> f64 {
    0.05
}
fn default_latency_ratio() -> f64 {
    2.0
}
fn default_latency_slack() -> f64 {
    5.0
}

impl VariantSpec {
    /// The model this variant runs on.
    pub fn model_or<'a>(&'a self, route: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(route)
    }
}

impl RouteSpec {
    /// Checks names, counts and ranges; the message says which field is wrong.
    pub fn validate(&self, route: &str) -> Result<(), String> {
        check_model_name(route).map_err(|e| format!("route name: {e}"))?;
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return Err(format!(
                "a route needs 1 to {MAX_VARIANTS} variants, not {}",
                self.variants.len()
            ));
        }
        for (i, v) in self.variants.iter().enumerate() {
            check_model_name(&v.name).map_err(|e| format!("variants[{i}].name: {e}"))?;
            if let Some(m) = &v.model {
                check_model_name(m).map_err(|e| format!("variants[{i}].model: {e}"))?;
            }
            if v.version.is_some_and(|n| n < 1) {
                return Err(format!("variants[{i}].version must be 1 or more"));
            }
            if v.weight > MAX_WEIGHT {
                return Err(format!("variants[{i}].weight must be at most {MAX_WEIGHT}"));
            }
            if self.variants[..i].iter().any(|o| o.name == v.name) {
                return Err(format!("two variants are named '{}'", v.name));
            }
        }
        if self.canary.is_none() && self.variants.iter().all(|v| v.weight == 0) {
            return Err("at least one variant needs a weight above 0".into());
        }
        if let Some(s) = &self.shadow {
            if let Some(m) = &s.model {
                check_model_name(m).map_err(|e| format!("shadow.model: {e}"))?;
            }
            if s.version.is_some_and(|n| n < 1) {
                return Err("shadow.version must be 1 or more".into());
            }
            if !(0.0..=100.0).contains(&s.percent) {
                return Err("shadow.percent must be between 0 and 100".into());
            }
        }
        if let Some(c) = &self.canary {
            if self.variants.len() != 2 {
                return Err(
                    "a canary needs exactly two variants: the stable one and the candidate".into(),
                );
            }
            if !self.variants.iter().any(|v| v.name == c.candidate) {
                return Err(format!(
                    "canary.candidate '{}' is not one of the variants",
                    c.candidate
                ));
            }
            let pct = |n: u32, f: &str| {
                if n > 100 {
                    Err(format!("canary.{f} is a percentage: 0 to 100"))
                } else {
                    Ok(())
                }
            };
            pct(c.start_weight, "start_weight")?;
            pct(c.step_weight, "step_weight")?;
            pct(c.max_weight, "max_weight")?;
            if c.max_weight < c.start_weight {
                return Err("canary.max_weight must not be below start_weight".into());
            }
            if c.step_weight == 0 && c.max_weight > c.start_weight {
                return Err("canary.step_weight must be above 0 to reach max_weight".into());
            }
            for (v, f) in [(c.step_secs, "step_secs"), (c.window_secs, "window_secs")] {
                if v == 0 || v > MAX_CANARY_SECS {
                    return Err(format!("canary.{f} must be 1 to {MAX_CANARY_SECS} seconds"));
                }
            }
            if !(0.0..=1.0).contains(&c.max_error_ratio) {
                return Err("canary.max_error_ratio must be between 0 and 1".into());
            }
            if !(c.max_latency_ratio >= 1.0 && c.max_latency_ratio.is_finite()) {
                return Err("canary.max_latency_ratio must be 1 or more".into());
            }
            if !(c.latency_slack_ms >= 0.0 && c.latency_slack_ms.is_finite()) {
                return Err("canary.latency_slack_ms must be 0 or more".into());
            }
        }
        Ok(())
    }

    /// The index of the canary's candidate and of the stable variant.
    pub fn canary_pair(&self) -> Option<(usize, usize)> {
        let c = self.canary.as_ref()?;
        let cand = self.variants.iter().position(|v| v.name == c.candidate)?;
        Some((cand, 1 - cand))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let s = spec(
            r#"{"variants":[{"name":"stable","version":1,"weight":90},{"name":"candidate","version":2,"weight":10}],
                "canary":{"candidate":"candidate"}}"#,
        );
        s.validate("m").unwrap();
        let c = s.canary.as_ref().unwrap();
        assert_eq!((c.start_weight, c.step_weight, c.max_weight), (5, 10, 100));
        assert_eq!(s.canary_pair(), Some((1, 0)));

        let bad = [
            (r#"{"variants":[]}"#, "1 to 16 variants"),
            (r#"{"variants":[{"name":"a","weight":0}]}"#, "above 0"),
            (
                r#"{"variants":[{"name":"a","weight":1},{"name":"a","weight":1}]}"#,
                "two variants",
            ),
            (
                r#"{"variants":[{"name":"../x","weight":1}]}"#,
                "variants[0].name",
            ),
            (
                r#"{"variants":[{"name":"a","version":0,"weight":1}]}"#,
                "version",
            ),
            (
                r#"{"variants":[{"name":"a","weight":1}],"shadow":{"percent":101}}"#,
                "percent",
            ),
            (
                r#"{"variants":[{"name":"a","weight":1}],"canary":{"candidate":"a"}}"#,
                "exactly two",
            ),
            (
                r#"{"variants":[{"name":"a","weight":1},{"name":"b","weight":1}],"canary":{"candidate":"c"}}"#,
                "not one of",
            ),
            (
                r#"{"variants":[{"name":"a","weight":1},{"name":"b","weight":1}],"canary":{"candidate":"b","step_secs":0}}"#,
                "step_secs",
            ),
            (
                r#"{"variants":[{"name":"a","weight":1},{"name":"b","weight":1}],"canary":{"candidate":"b","max_error_ratio":2}}"#,
                "max_error_ratio",
            ),
        ];
        for (json, want) in bad {
            let err = spec(json).validate("m").unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(serde_json::from_str::<RouteSpec>(r#"{"variants":[],"extra":1}"#).is_err());
    }
}
