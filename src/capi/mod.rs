//! The C ABI of libcriu.so.2: thin wrappers that convert arguments, call the Rust API, catch
//! panics and map errors to the return codes documented in criu.h.

use std::os::raw::c_int;

/// Returns the version of CRIU behind the library: major * 10000 + minor * 100 + sublevel.
#[no_mangle]
pub extern "C" fn criu_get_version() -> c_int {
    (crate::VERSION_MAJOR * 10000 + crate::VERSION_MINOR * 100 + crate::VERSION_SUBLEVEL) as c_int
}
