//! Renders the WGSL kernel templates in wgsl/ into their specialized variants (weight format, tokens per pass, op),
//! checks each with naga (validation, and translation to MSL and HLSL, so Metal and DX12 are checked on every
//! build) and writes them to OUT_DIR with a table the binary embeds (src/gpu/kernels.rs). An invalid kernel is a
//! build error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment, Value};

include!("src/gpu/shader_check.rs");

/// A weight format a kernel can read: dense f32/bf16/f16, or MLX affine `q{bits}g{group}{scale dtype}`.
fn formats() -> Vec<Value> {
    let mut all = Vec::new();
    for dtype in ["f32", "bf16", "f16"] {
        let bytes = if dtype == "f32" { 4 } else { 2 };
        all.push(context! { name => dtype, kind => "dense", dtype, wbytes => bytes, sbytes => bytes });
    }
    for bits in [2, 3, 4, 6, 8] {
        for group in [32, 64, 128] {
            for sdtype in ["bf16", "f16", "f32"] {
                let name = format!("q{bits}g{group}{sdtype}");
                let sbytes = if sdtype == "f32" { 4 } else { 2 };
                all.push(context! { name, kind => "affine", bits, group, sdtype, wbytes => 4, sbytes });
            }
        }
    }
    all
}

/// Every kernel variant: (name, template, context).
fn variants() -> Vec<(String, &'static str, Value)> {
    let mut v = Vec::new();
    for fmt in formats() {
        let f = fmt.get_attr("name").unwrap().to_string();
        let affine = fmt.get_attr("kind").unwrap().as_str() == Some("affine");
        let in_tiles = affine && [2, 4, 8].contains(&fmt.get_attr("bits").unwrap().as_usize().unwrap());
        // Each matrix kernel also as `…_sg`: its lanes reduced with subgroup shuffles (for adapters that have them).
        for subgroups in [false, true] {
            let sg = if subgroups { "_sg" } else { "" };
            // Tokens per pass: 1 (decode; `w`: the wide layout for matrices with few rows; `l`: quantized rows longer
            // than 2,048 columns, x staged 4,096 columns at a time), 8 or 64; each also as a split.
            // 64: tiles of 64 tokens, for 2, 4 and 8 bits (`in_tiles`), whose values never straddle words (no `_sg`
            // variant: it reduces nothing).
            for (nt, layout, split) in [(1, "", false), (1, "w", false), (1, "l", false), (1, "", true), (1, "l", true), (8, "", false), (8, "", true), (64, "", false), (64, "", true)] {
                if (nt == 64 && (!in_tiles || subgroups)) || (layout == "l" && !affine) {
                    continue;
                }
                let name = format!("matmul_{f}_nt{nt}{layout}{}{sg}", if split { "_split" } else { "" });
                let (wide, long) = (layout == "w", layout == "l");
                v.push((name, "matmul.wgsl", context! { fmt => fmt.clone(), nt, subgroups, split, wide, long }));
            }
            // The expert kernels per pair (decode) and, for prefills, `_rows`: 16 pairs of one expert per pass, a
            // thread per row (as the tiles, for 2, 4 and 8 bits, without an `_sg` variant), and `_grouped`: 8 pairs
            // of one expert per pass (where gate_up's or down's format has no `_rows`).
            for (grouped, rows) in [(false, false), (true, false), (true, true)] {
                if rows && (!in_tiles || subgroups) {
                    continue;
                }
                let g = if rows { "_rows" } else if grouped { "_grouped" } else { "" };
                let context = context! { fmt => fmt.clone(), subgroups, grouped, rows };
                v.push((format!("expert_gate_up_{f}{g}{sg}"), "expert_gate_up.wgsl", context.clone()));
                v.push((format!("expert_down_{f}{g}{sg}"), "expert_down.wgsl", context));
            }
        }
        // The weights of a prefill matmul on tensor cores in f16 (`gemm_f16`), for the formats that have tiles.
        if in_tiles {
            v.push((format!("matmul_{f}_dequant"), "dequant.wgsl", context! { fmt => fmt.clone() }));
        }
        v.push((format!("embed_{f}"), "embed.wgsl", context! { fmt }));
    }
    let norms = [
        ("rms_norm", false, ""),
        ("rms_norm_gated", true, ""),
        ("add_rms_norm", false, "add"),
        ("moe_combine_rms_norm", false, "moe"),
        ("moe_combine_shared_rms_norm", false, "moe_shared"),
    ];
    for (name, gated, residual) in norms {
        for subgroups in [false, true] {
            let sg = if subgroups { "_sg" } else { "" };
            v.push((format!("{name}{sg}"), "rms_norm.wgsl", context! { gated, residual, subgroups }));
        }
    }
    for op in ["swiglu", "copy", "kv_append"] {
        v.push((op.to_string(), "elementwise.wgsl", context! { op }));
    }
    for stage in ["partial", "final"] {
        v.push((format!("argmax_{stage}"), "argmax.wgsl", context! { stage }));
    }
    for subgroups in [false, true] {
        v.push((format!("router{}", if subgroups { "_sg" } else { "" }), "router.wgsl", context! { subgroups }));
    }
    v.push(("x_f16".to_string(), "dequant.wgsl", context! {}));
    for split in [false, true] {
        v.push((format!("gemm_f16{}", if split { "_split" } else { "" }), "gemm_f16.wgsl", context! { split }));
    }
    for plain in ["attention_heads", "attention", "attention_combine", "conv1d", "delta_qk_norm", "delta_rule", "delta_step", "group_pairs"] {
        v.push((plain.to_string(), Box::leak(format!("{plain}.wgsl").into_boxed_str()), context! {}));
    }
    v
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let wgsl_dir = root.join("wgsl");
    println!("cargo:rerun-if-changed=wgsl");
    println!("cargo:rerun-if-changed=src/gpu/shader_check.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("kernels");
    std::fs::create_dir_all(&out).unwrap();

    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(true).build();
    env.set_syntax(syntax.unwrap());
    let dir = wgsl_dir.clone();
    env.set_loader(move |name| match std::fs::read_to_string(dir.join(name)) {
        Ok(s) => Ok(Some(s)),
        Err(_) => Ok(None),
    });

    let mut table = String::from("pub static KERNELS: &[Kernel] = &[\n");
    for (name, template, ctx) in variants() {
        let source = env
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| panic!("rendering kernel {name} from wgsl/{template}: {e:#}"));
        let bindings = check_kernel(&source).unwrap_or_else(|e| panic!("kernel {name} (wgsl/{template}) is invalid:\n{e}"));
        write_if_changed(&out.join(format!("{name}.wgsl")), &source);
        let b: Vec<String> = bindings.iter().map(|b| format!("({}, {})", b.binding, b.read_only)).collect();
        writeln!(
            table,
            "    Kernel {{ name: {name:?}, template: {template:?}, source: include_str!(concat!(env!(\"OUT_DIR\"), \"/kernels/{name}.wgsl\")), bindings: &[{}] }},",
            b.join(", ")
        )
        .unwrap();
    }
    table.push_str("];\n");
    write_if_changed(&out.join("table.rs"), &table);
}

fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        std::fs::write(path, contents).unwrap();
    }
}
