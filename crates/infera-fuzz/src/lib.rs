//! Fuzz targets: each takes arbitrary bytes and runs one parser a client can reach. They
//! must never panic, and must not allocate much more than their input (the tests in
//! `tests/fuzz.rs` check both, over a committed seed corpus and its mutations).
//!
//! * [`infer_body`]: 4 bytes (little-endian header length, 0 = JSON only), then an HTTP
//!   infer body, through the v2 codec;
//! * [`config_pbtxt`] / [`config_json`]: a model config, parsed and validated;
//! * [`bytes_tensor`]: 2 bytes (declared element count), then BYTES wire data;
//! * [`image`]: an encoded image through the preprocessing pipeline.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use infera_core::{DataType, ServeError, Tensor};

pub fn infer_body(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let header = match u32::from_le_bytes(*len) as usize {
        0 => None,
        n => Some(n),
    };
    let raw = || {
        Ok(infera_http::RawInput {
            name: "x".into(),
            dtype: DataType::F32,
            shape: vec![-1, 4],
        })
    };
    let any = |_: &str, _: DataType, _: &[usize]| -> Result<(), ServeError> { Ok(()) };
    let _ = infera_http::decode_request("m", None, header, Bytes::copy_from_slice(body), raw, &any);
    // As the real server does: the declared shape must fit a model before data is read.
    let small = |_: &str, _: DataType, shape: &[usize]| -> Result<(), ServeError> {
        if shape.iter().product::<usize>() <= 1024 {
            Ok(())
        } else {
            Err(ServeError::invalid("too big"))
        }
    };
    let _ =
        infera_http::decode_request("m", None, header, Bytes::copy_from_slice(body), raw, &small);
}

pub fn config_pbtxt(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = infera_core::config::parse_pbtxt(text)
    {
        let _ = infera_core::config::validate(&cfg, "m");
        let _ = infera_core::config::to_json(&cfg);
    }
}

pub fn config_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = infera_core::config::parse_json(text)
    {
        let _ = infera_core::config::validate(&cfg, "m");
    }
}

pub fn bytes_tensor(data: &[u8]) {
    let Some((n, wire)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = u16::from_le_bytes(*n) as usize;
    if let Ok(t) = Tensor::from_raw(DataType::Bytes, vec![n], Bytes::copy_from_slice(wire)) {
        assert_eq!(t.to_raw().as_ref(), wire, "BYTES must round-trip");
    }
}

/// The pipeline the fuzzer drives: RGB 32×32, fill (scales both ways), 1 M pixel limit.
fn pipeline() -> &'static infera_backend_image::Pipeline {
    static P: OnceLock<infera_backend_image::Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let params: BTreeMap<String, String> = [
            ("width", "32"),
            ("height", "32"),
            ("resize", "fill"),
            ("max_pixels", "1000000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        infera_backend_image::Pipeline::from_parameters(&params).expect("valid parameters")
    })
}

pub fn image(data: &[u8]) {
    let mut out = Vec::new();
    if pipeline().process(data, &mut out).is_ok() {
        assert_eq!(out.len(), 3 * 32 * 32);
    }
}
