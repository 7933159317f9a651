//! A job request (`POST /api/inference/batch`) parsed without building a JSON tree, with a
//! message naming what is wrong.

use infera_batch::Format;
use infera_jobs::{JobRequest, Priority};
use serde_json::value::RawValue;

/// A job request's fields as raw JSON text: other fields are skipped without being kept,
/// so no body builds a JSON tree; each field is then parsed into its own type.
#[derive(serde::Deserialize)]
struct JobJson<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    inputs: Option<&'a RawValue>,
    #[serde(borrow)]
    priority: Option<&'a RawValue>,
    #[serde(borrow)]
    output_format: Option<&'a RawValue>,
    #[serde(borrow)]
    recursive: Option<&'a RawValue>,
}

/// Inputs listed in one request; past it the parse stops.
const MAX_LISTED_INPUTS: usize = 1_000_000;

/// A string, or `None` for any other JSON value (consumed without being kept).
struct MaybeString(Option<String>);

impl<'de> serde::Deserialize<'de> for MaybeString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<MaybeString, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<MaybeString, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `inputs`: one string or a list of strings.
fn parse_inputs(raw: &RawValue) -> Result<Vec<String>, String> {
    const WRONG: &str = "\"inputs\" must be a list of strings (paths or URLs)";
    if let Ok(one) = serde_json::from_str::<String>(raw.get()) {
        return Ok(vec![one]);
    }
    struct List;
    impl<'de> serde::de::Visitor<'de> for List {
        type Value = Result<Vec<String>, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<MaybeString>()? {
                match item.0 {
                    _ if out.len() == MAX_LISTED_INPUTS => {
                        return Ok(Err(format!(
                            "more than {MAX_LISTED_INPUTS} inputs: split the job"
                        )));
                    }
                    Some(s) => out.push(s),
                    None => return Ok(Err(WRONG.into())),
                }
            }
            Ok(Ok(out))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde::Deserializer::deserialize_seq(&mut de, List).map_err(|_| WRONG.to_string())?
}

/// The request body as a [`JobRequest`], with a message naming what is wrong.
pub(super) fn parse_request(body: &[u8], owner: Option<String>) -> Result<JobRequest, String> {
    if body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|&b| b != b'{')
    {
        return Err("the body must be a JSON object".into());
    }
    let v: JobJson<'_> = serde_json::from_slice(body).map_err(|e| {
        format!("bad JSON: {e}; send {{\"model\": NAME, \"inputs\": [PATH or URL, ...]}}")
    })?;
    let text = |raw: Option<&RawValue>| -> Option<Result<String, String>> {
        let raw = raw?;
        Some(
            serde_json::from_str::<String>(raw.get())
                .map_err(|_| raw.get().chars().take(40).collect()),
        )
    };
    let model = match text(v.model) {
        Some(Ok(m)) => m,
        _ => return Err("\"model\" (a string) is required".into()),
    };
    let inputs = match v.inputs {
        Some(raw) => parse_inputs(raw)?,
        None => return Err("\"inputs\" (a list of paths or URLs) is required".into()),
    };
    let priority = match text(v.priority) {
        None => Priority::Normal,
        Some(p) => {
            let p = p.unwrap_or_else(|raw| raw);
            Priority::parse(&p).ok_or_else(|| {
                format!("\"priority\" is {p:?}; use \"high\", \"normal\" or \"low\"")
            })?
        }
    };
    let format = match text(v.output_format) {
        None => Format::Csv,
        Some(Ok(f)) => f.parse()?,
        Some(Err(_)) => return Err("\"output_format\" must be \"csv\" or \"jsonl\"".into()),
    };
    let recursive = match v.recursive {
        None => true,
        Some(r) => serde_json::from_str::<bool>(r.get())
            .map_err(|_| "\"recursive\" must be true or false".to_string())?,
    };
    Ok(JobRequest {
        model,
        inputs,
        recursive,
        priority,
        format,
        owner,
    })
}
