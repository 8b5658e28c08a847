// Checks one rendered WGSL kernel with naga: parse, validate with the capabilities floe's device asks for, and
// translate to MSL and to HLSL, as wgpu does for Metal and DX12 (so a kernel either cannot take fails on every Linux
// build; the drivers' own compilers still run only there). Returns the kernel's bindings.
//
// Shared, through `include!`, by build.rs (every kernel is checked at build time: an invalid shader is a build
// error) and by tests/kernels.rs (which proves it again on the sources the binary embeds).

/// One storage-buffer binding of group 0: its index and whether the kernel only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingInfo {
    pub binding: u32,
    pub read_only: bool,
}

pub fn check_kernel(source: &str) -> Result<Vec<BindingInfo>, String> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let caps = Capabilities::IMMEDIATES
        | Capabilities::SUBGROUP
        | Capabilities::SHADER_FLOAT16
        | Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), caps).validate(&module).map_err(|e| e.emit_to_string(source))?;
    let options = naga::back::msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    naga::back::msl::write_string(&module, &info, &options, &naga::back::msl::PipelineOptions::default())
        .map_err(|e| format!("MSL translation failed: {e}"))?;
    // Shader model 6.2: wave operations (subgroups) and 16-bit types; immediates as root constants, as wgpu's DX12
    // backend binds them. Kernels on cooperative matrices (tensor cores) are not translated: wgpu's DX12 backend
    // offers no cooperative matrices, so they run only where an adapter has them, beside a kernel that runs anywhere.
    let cooperative = module.types.iter().any(|(_, ty)| matches!(ty.inner, naga::TypeInner::CooperativeMatrix { .. }));
    let options = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        immediates_target: Some(naga::back::hlsl::BindTarget::default()),
        ..Default::default()
    };
    let mut hlsl = String::new();
    if !cooperative {
        naga::back::hlsl::Writer::new(&mut hlsl, &options, &naga::back::hlsl::PipelineOptions::default())
            .write(&module, &info, None)
            .map_err(|e| format!("HLSL translation failed: {e}"))?;
    }
    let mut bindings = Vec::new();
    for (_, var) in module.global_variables.iter() {
        if let (Some(rb), naga::AddressSpace::Storage { access }) = (&var.binding, var.space) {
            if rb.group != 0 {
                return Err(format!("binding {} is in group {}; floe kernels use group 0 only", rb.binding, rb.group));
            }
            bindings.push(BindingInfo { binding: rb.binding, read_only: !access.contains(naga::StorageAccess::STORE) });
        }
    }
    bindings.sort_by_key(|b| b.binding);
    Ok(bindings)
}
