//! The WGSL kernels build.rs rendered from wgsl/ and checked with naga, embedded in the binary.

/// One rendered kernel variant.
pub struct Kernel {
    /// e.g. `matmul_q4g64bf16_nt1`: the template's name, then its specialization.
    pub name: &'static str,
    /// The template in wgsl/ it was rendered from.
    pub template: &'static str,
    pub source: &'static str,
    /// Its storage-buffer bindings in group 0: (binding, read only).
    pub bindings: &'static [(u32, bool)],
}

include!(concat!(env!("OUT_DIR"), "/kernels/table.rs"));

pub fn find(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}
