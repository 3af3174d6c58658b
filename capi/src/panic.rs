//! The panic boundary: no panic unwinds into C. Each exported function names what a panic turns
//! into (its return value on failure).

/// Runs `f`; a panic becomes `on_panic` (and a log line) instead of unwinding into the caller.
pub(crate) fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("envoy-smc: internal error caught at the C boundary: {msg}");
            on_panic
        }
    }
}
