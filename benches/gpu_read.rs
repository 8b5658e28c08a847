//! What a plain WGSL read reaches on this GPU: the bound that memory-bound kernels are measured against
//! (docs/PERF.md), over 1 GiB and over 9.4 MB (the bytes of a 4096×4096 4-bit matrix). And a probe for trying
//! kernel variants without rebuilding floe: `cargo bench --bench gpu_read -- FILE.wgsl grid=X,Y,Z imm=A,B,..
//! buf=BYTES[:rand|:f32=V] .. [iters=N] [trusted=1]` times FILE's `main` over those bindings (read-only or
//! read-write as the kernel declares them; immediates as u32s) and prints GPU microseconds per dispatch, and the
//! sum and absolute sum of the last binding's f32s afterwards (variants of one kernel over the same `rand` fills
//! must agree).
//!
//! Times are GPU timestamps: `pass` brackets N dependent dispatches (one after another, as in a forward pass),
//! `each` brackets every dispatch (how `floe bench --profile` times; it adds ~6 µs per dispatch on the H100).

use std::time::Duration;

mod check {
    include!("../src/gpu/shader_check.rs");
}

const READ: &str = "
struct P { n: u32, }
var<immediate> p: P;
@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
// Four 16-byte loads in flight per thread, folded so that none can be optimized away.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 256u;
    var acc = vec4<u32>(0u);
    for (var i = g.x; i < p.n; i += 4u * stride) {
        let v0 = a[i];
        let v1 = a[min(i + stride, p.n - 1u)];
        let v2 = a[min(i + 2u * stride, p.n - 1u)];
        let v3 = a[min(i + 3u * stride, p.n - 1u)];
        acc += (v0 ^ v1) + (v2 ^ v3);
    }
    if (acc.x == 0x12345678u && acc.y == 7u) {
        o[0] = acc.z;
    }
}";

struct Probe {
    source: String,
    grid: (u32, u32, u32),
    immediates: Vec<u32>,
    /// Bytes and fill of each binding.
    buffers: Vec<(u64, String)>,
    iters: u32,
    trusted: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let Some((device, queue, name)) = open() else {
        println!("no GPU adapter: nothing to measure");
        return;
    };
    println!("GPU: {name}");
    if let Some(file) = args.first() {
        let mut probe = Probe {
            source: std::fs::read_to_string(file).expect("reading the kernel"),
            grid: (1, 1, 1),
            immediates: vec![],
            buffers: vec![],
            iters: 200,
            trusted: false,
        };
        for arg in &args[1..] {
            let (key, value) = arg.split_once('=').expect("arguments are key=value");
            let numbers = || value.split(',').map(|v| v.parse::<u32>().expect("a number")).collect::<Vec<_>>();
            match key {
                "grid" => probe.grid = (numbers()[0], numbers()[1], numbers()[2]),
                "imm" => probe.immediates = numbers(),
                "buf" => {
                    let (bytes, fill) = value.split_once(':').unwrap_or((value, "zero"));
                    probe.buffers.push((bytes.parse().expect("buffer bytes"), fill.to_string()));
                }
                "iters" => probe.iters = value.parse().expect("a number"),
                "trusted" => probe.trusted = value == "1",
                _ => panic!("unknown argument {key}"),
            }
        }
        let (pass, each, output) = time(&device, &queue, &probe);
        let (sum, abs) = output.iter().fold((0.0f64, 0.0f64), |(s, a), &v| (s + v as f64, a + v.abs() as f64));
        println!("pass: {:.2} us, each: {:.2} us; output sum {sum:.6e}, |sum| {abs:.6e}", pass.as_secs_f64() * 1e6, each.as_secs_f64() * 1e6);
        return;
    }
    let max = device.limits().max_storage_buffer_binding_size.min(1 << 30) & !15;
    for bytes in [max, 9_437_184] {
        let n = (bytes / 16) as u32;
        let probe = Probe {
            source: READ.into(),
            grid: ((n / 1024).clamp(1, 65535), 1, 1),
            immediates: vec![n],
            buffers: vec![(bytes, "rand".into()), (16, "zero".into())],
            iters: if bytes > 1 << 28 { 20 } else { 200 },
            trusted: false,
        };
        let (pass, each, _) = time(&device, &queue, &probe);
        let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        println!(
            "plain read of {:.1} MB: {:.2} us = {:.0} GB/s one after another; {:.2} us = {:.0} GB/s timed each",
            bytes as f64 / 1e6,
            pass.as_secs_f64() * 1e6,
            gbs(pass),
            each.as_secs_f64() * 1e6,
            gbs(each)
        );
    }
}

fn open() -> Option<(wgpu::Device, wgpu::Queue, String)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| a.get_info().device_type != wgpu::DeviceType::DiscreteGpu);
    let needed = wgpu::Features::IMMEDIATES | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    let adapter = adapters.into_iter().find(|a| a.features().contains(needed))?;
    let name = adapter.get_info().name;
    for c in adapter.cooperative_matrix_properties() {
        println!("cooperative matrix {}x{}x{} {:?} x {:?}", c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type);
    }
    let optional = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16 | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let features = needed | (adapter.features() & optional);
    let descriptor = wgpu::DeviceDescriptor {
        required_features: features,
        required_limits: adapter.limits(),
        // SAFETY: only asked for by kernels given by hand to this bench, which declare `enable wgpu_cooperative_matrix`.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).ok()?;
    Some((device, queue, name))
}

/// GPU time per dispatch: (N dispatches bracketed by one pair of timestamps, each bracketed by its own, the last
/// binding's contents afterwards as f32s), the best
/// of rounds repeated for at least a second (3 at least): the GPU's clock ramps up from idle over ~0.4 s
/// (docs/PERF.md, "Time to first token and the GPU's clock"), and a round of small dispatches lasts a millisecond.
fn time(device: &wgpu::Device, queue: &wgpu::Queue, probe: &Probe) -> (Duration, Duration, Vec<f32>) {
    let descriptor = wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(probe.source.as_str().into()) };
    // SAFETY: trusted=1 is asked for by hand, to measure what naga's bounds checks cost; robust buffer access
    // still bounds every access on Vulkan.
    let module = match probe.trusted {
        true => unsafe { device.create_shader_module_trusted(descriptor, wgpu::ShaderRuntimeChecks::unchecked()) },
        false => device.create_shader_module(descriptor),
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let buffers: Vec<wgpu::Buffer> = probe
        .buffers
        .iter()
        .map(|(bytes, fill)| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: *bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            // Random words with the exponent bits of bf16/f32 kept finite.
            let words = (*bytes / 4) as usize;
            let data: Vec<u32> = match fill.strip_prefix("f32=") {
                Some(v) => vec![v.parse::<f32>().expect("a float").to_bits(); words],
                None if fill == "rand" => (0..words)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u32 & 0x3f7f_3f7f
                    })
                    .collect(),
                None => vec![0; words],
            };
            for (i, piece) in data.chunks(1 << 24).enumerate() {
                queue.write_buffer(&buffer, (i << 26) as u64, bytemuck::cast_slice(piece));
            }
            buffer
        })
        .collect();
    let declared = check::check_kernel(&probe.source).unwrap_or_else(|e| panic!("the kernel is invalid:\n{e}"));
    let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..buffers.len())
        .map(|i| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: declared.iter().any(|b| b.binding == i as u32 && b.read_only) },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 64,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bound: Vec<wgpu::BindGroupEntry> =
        buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &bound });
    let mut immediates = probe.immediates.clone();
    immediates.resize(16, 0);
    let n = probe.iters;
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count: 2 * n + 2 });
    let bytes = (2 * n as u64 + 2) * 8;
    let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
    let resolved = device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false });
    let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
    let read = device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false });
    let period = queue.get_timestamp_period() as f64 * 1e-9;
    let mut best = [f64::MAX; 2];
    let start = std::time::Instant::now();
    for round in 0.. {
        if round >= 3 && start.elapsed() > Duration::from_secs(1) {
            break;
        }
        for (mode, best) in best.iter_mut().enumerate() {
            let each = mode == 1;
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * n),
                    end_of_pass_write_index: Some(2 * n + 1),
                };
                let descriptor = wgpu::ComputePassDescriptor { label: None, timestamp_writes: (!each).then_some(writes) };
                let mut pass = encoder.begin_compute_pass(&descriptor);
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.set_immediates(0, bytemuck::cast_slice(&immediates));
                for i in 0..n {
                    if each {
                        pass.write_timestamp(&queries, 2 * i);
                    }
                    pass.dispatch_workgroups(probe.grid.0, probe.grid.1, probe.grid.2);
                    if each {
                        pass.write_timestamp(&queries, 2 * i + 1);
                    }
                }
            }
            encoder.resolve_query_set(&queries, 0..2 * n + 2, &resolved, 0);
            encoder.copy_buffer_to_buffer(&resolved, 0, &read, 0, bytes);
            queue.submit([encoder.finish()]);
            read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            device.poll(wgpu::PollType::wait_indefinitely()).expect("waiting for the GPU");
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&read.slice(..).get_mapped_range().expect("mapped"));
            read.unmap();
            let n = n as usize;
            let total = match each {
                false => ticks[2 * n + 1].saturating_sub(ticks[2 * n]),
                true => (0..n).map(|i| ticks[2 * i + 1].saturating_sub(ticks[2 * i])).sum(),
            };
            *best = best.min(total as f64 * period / n as f64);
        }
    }
    let output = buffers.last().expect("at least one binding");
    let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
    let read = device.create_buffer(&wgpu::BufferDescriptor { label: None, size: output.size(), usage, mapped_at_creation: false });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(output, 0, &read, 0, output.size());
    queue.submit([encoder.finish()]);
    read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely()).expect("waiting for the GPU");
    let values = bytemuck::pod_collect_to_vec(&read.slice(..).get_mapped_range().expect("mapped"));
    (Duration::from_secs_f64(best[0]), Duration::from_secs_f64(best[1]), values)
}
