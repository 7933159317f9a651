//! Who a caller is and what that allows: roles, endpoint groups, identities, the peer a
//! connection comes from, and why a request is refused.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::KeyState;
use crate::limits::Limited;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Server and model metadata, configs, statistics.
    Reader,
    /// Also inference (v2, `/predict`, TorchServe), streams, and its own batch jobs.
    Infer,
    /// Also repository load/unload/index, every batch job, management.
    Operator,
    /// Also keys, usage and the audit log.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s.to_ascii_lowercase().as_str() {
            "reader" | "read" => Role::Reader,
            "infer" | "inference" => Role::Infer,
            "operator" | "ops" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Infer => "infer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn allows(self, group: Group) -> bool {
        match group {
            Group::Public => true,
            Group::Read => self >= Role::Reader,
            Group::Infer => self >= Role::Infer,
            Group::Operate => self >= Role::Operator,
            Group::Admin => self >= Role::Admin,
        }
    }
}

/// Endpoints grouped by what they let a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Health and readiness (Kubernetes probes), the web page itself.
    Public,
    Read,
    Infer,
    Operate,
    Admin,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Public => "public",
            Group::Read => "read",
            Group::Infer => "infer",
            Group::Operate => "operate",
            Group::Admin => "admin",
        }
    }
}

/// A caller, as the front-ends hand it to handlers (request extensions).
#[derive(Clone)]
pub struct Identity {
    pub id: Arc<str>,
    pub role: Role,
    models: Option<Arc<HashSet<String>>>,
    pub(crate) state: Option<Arc<KeyState>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish()
    }
}

impl Identity {
    /// The caller of an open server: every role, every model.
    pub fn anonymous() -> Identity {
        Identity {
            id: Arc::from("anonymous"),
            role: Role::Admin,
            models: None,
            state: None,
        }
    }

    /// The caller of a public endpoint (health, the page, or what `--public-endpoints`
    /// opens): any model the endpoint names, as the endpoint being public means.
    pub fn public() -> Identity {
        Identity {
            id: Arc::from("public"),
            role: Role::Reader,
            models: None,
            state: None,
        }
    }

    /// The caller behind a verified JWT: its subject, the role and models its claims give.
    pub(crate) fn token(sub: &str, role: Role, models: Option<Arc<HashSet<String>>>) -> Identity {
        Identity {
            id: Arc::from(sub),
            role,
            models,
            state: None,
        }
    }

    pub(crate) fn of(s: &Arc<KeyState>) -> Identity {
        Identity {
            id: s.id.clone(),
            role: s.entry.role,
            models: s.models.clone(),
            state: Some(s.clone()),
        }
    }

    /// Whether this caller may use `model` (a key may be limited to some models).
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }

    /// Whether this caller sees every batch job, not only its own.
    pub fn sees_all_jobs(&self) -> bool {
        self.role >= Role::Operator
    }
}

/// The other end of a connection, as the server knows it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<std::net::SocketAddr>,
    /// A verified client certificate's names (subject CN, SANs), with mTLS.
    pub cert_names: Arc<[String]>,
}

impl Peer {
    pub(crate) fn from(&self) -> String {
        self.addr.map(|a| a.ip().to_string()).unwrap_or_default()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// No credential, or one that is not valid (401 / UNAUTHENTICATED).
    Unauthenticated(String),
    /// Valid, but not allowed this (403 / PERMISSION_DENIED).
    Forbidden(String),
    /// Over a rate, concurrency or quota limit (429 / RESOURCE_EXHAUSTED).
    Limited(Limited),
}

impl Denied {
    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(m) | Denied::Forbidden(m) => m,
            Denied::Limited(l) => &l.message,
        }
    }
}
