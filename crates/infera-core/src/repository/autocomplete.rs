//! Triton's auto-complete (what config.pbtxt leaves out comes from the model file) and the
//! binding of config inputs and outputs to the model file's, with labels.

use std::path::Path;
use std::sync::Arc;

use infera_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput, model_config::SchedulingChoice,
    model_instance_group::Kind,
};

use super::files;
use super::model::IoDesc;
use crate::backend::Signature;
use crate::config::ConfigError;
use crate::datatype::DataType;

/// Fills what config.pbtxt left out from the model file, as Triton's auto-complete does.
pub fn autocomplete(cfg: &mut ModelConfig, sig: &Signature, default_mbs: i32) {
    let batchable = sig
        .inputs
        .iter()
        .chain(&sig.outputs)
        .all(|io| io.shape.first() == Some(&-1));
    let filling = cfg.input.is_empty() && cfg.output.is_empty();
    if filling && cfg.max_batch_size == 0 && batchable && default_mbs > 0 {
        cfg.max_batch_size = default_mbs;
        if cfg.scheduling_choice.is_none() {
            cfg.scheduling_choice = Some(SchedulingChoice::DynamicBatching(
                ModelDynamicBatching::default(),
            ));
        }
    }
    let strip = cfg.max_batch_size > 0;
    let dims = |shape: &[i64]| -> Vec<i64> {
        if strip {
            shape.get(1..).unwrap_or(&[]).to_vec()
        } else {
            shape.to_vec()
        }
    };
    if cfg.input.is_empty() {
        cfg.input = sig
            .inputs
            .iter()
            .map(|io| ModelInput {
                name: io.name.clone(),
                data_type: io.dtype.to_config() as i32,
                dims: dims(&io.shape),
                ..Default::default()
            })
            .collect();
    }
    if cfg.output.is_empty() {
        cfg.output = sig
            .outputs
            .iter()
            .map(|io| ModelOutput {
                name: io.name.clone(),
                data_type: io.dtype.to_config() as i32,
                dims: dims(&io.shape),
                ..Default::default()
            })
            .collect();
    }
    if cfg.instance_group.is_empty() {
        cfg.instance_group = vec![infera_proto::inference::ModelInstanceGroup {
            name: cfg.name.clone(),
            kind: Kind::Cpu as i32,
            count: 1,
            ..Default::default()
        }];
    }
}

/// Matches config inputs/outputs to the model file's, checking types and shapes.
pub fn bind_io(
    cfg: &ModelConfig,
    sig: &Signature,
    dir: &Path,
) -> Result<(Vec<IoDesc>, Vec<IoDesc>), ConfigError> {
    let batch = cfg.max_batch_size > 0;
    let check = |kind: &str,
                 i: usize,
                 name: &str,
                 dtype: i32,
                 dims: &[i64],
                 reshape: Option<&[i64]>,
                 model: &[crate::backend::IoSpec]|
     -> Result<IoDesc, ConfigError> {
        let field = format!("{kind}[{i}]");
        let (index, spec) = model
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.name"),
                    format!(
                        "the model file has no {kind} '{name}'; it has {:?}",
                        model.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
                    ),
                )
            })?;
        let dt = infera_proto::inference::DataType::try_from(dtype)
            .ok()
            .and_then(DataType::from_config)
            .ok_or_else(|| ConfigError::new(format!("{field}.data_type"), "unknown data type"))?;
        if dt != spec.dtype {
            return Err(ConfigError::new(
                format!("{field}.data_type"),
                format!(
                    "{kind} '{name}' is {} in the config but {} in the model file",
                    dt.to_config().as_str_name(),
                    spec.dtype.to_config().as_str_name()
                ),
            ));
        }
        let inner = reshape.unwrap_or(dims);
        let full: Vec<i64> = batch
            .then_some(-1)
            .into_iter()
            .chain(inner.iter().copied())
            .collect();
        let compatible = full.len() == spec.shape.len()
            && full
                .iter()
                .zip(&spec.shape)
                .all(|(&c, &m)| c == m || c == -1 || m == -1);
        // Models with unknown rank (or scalar outputs) are trusted at run time.
        if !compatible && !spec.shape.is_empty() {
            let hint = if batch && spec.shape.first() != Some(&-1) {
                " (max_batch_size > 0 needs a free first dimension in the model; set max_batch_size: 0 and list the full shape)"
            } else {
                ""
            };
            return Err(ConfigError::new(
                format!("{field}.dims"),
                format!(
                    "{kind} '{name}': the config gives shape {full:?} (batch dim first when max_batch_size > 0) but the model file has {:?}{hint}",
                    spec.shape
                ),
            ));
        }
        Ok(IoDesc {
            name: name.to_string(),
            dtype: dt,
            dims: dims.to_vec(),
            reshape: reshape.map(<[i64]>::to_vec),
            index,
            labels: None,
        })
    };
    let mut inputs = Vec::new();
    for (i, c) in cfg.input.iter().enumerate() {
        let r = c.reshape.as_ref().map(|r| r.shape.as_slice());
        inputs.push(check(
            "input",
            i,
            &c.name,
            c.data_type,
            &c.dims,
            r,
            &sig.inputs,
        )?);
    }
    if let Some(missing) = sig
        .inputs
        .iter()
        .find(|s| !inputs.iter().any(|i| i.name == s.name))
    {
        return Err(ConfigError::new(
            "input",
            format!(
                "the model file needs input '{}', which the config does not list",
                missing.name
            ),
        ));
    }
    let mut outputs = Vec::new();
    for (i, c) in cfg.output.iter().enumerate() {
        let r = c.reshape.as_ref().map(|r| r.shape.as_slice());
        let mut io = check("output", i, &c.name, c.data_type, &c.dims, r, &sig.outputs)?;
        io.labels = read_labels(dir, &format!("output[{i}]"), &c.label_filename)?;
        outputs.push(io);
    }
    Ok((inputs, outputs))
}

/// The labels file an output names (one label per line), if it names one.
/// The labels file an output names (one label per line, inside the model's folder), if any.
pub fn read_labels(
    dir: &Path,
    field: &str,
    file: &str,
) -> Result<Option<Arc<Vec<String>>>, ConfigError> {
    if file.is_empty() {
        return Ok(None);
    }
    files::read_labels(dir, file)
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| ConfigError::new(format!("{field}.label_filename"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::IoSpec;
    use crate::config;

    fn sig() -> Signature {
        Signature {
            inputs: vec![IoSpec {
                name: "x".into(),
                dtype: DataType::F32,
                shape: vec![-1, 4],
            }],
            outputs: vec![IoSpec {
                name: "y".into(),
                dtype: DataType::I64,
                shape: vec![-1],
            }],
        }
    }

    #[test]
    fn autocomplete_adds_batch_dim_and_dynamic_batching() {
        let mut cfg = ModelConfig {
            name: "m".into(),
            ..Default::default()
        };
        autocomplete(&mut cfg, &sig(), 4);
        assert_eq!(cfg.max_batch_size, 4);
        assert_eq!(cfg.input[0].dims, vec![4]);
        assert!(cfg.output[0].dims.is_empty());
        assert!(matches!(
            cfg.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        ));
        let (inputs, _) = bind_io(&cfg, &sig(), Path::new(".")).unwrap();
        assert_eq!(inputs[0].dims, vec![4]);
    }

    #[test]
    fn autocomplete_without_free_batch_dim_keeps_full_shape() {
        let mut s = sig();
        s.inputs[0].shape = vec![2, 4];
        let mut cfg = ModelConfig::default();
        autocomplete(&mut cfg, &s, 4);
        assert_eq!(cfg.max_batch_size, 0);
        assert_eq!(cfg.input[0].dims, vec![2, 4]);
        assert!(cfg.scheduling_choice.is_none());
    }

    #[test]
    fn bind_reports_wrong_type_and_shape() {
        let mut cfg = config::parse_pbtxt(
            "max_batch_size: 8 input [{ name: \"x\" data_type: TYPE_INT32 dims: [4] }] output [{ name: \"y\" data_type: TYPE_INT64 dims: [1] reshape { shape: [] } }]",
        )
        .unwrap();
        let e = bind_io(&cfg, &sig(), Path::new(".")).unwrap_err();
        assert_eq!(e.field, "input[0].data_type");
        assert!(e.reason.contains("TYPE_FP32"), "{e}");
        cfg.input[0].data_type = DataType::F32.to_config() as i32;
        cfg.input[0].dims = vec![5];
        let e = bind_io(&cfg, &sig(), Path::new(".")).unwrap_err();
        assert_eq!(e.field, "input[0].dims");
        cfg.input[0].dims = vec![4];
        bind_io(&cfg, &sig(), Path::new(".")).unwrap();
        cfg.input[0].name = "nope".into();
        assert_eq!(
            bind_io(&cfg, &sig(), Path::new(".")).unwrap_err().field,
            "input[0].name"
        );
    }
}
