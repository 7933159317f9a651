//! Request ids: the client's `X-Request-Id` (HTTP header or gRPC metadata) when it is a sane
//! token, else a new one, unique within the process and unlikely to repeat across restarts.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A client's id longer than this, or with anything but visible ASCII, is replaced.
pub const MAX_LEN: usize = 128;

static PREFIX: OnceLock<u32> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

fn prefix() -> u32 {
    *PREFIX.get_or_init(|| {
        // Start time and pid: distinct across restarts without a syscall per request.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
        nanos ^ std::process::id().rotate_left(16)
    })
}

/// The id to use for a request that came with `given`.
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(g) if is_valid(g) => g.to_string(),
        _ => format!(
            "{:08x}{:012x}",
            prefix(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

/// Whether a client's id can be echoed and logged as is.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_when_sane_and_replaced_otherwise() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        for bad in [
            "",
            "has space",
            "tab\t",
            &"x".repeat(129),
            "ünïcode",
            "new\nline",
        ] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 20);
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
