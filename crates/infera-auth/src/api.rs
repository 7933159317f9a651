//! Endpoints by API, as Triton names them (`health`, `metadata`, `inference`, ...) plus
//! infera's own (`page`, `metrics`, `jobs`, `admin`): which ones are open without a
//! credential (`--public-endpoints`), and Triton's header-match restrictions
//! (`--http-restricted-api` / `--grpc-restricted-protocol` `APIS:KEY=VALUE`), for users who
//! bring Triton launch scripts.

use subtle::ConstantTimeEq;

use crate::Denied;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
    /// The web page at `/`.
    Page,
    Metrics,
    /// Batch jobs (`/api/inference/...`).
    Jobs,
    /// Usage and keys (`/v2/admin/...`).
    Admin,
}

const ALL: [Api; 13] = [
    Api::Health,
    Api::Metadata,
    Api::Inference,
    Api::SharedMemory,
    Api::ModelConfig,
    Api::ModelRepository,
    Api::Statistics,
    Api::Trace,
    Api::Logging,
    Api::Page,
    Api::Metrics,
    Api::Jobs,
    Api::Admin,
];

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Health => "health",
            Api::Metadata => "metadata",
            Api::Inference => "inference",
            Api::SharedMemory => "shared-memory",
            Api::ModelConfig => "model-config",
            Api::ModelRepository => "model-repository",
            Api::Statistics => "statistics",
            Api::Trace => "trace",
            Api::Logging => "logging",
            Api::Page => "page",
            Api::Metrics => "metrics",
            Api::Jobs => "jobs",
            Api::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Api> {
        ALL.into_iter().find(|a| a.as_str() == s.trim())
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Every name, for messages.
    pub fn names() -> String {
        ALL.map(Api::as_str).join(", ")
    }
}

/// A set of APIs (a bit mask: checking it costs nothing per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApiSet(u32);

impl ApiSet {
    pub fn contains(self, a: Api) -> bool {
        self.0 & a.bit() != 0
    }

    /// Health probes and the web page (which asks for a key itself): the default.
    pub fn default_public() -> ApiSet {
        ApiSet(Api::Health.bit() | Api::Page.bit())
    }

    /// `health,page,metrics`, or `none`.
    pub fn parse(list: &str) -> Result<ApiSet, String> {
        if list.trim() == "none" {
            return Ok(ApiSet(0));
        }
        let mut set = 0;
        for name in list.split(',').filter(|s| !s.trim().is_empty()) {
            let a = Api::parse(name).ok_or_else(|| {
                format!(
                    "'{}' is not an API; use none or some of: {}",
                    name.trim(),
                    Api::names()
                )
            })?;
            set |= a.bit();
        }
        Ok(ApiSet(set))
    }
}

/// One `APIS:KEY=VALUE` rule.
#[derive(Debug, Clone)]
struct Rule {
    apis: ApiSet,
    header: String,
    value: String,
}

/// Triton's restricted APIs: a request to a listed API must carry the header with the value.
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    rules: Vec<Rule>,
}

impl Restrictions {
    /// Parses Triton's flag values, e.g. `model-repository,statistics:admin-key=s3cret`.
    pub fn parse(specs: &[String]) -> Result<Restrictions, String> {
        let mut rules: Vec<Rule> = Vec::new();
        for spec in specs {
            let (apis, kv) = spec.split_once(':').ok_or_else(|| {
                format!("'{spec}': expected APIS:KEY=VALUE, e.g. model-repository:admin-key=SECRET")
            })?;
            let (header, value) = kv
                .split_once('=')
                .filter(|(k, v)| !k.trim().is_empty() && !v.is_empty())
                .ok_or_else(|| format!("'{apis}:…': expected KEY=VALUE after the colon"))?;
            let set = ApiSet::parse(apis)?;
            if set.0 == 0 {
                return Err(format!("'{apis}': name at least one API"));
            }
            if let Some(r) = rules.iter().find(|r| r.apis.0 & set.0 != 0) {
                return Err(format!(
                    "an API is restricted twice (by '{}' and '{}'); each API takes one KEY=VALUE",
                    r.header,
                    header.trim()
                ));
            }
            rules.push(Rule {
                apis: set,
                header: header.trim().to_ascii_lowercase(),
                value: value.to_string(),
            });
        }
        Ok(Restrictions { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a request to `api` carries what its restriction asks (`header` reads a
    /// request header or gRPC metadata by lower-case name).
    pub fn check<'a>(
        &self,
        api: Api,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), Denied> {
        let Some(rule) = self.rules.iter().find(|r| r.apis.contains(api)) else {
            return Ok(());
        };
        let ok = header(&rule.header)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(rule.value.as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "This API is restricted, expecting header '{}'",
                rule.header
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_restrictions_parse_and_match() {
        let r = Restrictions::parse(&[
            "model-repository,statistics:admin-key=s3cret".into(),
            "inference:infer-key=k".into(),
        ])
        .unwrap();
        let with = |v: &'static str| move |h: &str| (h == "admin-key").then_some(v);
        assert!(r.check(Api::ModelRepository, with("s3cret")).is_ok());
        assert!(matches!(
            r.check(Api::Statistics, with("wrong")),
            Err(Denied::Forbidden(m)) if m.contains("'admin-key'")
        ));
        assert!(r.check(Api::Statistics, |_| None).is_err());
        assert!(r.check(Api::Inference, with("s3cret")).is_err());
        assert!(r.check(Api::Health, |_| None).is_ok());
        for bad in [
            "inference",
            "inference:k",
            "inference:=v",
            "nope:k=v",
            ":k=v",
        ] {
            assert!(Restrictions::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(
            Restrictions::parse(&["inference:a=1".into(), "inference,health:b=2".into()]).is_err()
        );
    }

    #[test]
    fn public_sets_parse() {
        let p = ApiSet::parse("health,metrics").unwrap();
        assert!(p.contains(Api::Health) && p.contains(Api::Metrics) && !p.contains(Api::Page));
        assert_eq!(ApiSet::parse("none").unwrap(), ApiSet(0));
        assert!(ApiSet::parse("health,everything").is_err());
        assert!(ApiSet::default_public().contains(Api::Page));
    }
}
