//! Triton's `ModelConfig`: read from `config.pbtxt` (protobuf text format) or proto-JSON,
//! checked field by field, and written back as the proto-JSON Triton's clients read.

use infera_proto::inference::{
    ModelConfig, model_config::SchedulingChoice, model_instance_group::Kind,
    model_version_policy::PolicyChoice,
};
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use thiserror::Error;

use crate::datatype::DataType;

/// A config problem, naming the field and saying what is wrong with it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn descriptor() -> MessageDescriptor {
    infera_proto::descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("ModelConfig is in the descriptor pool")
}

/// Parses `config.pbtxt` text; the error carries the line and column.
pub fn parse_pbtxt(text: &str) -> Result<ModelConfig, ConfigError> {
    let text = &colon_before_lists(text);
    let msg = DynamicMessage::parse_text_format(descriptor(), text)
        .map_err(|e| ConfigError::new("config.pbtxt", describe_text_error(&e, text)))?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError::new("config.pbtxt", e.to_string()))
}

/// Triton's configs write lists of messages as `input [ { ... } ]`, without the colon
/// that the text-format parser wants; put it in (outside strings and comments).
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c == '#' {
            comment = true;
        } else if c == '[' {
            let prev = out.trim_end().chars().next_back();
            if prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_') {
                out.push(':');
            }
        }
        out.push(c);
    }
    out
}

fn describe_text_error(e: &prost_reflect::text_format::ParseError, text: &str) -> String {
    // The error's own Display has no position; derive line:column from its source span.
    use miette::Diagnostic;
    let span = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    match span {
        Some(off) => {
            let before = &text[..off.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {e}")
        }
        None => e.to_string(),
    }
}

/// Parses a proto-JSON config, as sent in a repository load request's `config` parameter.
pub fn parse_json(text: &str) -> Result<ModelConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let msg = DynamicMessage::deserialize_with_options(
        descriptor(),
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| ConfigError::new("config", e.to_string()))?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError::new("config", e.to_string()))
}

/// The config as Triton's JSON: proto field names, 64-bit integers as strings.
pub fn to_json(cfg: &ModelConfig) -> serde_json::Value {
    let bytes = cfg.encode_to_vec();
    let Ok(msg) = DynamicMessage::decode(descriptor(), bytes.as_slice()) else {
        return serde_json::Value::Null;
    };
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

/// Platform strings that select the ONNX runtimes.
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";
/// Triton's platform string for pipelines of other models.
pub const ENSEMBLE_PLATFORM: &str = "ensemble";

/// Checks what can be checked without the model file. `dir_name` is the repository folder.
pub fn validate(cfg: &ModelConfig, dir_name: &str) -> Result<(), ConfigError> {
    if !cfg.name.is_empty() && cfg.name != dir_name {
        return Err(ConfigError::new(
            "name",
            format!(
                "'{}' does not match the model directory '{dir_name}'",
                cfg.name
            ),
        ));
    }
    if cfg.max_batch_size < 0 {
        return Err(ConfigError::new("max_batch_size", "must be >= 0"));
    }
    let mut seen = std::collections::HashSet::new();
    for (kind, list) in [
        (
            "input",
            cfg.input.iter().map(io_of_input).collect::<Vec<_>>(),
        ),
        ("output", cfg.output.iter().map(io_of_output).collect()),
    ] {
        for (i, (name, dtype, dims, reshape)) in list.into_iter().enumerate() {
            let field = |f: &str| format!("{kind}[{i}].{f}");
            if name.is_empty() {
                return Err(ConfigError::new(field("name"), "must not be empty"));
            }
            if !seen.insert((kind, name.to_string())) {
                return Err(ConfigError::new(
                    field("name"),
                    format!("duplicate {kind} '{name}'"),
                ));
            }
            let dt = infera_proto::inference::DataType::try_from(dtype).ok();
            if dt.and_then(DataType::from_config).is_none() {
                return Err(ConfigError::new(
                    field("data_type"),
                    format!("{kind} '{name}' needs a data type such as TYPE_FP32"),
                ));
            }
            if let Some(d) = dims.iter().find(|&&d| d < -1 || d == 0) {
                return Err(ConfigError::new(
                    field("dims"),
                    format!(
                        "{kind} '{name}' has dimension {d}; use positive sizes or -1 for variable"
                    ),
                ));
            }
            if dims.is_empty() && cfg.max_batch_size == 0 && reshape.is_none() {
                return Err(ConfigError::new(
                    field("dims"),
                    format!("{kind} '{name}' needs dims (the shape without the batch dimension)"),
                ));
            }
            if let Some(shape) = reshape {
                let count = |v: &[i64]| v.iter().product::<i64>();
                if !dims.contains(&-1) && !shape.contains(&-1) && count(dims) != count(shape) {
                    return Err(ConfigError::new(
                        field("reshape"),
                        format!(
                            "{kind} '{name}': reshape {shape:?} does not hold the {} elements of dims {dims:?}",
                            count(dims)
                        ),
                    ));
                }
            }
        }
    }
    match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) => {
            if cfg.max_batch_size == 0 {
                return Err(ConfigError::new(
                    "dynamic_batching",
                    "needs max_batch_size > 0 (a model without a batch dimension cannot be batched)",
                ));
            }
            for &p in &db.preferred_batch_size {
                if p < 1 || p > cfg.max_batch_size {
                    return Err(ConfigError::new(
                        "dynamic_batching.preferred_batch_size",
                        format!("{p} is outside 1..={}", cfg.max_batch_size),
                    ));
                }
            }
            if db.priority_levels > 0
                && (db.default_priority_level < 1 || db.default_priority_level > db.priority_levels)
            {
                return Err(ConfigError::new(
                    "dynamic_batching.default_priority_level",
                    format!(
                        "must be in 1..={} when priority_levels is {}",
                        db.priority_levels, db.priority_levels
                    ),
                ));
            }
            for &level in db.priority_queue_policy.keys() {
                if level < 1 || level > db.priority_levels {
                    return Err(ConfigError::new(
                        "dynamic_batching.priority_queue_policy",
                        format!("level {level} is outside 1..={}", db.priority_levels),
                    ));
                }
            }
        }
        Some(SchedulingChoice::SequenceBatching(_)) => {
            return Err(ConfigError::new(
                "sequence_batching",
                "stateful sequence batching is not supported yet; use dynamic_batching",
            ));
        }
        Some(SchedulingChoice::EnsembleScheduling(_)) | None => {}
    }
    for (i, g) in cfg.instance_group.iter().enumerate() {
        if g.count < 0 {
            return Err(ConfigError::new(
                format!("instance_group[{i}].count"),
                "must be >= 0",
            ));
        }
        if Kind::try_from(g.kind).is_err() {
            return Err(ConfigError::new(
                format!("instance_group[{i}].kind"),
                "unknown kind",
            ));
        }
    }
    if let Some(PolicyChoice::Specific(s)) = cfg
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
        && s.versions.is_empty()
    {
        return Err(ConfigError::new(
            "version_policy.specific.versions",
            "lists no versions",
        ));
    }
    Ok(())
}

type IoView<'a> = (&'a str, i32, &'a [i64], Option<&'a [i64]>);

fn io_of_input(i: &infera_proto::inference::ModelInput) -> IoView<'_> {
    (
        &i.name,
        i.data_type,
        &i.dims,
        i.reshape.as_ref().map(|r| r.shape.as_slice()),
    )
}
fn io_of_output(o: &infera_proto::inference::ModelOutput) -> IoView<'_> {
    (
        &o.name,
        o.data_type,
        &o.dims,
        o.reshape.as_ref().map(|r| r.shape.as_slice()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNN: &str = r#"
name: "fashion_cnn"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "input" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 200
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 allow_timeout_override: true max_queue_size: 8 }
  priority_queue_policy { key: 1 value: { timeout_action: REJECT } }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { specific { versions: [1, 3] } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"#;

    #[test]
    fn parses_a_full_triton_config() {
        let c = parse_pbtxt(CNN).unwrap();
        assert_eq!(c.name, "fashion_cnn");
        assert_eq!(c.max_batch_size, 64);
        assert_eq!(c.input[0].dims, vec![1, 28, 28]);
        assert_eq!(c.output[0].label_filename, "labels.txt");
        let Some(SchedulingChoice::DynamicBatching(db)) = &c.scheduling_choice else {
            panic!("dynamic batching missing")
        };
        assert_eq!(db.preferred_batch_size, vec![16, 32]);
        assert_eq!(db.priority_levels, 2);
        assert_eq!(db.default_queue_policy.as_ref().unwrap().max_queue_size, 8);
        assert_eq!(db.priority_queue_policy[&1].timeout_action, 0);
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(c.parameters["intra_op_thread_count"].string_value, "1");
        validate(&c, "fashion_cnn").unwrap();
    }

    #[test]
    fn list_colons_are_added_outside_strings_and_comments() {
        assert_eq!(colon_before_lists("input [ {} ]"), "input :[ {} ]");
        assert_eq!(colon_before_lists("dims: [1]"), "dims: [1]");
        assert_eq!(
            colon_before_lists("name: \"a [b\" # x [y\n"),
            "name: \"a [b\" # x [y\n"
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = parse_pbtxt("name: \"x\"\nmax_batch_size: \"eight\"\n").unwrap_err();
        assert!(e.reason.contains("line 2"), "{e}");
        let e = parse_pbtxt("name: \"x\"\nmax_batchsize: 8\n").unwrap_err();
        assert!(e.reason.contains("max_batchsize"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let bad = |text: &str| validate(&parse_pbtxt(text).unwrap(), "m").unwrap_err();
        assert_eq!(bad("name: \"other\"").field, "name");
        assert_eq!(
            bad("input [{ name: \"a\" dims: [1] }]").field,
            "input[0].data_type"
        );
        assert_eq!(
            bad("input [{ name: \"a\" data_type: TYPE_FP32 dims: [0] }]").field,
            "input[0].dims"
        );
        assert_eq!(
            bad("max_batch_size: 4 dynamic_batching { preferred_batch_size: [8] }").field,
            "dynamic_batching.preferred_batch_size"
        );
        assert_eq!(bad("dynamic_batching { }").field, "dynamic_batching");
        assert_eq!(
            bad("max_batch_size: 4 dynamic_batching { priority_levels: 2 }").field,
            "dynamic_batching.default_priority_level"
        );
        assert_eq!(
            bad("input [{ name: \"a\" data_type: TYPE_FP32 dims: [4] reshape { shape: [3] } }]")
                .field,
            "input[0].reshape"
        );
    }

    #[test]
    fn json_round_trip_uses_triton_field_names() {
        let c = parse_pbtxt(CNN).unwrap();
        let j = to_json(&c);
        assert_eq!(j["max_batch_size"], 64);
        assert_eq!(j["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(j["input"][0]["dims"][1], "28");
        assert!(j.get("dynamic_batching").is_some());
        assert!(j.get("sequence_batching").is_none());
        let back = parse_json(&j.to_string()).unwrap();
        assert_eq!(back, c);
    }
}
