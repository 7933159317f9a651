//! tract backend: pure Rust, nothing to install. Slower than ONNX Runtime (5-6x on our CNN),
//! so it is the fallback, or chosen with `backend: "tract"`.
//!
//! Free dimensions get symbols before optimisation, so one optimised plan serves every batch size.

use std::path::Path;
use std::sync::Arc;

use infera_core::backend::{Backend, BackendError, IoSpec, LoadOptions, Session, Signature};
use infera_core::tensor::Element;
use infera_core::{DataType, Tensor};
use tract_onnx::prelude::{
    Datum, DatumType, Framework, InferenceFact, InferenceModelExt, TDim, TValue, TVec,
    Tensor as TractTensor, TypedFact, TypedRunnableModel,
};
use tract_onnx::tract_core::model::IntoRunnable;
use tract_onnx::tract_hir::infer::Factoid;

pub struct TractBackend;

fn to_dtype(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        _ => return None,
    })
}

fn spec(name: String, fact: &TypedFact) -> Result<IoSpec, String> {
    Ok(IoSpec {
        dtype: to_dtype(fact.datum_type).ok_or_else(|| {
            format!(
                "'{name}' has type {:?}, which the tract backend cannot serve",
                fact.datum_type
            )
        })?,
        shape: fact
            .shape
            .iter()
            .map(|d| d.to_i64().unwrap_or(-1))
            .collect(),
        name,
    })
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, model_file: &Path, _: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        let fail = |reason: String| BackendError::Load {
            path: model_file.display().to_string(),
            reason,
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(model_file)
            .map_err(|e| fail(format!("{e:#}")))?;
        for i in 0..model.inputs.len() {
            let fact = model
                .input_fact(i)
                .map_err(|e| fail(e.to_string()))?
                .clone();
            let dt = fact
                .datum_type
                .concretize()
                .ok_or_else(|| fail(format!("input {i} has no declared element type")))?;
            if fact.shape.is_open() {
                return Err(fail(format!("input {i} has no declared rank")));
            }
            let dims: TVec<TDim> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(j, d)| {
                    d.concretize().unwrap_or_else(|| {
                        let name = if j == 0 {
                            "N".to_string()
                        } else {
                            format!("d{i}_{j}")
                        };
                        model.symbols.sym(&name).into()
                    })
                })
                .collect();
            model = model
                .with_input_fact(i, InferenceFact::dt_shape(dt, dims))
                .map_err(|e| fail(format!("{e:#}")))?;
        }
        let typed = model.into_optimized().map_err(|e| fail(format!("{e:#}")))?;
        let label = |o, fallback: &str| -> String {
            typed
                .outlet_label(o)
                .map(str::to_string)
                .unwrap_or_else(|| fallback.to_string())
        };
        let mut signature = Signature::default();
        for (i, &o) in typed
            .input_outlets()
            .map_err(|e| fail(e.to_string()))?
            .iter()
            .enumerate()
        {
            let name = typed.node(o.node).name.clone();
            let fact = typed.input_fact(i).map_err(|e| fail(e.to_string()))?;
            signature.inputs.push(spec(name, fact).map_err(fail)?);
        }
        for (i, &o) in typed
            .output_outlets()
            .map_err(|e| fail(e.to_string()))?
            .iter()
            .enumerate()
        {
            let name = label(o, &typed.node(o.node).name);
            let fact = typed.output_fact(i).map_err(|e| fail(e.to_string()))?;
            signature.outputs.push(spec(name, fact).map_err(fail)?);
        }
        let plan = typed.into_runnable().map_err(|e| fail(format!("{e:#}")))?;
        Ok(Box::new(TractSession { plan, signature }))
    }
}

struct TractSession {
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
}

fn run_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Run(format!("tract: {e}"))
}

fn to_tract(t: &Tensor) -> Result<TractTensor, BackendError> {
    fn typed<T: Element + Datum>(t: &Tensor) -> Result<TractTensor, BackendError> {
        let data = t
            .to_vec::<T>()
            .ok_or_else(|| BackendError::Run(format!("tensor is not {}", T::DTYPE)))?;
        TractTensor::from_shape(&t.shape, &data).map_err(run_err)
    }
    match t.dtype {
        DataType::F32 => typed::<f32>(t),
        DataType::F64 => typed::<f64>(t),
        DataType::F16 => typed::<half::f16>(t),
        DataType::U8 => typed::<u8>(t),
        DataType::U16 => typed::<u16>(t),
        DataType::U32 => typed::<u32>(t),
        DataType::U64 => typed::<u64>(t),
        DataType::I8 => typed::<i8>(t),
        DataType::I16 => typed::<i16>(t),
        DataType::I32 => typed::<i32>(t),
        DataType::I64 => typed::<i64>(t),
        DataType::Bool => {
            let data: Vec<bool> = t.to_raw().iter().map(|&b| b != 0).collect();
            TractTensor::from_shape(&t.shape, &data).map_err(run_err)
        }
        DataType::Bf16 | DataType::Bytes => Err(BackendError::Unsupported(format!(
            "the tract backend does not take {} tensors",
            t.dtype
        ))),
    }
}

impl Session for TractSession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let values: TVec<TValue> = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<_, _>>()?;
        let outputs = self.plan.run(values).map_err(run_err)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (out, spec) in outputs.iter().zip(&self.signature.outputs) {
            let dt = to_dtype(out.datum_type()).unwrap_or(spec.dtype);
            // tract stores plain tensors in native order; the protocol is little-endian.
            #[cfg(target_endian = "little")]
            let bytes = out.as_bytes().to_vec();
            #[cfg(not(target_endian = "little"))]
            compile_error!("the tract backend assumes a little-endian machine");
            result.push(Tensor::from_raw(dt, out.shape().to_vec(), bytes.into()).map_err(run_err)?);
        }
        Ok(result)
    }
}
