//! What can be checked in a config without the model file: names, types, shapes, and the
//! bounds of [`super::limits`] on every number that sizes an allocation, a thread or a loop.

use infera_proto::inference::{
    ModelConfig, ModelQueuePolicy, model_config::SchedulingChoice, model_instance_group::Kind,
    model_version_policy::PolicyChoice,
};

use super::ConfigError;
use super::limits::*;
use crate::datatype::DataType;

fn over(
    field: impl Into<String>,
    what: impl std::fmt::Display,
    limit: impl std::fmt::Display,
) -> ConfigError {
    ConfigError::new(field, format!("{what} is over the limit of {limit}"))
}

/// A model name as the repository accepts it: a plain folder name.
pub fn check_model_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a model name must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a model name has at most {MAX_NAME_LEN} characters"
        ));
    }
    if name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "invalid model name '{}': it names a folder of the repository (no '/', '\\', control characters or leading '.')",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Checks what can be checked without the model file. `dir_name` is the repository folder.
pub fn validate(cfg: &ModelConfig, dir_name: &str) -> Result<(), ConfigError> {
    if !cfg.name.is_empty() && cfg.name != dir_name {
        return Err(ConfigError::new(
            "name",
            format!(
                "'{}' does not match the model directory '{dir_name}'",
                cfg.name.escape_debug()
            ),
        ));
    }
    if cfg.max_batch_size < 0 {
        return Err(ConfigError::new("max_batch_size", "must be >= 0"));
    }
    if cfg.max_batch_size > MAX_BATCH_SIZE {
        return Err(over("max_batch_size", cfg.max_batch_size, MAX_BATCH_SIZE));
    }
    for (field, n) in [
        ("input", cfg.input.len()),
        ("output", cfg.output.len()),
        ("parameters", cfg.parameters.len()),
        ("instance_group", cfg.instance_group.len()),
        ("batch_input", cfg.batch_input.len()),
        ("batch_output", cfg.batch_output.len()),
    ] {
        if n > MAX_LIST {
            return Err(over(field, format!("{n} entries"), MAX_LIST));
        }
    }
    for (k, v) in &cfg.parameters {
        if k.len() > MAX_PARAMETER_BYTES || v.string_value.len() > MAX_PARAMETER_BYTES {
            return Err(over(
                format!("parameters[{}]", truncated(k)),
                "the key or value length",
                format!("{MAX_PARAMETER_BYTES} bytes"),
            ));
        }
    }
    validate_io(cfg)?;
    match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) => {
            if cfg.max_batch_size == 0 {
                return Err(ConfigError::new(
                    "dynamic_batching",
                    "needs max_batch_size > 0 (a model without a batch dimension cannot be batched)",
                ));
            }
            if db.preferred_batch_size.len() > MAX_PREFERRED_SIZES {
                return Err(over(
                    "dynamic_batching.preferred_batch_size",
                    format!("{} sizes", db.preferred_batch_size.len()),
                    MAX_PREFERRED_SIZES,
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
            if db.max_queue_delay_microseconds > MAX_QUEUE_DELAY_US {
                return Err(over(
                    "dynamic_batching.max_queue_delay_microseconds",
                    db.max_queue_delay_microseconds,
                    MAX_QUEUE_DELAY_US,
                ));
            }
            if db.priority_levels > MAX_PRIORITY_LEVELS {
                return Err(over(
                    "dynamic_batching.priority_levels",
                    db.priority_levels,
                    MAX_PRIORITY_LEVELS,
                ));
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
            if let Some(p) = &db.default_queue_policy {
                check_queue_policy("dynamic_batching.default_queue_policy", p)?;
            }
            for (&level, p) in &db.priority_queue_policy {
                if level < 1 || level > db.priority_levels {
                    return Err(ConfigError::new(
                        "dynamic_batching.priority_queue_policy",
                        format!("level {level} is outside 1..={}", db.priority_levels),
                    ));
                }
                check_queue_policy(
                    &format!("dynamic_batching.priority_queue_policy[{level}]"),
                    p,
                )?;
            }
        }
        Some(SchedulingChoice::SequenceBatching(_)) => {
            return Err(ConfigError::new(
                "sequence_batching",
                "stateful sequence batching is not supported yet; use dynamic_batching",
            ));
        }
        Some(SchedulingChoice::EnsembleScheduling(e)) => {
            if e.step.len() > MAX_LIST {
                return Err(over(
                    "ensemble_scheduling.step",
                    format!("{} steps", e.step.len()),
                    MAX_LIST,
                ));
            }
            for (i, s) in e.step.iter().enumerate() {
                if s.input_map.len() > MAX_LIST || s.output_map.len() > MAX_LIST {
                    return Err(over(
                        format!("ensemble_scheduling.step[{i}]"),
                        "the number of mapped tensors",
                        MAX_LIST,
                    ));
                }
                if let Err(why) = check_model_name(&s.model_name) {
                    return Err(ConfigError::new(
                        format!("ensemble_scheduling.step[{i}].model_name"),
                        why,
                    ));
                }
            }
        }
        None => {}
    }
    let mut instances = 0i64;
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
        instances += i64::from(g.count.max(1));
        if instances > MAX_INSTANCES {
            return Err(over(
                format!("instance_group[{i}].count"),
                format!("{instances} instances in all"),
                MAX_INSTANCES,
            ));
        }
    }
    for key in ["intra_op_thread_count", "inter_op_thread_count"] {
        if let Some(p) = cfg.parameters.get(key) {
            match p.string_value.trim().parse::<usize>() {
                Ok(n) if n <= MAX_THREADS => {}
                Ok(n) => return Err(over(format!("parameters[{key}]"), n, MAX_THREADS)),
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("parameters[{key}]"),
                        format!("'{}' is not a whole number", truncated(&p.string_value)),
                    ));
                }
            }
        }
    }
    match cfg
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::Specific(s)) if s.versions.is_empty() => {
            return Err(ConfigError::new(
                "version_policy.specific.versions",
                "lists no versions",
            ));
        }
        Some(PolicyChoice::Specific(s)) if s.versions.len() > MAX_VERSIONS => {
            return Err(over(
                "version_policy.specific.versions",
                format!("{} versions", s.versions.len()),
                MAX_VERSIONS,
            ));
        }
        Some(PolicyChoice::Latest(l)) if l.num_versions as usize > MAX_VERSIONS => {
            return Err(over(
                "version_policy.latest.num_versions",
                l.num_versions,
                MAX_VERSIONS,
            ));
        }
        _ => {}
    }
    validate_warmup(cfg)?;
    refuse_unsupported(cfg)?;
    Ok(())
}

fn validate_io(cfg: &ModelConfig) -> Result<(), ConfigError> {
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
            if name.len() > MAX_NAME_LEN {
                return Err(over(
                    field("name"),
                    format!("a {}-byte name", name.len()),
                    MAX_NAME_LEN,
                ));
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
            check_dims(&field("dims"), dims, true)?;
            if dims.is_empty() && cfg.max_batch_size == 0 && reshape.is_none() {
                return Err(ConfigError::new(
                    field("dims"),
                    format!("{kind} '{name}' needs dims (the shape without the batch dimension)"),
                ));
            }
            if let Some(shape) = reshape {
                check_dims(&field("reshape"), shape, true)?;
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
    Ok(())
}

/// Rank, sizes and element count of a shape; `-1` (a free dimension) only where allowed.
fn check_dims(field: &str, dims: &[i64], free_allowed: bool) -> Result<(), ConfigError> {
    if dims.len() > MAX_RANK {
        return Err(over(field, format!("rank {}", dims.len()), MAX_RANK));
    }
    let mut elements: i64 = 1;
    for &d in dims {
        if d == 0 || d < -1 || (d == -1 && !free_allowed) {
            return Err(ConfigError::new(
                field,
                format!(
                    "has dimension {d}; use positive sizes{}",
                    if free_allowed {
                        " or -1 for variable"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if d > 0 {
            elements = elements.saturating_mul(d);
        }
        if elements > MAX_ITEM_ELEMENTS {
            return Err(over(
                field,
                format!("the element count of {dims:?}"),
                MAX_ITEM_ELEMENTS,
            ));
        }
    }
    Ok(())
}

fn check_queue_policy(field: &str, p: &ModelQueuePolicy) -> Result<(), ConfigError> {
    if p.default_timeout_microseconds > MAX_QUEUE_TIMEOUT_US {
        return Err(over(
            format!("{field}.default_timeout_microseconds"),
            p.default_timeout_microseconds,
            MAX_QUEUE_TIMEOUT_US,
        ));
    }
    if u64::from(p.max_queue_size) > MAX_QUEUE_SIZE {
        return Err(over(
            format!("{field}.max_queue_size"),
            p.max_queue_size,
            MAX_QUEUE_SIZE,
        ));
    }
    Ok(())
}

fn validate_warmup(cfg: &ModelConfig) -> Result<(), ConfigError> {
    if cfg.model_warmup.len() > MAX_WARMUPS {
        return Err(over(
            "model_warmup",
            format!("{} entries", cfg.model_warmup.len()),
            MAX_WARMUPS,
        ));
    }
    for (i, w) in cfg.model_warmup.iter().enumerate() {
        let field = |f: &str| format!("model_warmup[{i}].{f}");
        if w.count > MAX_WARMUP_COUNT {
            return Err(over(field("count"), w.count, MAX_WARMUP_COUNT));
        }
        let max = cfg.max_batch_size.max(1) as u32;
        if w.batch_size > max {
            return Err(ConfigError::new(
                field("batch_size"),
                format!("{} is over max_batch_size ({max})", w.batch_size),
            ));
        }
        if w.inputs.len() > MAX_LIST {
            return Err(over(
                field("inputs"),
                format!("{} inputs", w.inputs.len()),
                MAX_LIST,
            ));
        }
        for (name, input) in &w.inputs {
            check_dims(
                &field(&format!("inputs[{}].dims", truncated(name))),
                &input.dims,
                false,
            )?;
        }
    }
    Ok(())
}

/// Fields that would load code or reach outside the server: refused, not ignored.
fn refuse_unsupported(cfg: &ModelConfig) -> Result<(), ConfigError> {
    if cfg
        .model_operations
        .as_ref()
        .is_some_and(|o| !o.op_library_filename.is_empty())
    {
        return Err(ConfigError::new(
            "model_operations.op_library_filename",
            "custom operator libraries are not loaded by infera",
        ));
    }
    if cfg
        .model_repository_agents
        .as_ref()
        .is_some_and(|a| !a.agents.is_empty())
    {
        return Err(ConfigError::new(
            "model_repository_agents",
            "repository agents are not supported",
        ));
    }
    if cfg
        .model_transaction_policy
        .as_ref()
        .is_some_and(|p| p.decoupled)
    {
        return Err(ConfigError::new(
            "model_transaction_policy.decoupled",
            "decoupled models are not supported",
        ));
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t.escape_debug().to_string()
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
    use crate::config::parse_pbtxt;

    fn bad(text: &str) -> ConfigError {
        validate(&parse_pbtxt(text).unwrap(), "m").unwrap_err()
    }

    #[test]
    fn semantic_errors_name_the_field() {
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
    fn numbers_that_size_allocations_are_bounded() {
        let cases = [
            ("max_batch_size: 1000000", "max_batch_size"),
            (
                "max_batch_size: 4 dynamic_batching { priority_levels: 4294967296 default_priority_level: 1 }",
                "dynamic_batching.priority_levels",
            ),
            (
                "max_batch_size: 4 dynamic_batching { max_queue_delay_microseconds: 18446744073709551615 }",
                "dynamic_batching.max_queue_delay_microseconds",
            ),
            (
                "max_batch_size: 4 dynamic_batching { default_queue_policy { default_timeout_microseconds: 18446744073709551615 } }",
                "dynamic_batching.default_queue_policy.default_timeout_microseconds",
            ),
            (
                "max_batch_size: 4 dynamic_batching { default_queue_policy { max_queue_size: 4294967295 } }",
                "dynamic_batching.default_queue_policy.max_queue_size",
            ),
            (
                "instance_group [{ count: 2147483647 }]",
                "instance_group[0].count",
            ),
            (
                "instance_group [{ count: 40 }, { count: 40 }]",
                "instance_group[1].count",
            ),
            (
                "input [{ name: \"a\" data_type: TYPE_FP32 dims: [65536, 65536] }]",
                "input[0].dims",
            ),
            (
                "input [{ name: \"a\" data_type: TYPE_FP32 dims: [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1] }]",
                "input[0].dims",
            ),
            (
                "parameters { key: \"intra_op_thread_count\" value { string_value: \"100000\" } }",
                "parameters[intra_op_thread_count]",
            ),
            (
                "parameters { key: \"inter_op_thread_count\" value { string_value: \"many\" } }",
                "parameters[inter_op_thread_count]",
            ),
            (
                "version_policy { latest { num_versions: 4000000000 } }",
                "version_policy.latest.num_versions",
            ),
            (
                "model_warmup [{ name: \"w\" count: 1000000 }]",
                "model_warmup[0].count",
            ),
            (
                "model_operations { op_library_filename: [\"/tmp/evil.so\"] }",
                "model_operations.op_library_filename",
            ),
        ];
        for (text, field) in cases {
            let e = bad(text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
        let e = bad("max_batch_size: 1000000");
        assert!(e.reason.contains("limit of 65536"), "{e}");
    }

    #[test]
    fn model_names_are_plain_folder_names() {
        assert!(check_model_name("fashion_mnist").is_ok());
        assert!(check_model_name("a.b-c").is_ok());
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "a\\b",
            "a\nb",
            &"x".repeat(300),
        ] {
            assert!(check_model_name(bad).is_err(), "{bad:?}");
        }
    }
}
