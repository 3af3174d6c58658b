//! LD_PRELOAD build of envoy-smc (see issue: preload library).
