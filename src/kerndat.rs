//! What this kernel offers, probed once (CRIU calls this "kerndat"): `criu check`, feature checks.

use crate::engine::Features;

/// Probes the optional features callers ask about.
pub fn features() -> Features {
    Features::default()
}
