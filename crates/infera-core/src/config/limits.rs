//! Upper bounds on every config number that sizes an allocation, a thread pool or a loop.
//!
//! A config can come from a client (the repository load API), so these are checked before
//! anything is allocated; past a bound the load fails with a 400 naming the field and the
//! bound. docs/limits.md lists them for users.

/// Bytes of a config: `config.pbtxt` on disk or the load API's `config` parameter.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Nesting of `{ }` and `[ ]` in config.pbtxt (the text parser recurses per level).
pub const MAX_CONFIG_NESTING: usize = 32;
/// Characters in a model name (it names a folder and appears in metric labels).
pub const MAX_NAME_LEN: usize = 200;
/// Inputs, outputs, parameters, ensemble steps and map entries in one config.
pub const MAX_LIST: usize = 256;
/// Dimensions of one input or output.
pub const MAX_RANK: usize = 16;
/// Elements of one batch item of an input or output (product of its dims).
pub const MAX_ITEM_ELEMENTS: i64 = 1 << 31;
/// `max_batch_size`.
pub const MAX_BATCH_SIZE: i32 = 1 << 16;
/// Entries of `dynamic_batching.preferred_batch_size`.
pub const MAX_PREFERRED_SIZES: usize = 32;
/// `dynamic_batching.priority_levels`.
pub const MAX_PRIORITY_LEVELS: u64 = 64;
/// `dynamic_batching.max_queue_delay_microseconds` (10 s).
pub const MAX_QUEUE_DELAY_US: u64 = 10_000_000;
/// `default_timeout_microseconds` of a queue policy (1 hour).
pub const MAX_QUEUE_TIMEOUT_US: u64 = 3_600_000_000;
/// `max_queue_size` of a queue policy.
pub const MAX_QUEUE_SIZE: u64 = 1 << 20;
/// Instances of one model version, summed over its instance groups (each is a thread and a session).
pub const MAX_INSTANCES: i64 = 64;
/// `intra_op_thread_count` / `inter_op_thread_count` parameters.
pub const MAX_THREADS: usize = 256;
/// Versions served at once by one model.
pub const MAX_VERSIONS: usize = 32;
/// `model_warmup` entries, their `count` and their `batch_size`.
pub const MAX_WARMUPS: usize = 16;
pub const MAX_WARMUP_COUNT: u32 = 100;
/// Bytes of one warm-up sample input (zeros, random or a file).
pub const MAX_WARMUP_BYTES: usize = 64 << 20;
/// Bytes of a parameter value.
pub const MAX_PARAMETER_BYTES: usize = 64 << 10;
/// Bytes of a side file a config names (labels, warm-up data).
pub const MAX_SIDE_FILE_BYTES: u64 = 16 << 20;
/// Ensembles calling ensembles: the run-time guard behind the load-time cycle check.
pub const MAX_ENSEMBLE_DEPTH: usize = 8;
