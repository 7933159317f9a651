//! Triton's `ModelConfig`: read from `config.pbtxt` (protobuf text format) or proto-JSON,
//! checked field by field, and written back as the proto-JSON Triton's clients read.

pub mod limits;
mod validate;

use infera_proto::inference::ModelConfig;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use thiserror::Error;

pub use validate::{check_model_name, validate};

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
    check_size(text.len())?;
    let text = &colon_before_lists(text)?;
    let msg = DynamicMessage::parse_text_format(descriptor(), text)
        .map_err(|e| ConfigError::new("config.pbtxt", describe_text_error(&e, text)))?;
    msg.transcode_to::<ModelConfig>()
        .map_err(|e| ConfigError::new("config.pbtxt", e.to_string()))
}

/// A config as config.pbtxt text (protobuf text format, one field per line).
pub fn to_pbtxt(cfg: &ModelConfig) -> String {
    let mut msg = DynamicMessage::new(descriptor());
    match msg.transcode_from(cfg) {
        Ok(()) => msg.to_text_format_with_options(
            &prost_reflect::text_format::FormatOptions::new().pretty(true),
        ),
        // Every ModelConfig transcodes to its own descriptor; kept total all the same.
        Err(_) => String::new(),
    }
}

fn check_size(len: usize) -> Result<(), ConfigError> {
    if len > limits::MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            "config",
            format!(
                "{len} bytes is over the limit of {} bytes for a model config",
                limits::MAX_CONFIG_BYTES
            ),
        ));
    }
    Ok(())
}

/// Triton's configs write lists of messages as `input [ { ... } ]`, without the colon
/// that the text-format parser wants; put it in (outside strings and comments). Also
/// bounds the nesting, since the parser recurses once per level, and drops comments (each
/// one the lexer skips costs it a stack frame in debug builds; thousands overflow it).
fn colon_before_lists(text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut depth = 0usize;
    for c in text.chars() {
        if comment {
            comment = c != '\n';
            if comment {
                continue;
            }
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
            continue;
        } else if c == '{' || c == '[' || c == '<' {
            depth += 1;
            if depth > limits::MAX_CONFIG_NESTING {
                return Err(ConfigError::new(
                    "config.pbtxt",
                    format!("nested deeper than {} levels", limits::MAX_CONFIG_NESTING),
                ));
            }
            if c == '[' {
                let prev = out.trim_end().chars().next_back();
                if prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_') {
                    out.push(':');
                }
            }
        } else if c == '}' || c == ']' || c == '>' {
            depth = depth.saturating_sub(1);
        }
        out.push(c);
    }
    Ok(out)
}

fn describe_text_error(e: &prost_reflect::text_format::ParseError, text: &str) -> String {
    // The error's own Display has no position; derive line:column from its source span.
    use miette::Diagnostic;
    let span = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    match span {
        Some(off) => {
            let mut off = off.min(text.len());
            while !text.is_char_boundary(off) {
                off -= 1;
            }
            let before = &text[..off];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {e}")
        }
        None => e.to_string(),
    }
}

/// Parses a proto-JSON config, as sent in a repository load request's `config` parameter.
pub fn parse_json(text: &str) -> Result<ModelConfig, ConfigError> {
    check_size(text.len())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use infera_proto::inference::model_config::SchedulingChoice;

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
        assert_eq!(colon_before_lists("input [ {} ]").unwrap(), "input :[ {} ]");
        assert_eq!(colon_before_lists("dims: [1]").unwrap(), "dims: [1]");
        assert_eq!(
            colon_before_lists("name: \"a [b\" # x [y\n").unwrap(),
            "name: \"a [b\" \n"
        );
        // Thousands of comment lines parse (the lexer never sees them).
        let commented = format!("{}name: \"m\"\n", "# note\n".repeat(50_000));
        assert_eq!(parse_pbtxt(&commented).unwrap().name, "m");
    }

    #[test]
    fn deep_nesting_and_huge_configs_are_refused_before_parsing() {
        let deep = format!(
            "{}{}",
            "parameters { key: \"a\" value { ".repeat(40),
            "}".repeat(80)
        );
        assert!(
            parse_pbtxt(&deep)
                .unwrap_err()
                .reason
                .contains("nested deeper")
        );
        let huge = format!("name: \"{}\"", "x".repeat(2 << 20));
        assert!(
            parse_pbtxt(&huge)
                .unwrap_err()
                .reason
                .contains("over the limit")
        );
        assert!(
            parse_json(&huge)
                .unwrap_err()
                .reason
                .contains("over the limit")
        );
        let nested_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_json(&nested_json).is_err());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = parse_pbtxt("name: \"x\"\nmax_batch_size: \"eight\"\n").unwrap_err();
        assert!(e.reason.contains("line 2"), "{e}");
        let e = parse_pbtxt("name: \"x\"\nmax_batchsize: 8\n").unwrap_err();
        assert!(e.reason.contains("max_batchsize"), "{e}");
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
