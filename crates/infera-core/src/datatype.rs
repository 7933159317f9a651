//! Tensor element types, with their protocol ("FP32") and config ("TYPE_FP32") spellings.

use std::fmt;

use infera_proto::inference::DataType as ConfigType;

/// An element type of the KServe v2 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bf16,
    /// Variable-length byte strings; `TYPE_STRING` in model configs.
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// The protocol name, e.g. `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element; `None` for variable-length BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::Bf16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn to_config(self) -> ConfigType {
        match self {
            DataType::Bool => ConfigType::TypeBool,
            DataType::U8 => ConfigType::TypeUint8,
            DataType::U16 => ConfigType::TypeUint16,
            DataType::U32 => ConfigType::TypeUint32,
            DataType::U64 => ConfigType::TypeUint64,
            DataType::I8 => ConfigType::TypeInt8,
            DataType::I16 => ConfigType::TypeInt16,
            DataType::I32 => ConfigType::TypeInt32,
            DataType::I64 => ConfigType::TypeInt64,
            DataType::F16 => ConfigType::TypeFp16,
            DataType::F32 => ConfigType::TypeFp32,
            DataType::F64 => ConfigType::TypeFp64,
            DataType::Bf16 => ConfigType::TypeBf16,
            DataType::Bytes => ConfigType::TypeString,
        }
    }

    pub fn from_config(t: ConfigType) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.to_config() == t)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
            assert_eq!(DataType::from_config(d.to_config()), Some(d));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
        assert_eq!(DataType::from_config(ConfigType::TypeInvalid), None);
    }
}
