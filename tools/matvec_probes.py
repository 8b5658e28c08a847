"""Writes hand-specialized variants of the 4-bit decode matvec (q4, group 64, bf16 scales, one token, rows of
4,096 columns) for `cargo bench --bench gpu_read -- FILE.wgsl ...`, the probe docs/PERF.md's "One x tile per row"
measured, and prints the command that times each. No dependencies beyond Python 3.

    python3 tools/matvec_probes.py DIR [ROWS]          # ROWS: 4096 unless given

The variants bind four buffers: 0 the packed weights as vec4<u32> (a unit of 32 columns per vec4), 1 the scales
then the biases (bf16 halves), 2 x, 3 y; immediates: rows, cols, the scales' and the biases' first half. The
probe fills buffers 0-2 from one random stream, so every variant sees the same data and prints the same output
sum (floe's own kernel, from `floe kernels --dump`, reads one buffer holding all three parts of the matrix: the
same stream, so the same sum). The baseline ("probe") is: 4 rows per thread × 32 lanes × 8 row groups; x staged
in workgroup memory (swizzled, pre-scaled for the float trick), its fill's loads all issued before any store;
values unpacked with the float trick (masked into the mantissa of 2^23); the next unit's loads issued before this
unit's sums; a lane's 4 units unrolled. The others change one thing each, to find what bounds the kernel.
"""
import os
import sys

COLS = 4096
MASKS = "vec4<u32>(15u, 240u, 3840u, 61440u)"


def kernel(rows=4, groups=8, lanes=32, fill="unrolled", depth=1, mode="full", chains=1, convert=False,
           vec4_loads=True, unrolled=True):
    """rows per thread, row groups and lanes per workgroup; fill: the x tile's fill "loop" or "unrolled"; depth:
    units loaded ahead (1, or all of a lane's); mode: "full", "alu" (no weight loads: words made from the index)
    or "mem" (no unpacking: the words folded into one dot per unit); chains: independent FMA chains per unit and
    row; convert: integer-to-float conversions instead of the float trick; vec4_loads: a unit's 4 words in one
    load (else 4); unrolled: a lane's units one after another in the source (else a loop, each unit loaded when
    its turn comes)."""
    units = COLS // 32 // lanes
    o = []
    e = o.append
    e("struct P { rows: u32, cols: u32, s: u32, b: u32, }")
    e("var<immediate> p: P;")
    e(f"@group(0) @binding(0) var<storage, read> wq: array<{'vec4<u32>' if vec4_loads else 'u32'}>;")
    e("@group(0) @binding(1) var<storage, read> sb: array<u32>;")
    e("@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;")
    e("@group(0) @binding(3) var<storage, read_write> y: array<f32>;")
    e(f"var<workgroup> xt: array<vec4<f32>, {COLS // 4}>;")
    e(f"var<workgroup> red: array<f32, {rows * groups * lanes}>;")
    e("fn bf(h: u32) -> f32 { let word = sb[h >> 1u]; return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (h & 1u) == 1u)); }")
    e(f"@compute @workgroup_size({lanes}, {groups})")
    e("fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_size) sg: u32) {")
    e(f"    let row0 = (wid.x * {groups}u + lid.y) * {rows}u;")
    e("    let units = p.cols / 32u;")
    for r in range(rows):
        e(f"    var acc{r} = 0.0;")
        e(f"    let rw{r} = min(row0 + {r}u, p.rows - 1u);")

    def load(k):
        step = k if isinstance(k, str) else f"{k}u"
        e(f"    let u{k} = min(lid.x + {step} * {lanes}u, units - 1u);")
        for r in range(rows):
            if mode == "alu":
                e(f"    let w{r}_{k} = vec4<u32>(rw{r} * 0x9e3779b9u + u{k}) * vec4<u32>(3u, 5u, 7u, 11u);")
            elif vec4_loads:
                e(f"    let w{r}_{k} = wq[rw{r} * units + u{k}];")
            else:
                words = ", ".join(f"wq[(rw{r} * units + u{k}) * 4u + {c}u]" for c in range(4))
                e(f"    let w{r}_{k} = vec4<u32>({words});")
            e(f"    let s{r}_{k} = bf(p.s + rw{r} * (p.cols / 64u) + u{k} / 2u);")
            e(f"    let b{r}_{k} = bf(p.b + rw{r} * (p.cols / 64u) + u{k} / 2u);")

    def fill_tile():
        scale = "vec4<f32>(1.0)" if convert else "vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625)"
        swizzled = lambda i: f"({i} & ~7u) | (({i} & 7u) ^ (({i} >> 3u) & 7u))"
        if fill == "loop":
            e(f"    for (var i = lid.y * {lanes}u + lid.x; i < units * 8u; i += {lanes * groups}u) {{")
            e(f"        xt[{swizzled('i')}] = x[i] * {scale};")
            e("    }")
        else:
            n = COLS // 4 // (lanes * groups)
            for j in range(n):
                e(f"    let xi{j} = lid.y * {lanes}u + lid.x + {j * lanes * groups}u;")
                e(f"    let xv{j} = x[min(xi{j}, units * 8u - 1u)];")
            for j in range(n):
                e(f"    if (xi{j} < units * 8u) {{ xt[{swizzled(f'xi{j}')}] = xv{j} * {scale}; }}")
        e("    workgroupBarrier();")

    def sums(k):
        e("    {")
        e(f"        let u = u{k};")
        step = k if isinstance(k, str) else f"{k}u"
        e(f"        let valid = lid.x + {step} * {lanes}u < units;")
        for j in range(8):
            e(f"        let x{j} = xt[u * 8u + ((u & 7u) ^ {j}u)];")
        powers = "1.0" if convert else "1.0, 16.0, 256.0, 4096.0"
        e(f"        let xs = dot(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), vec4<f32>({powers}));")
        for r in range(rows):
            e("        {")
            if mode == "mem":
                e(f"            let f = bitcast<vec4<f32>>(w{r}_{k} & vec4<u32>(0x3f7f3f7fu));")
                e(f"            acc{r} += select(0.0, dot(f, x0) * s{r}_{k} + b{r}_{k} * xs, valid);")
            else:
                for c in range(chains):
                    e(f"            var qx{c} = 0.0;")
                n = 0
                for c4 in range(4):
                    word = f"w{r}_{k}[{c4}]"
                    if convert:
                        e(f"            let lo{c4} = vec4<f32>((vec4<u32>({word}) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));")
                        e(f"            let hi{c4} = vec4<f32>((vec4<u32>({word}) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));")
                    else:
                        e(f"            let lo{c4} = bitcast<vec4<f32>>((vec4<u32>({word}) & {MASKS}) | vec4<u32>(0x4b000000u)) - vec4<f32>(8388608.0);")
                        e(f"            let hi{c4} = bitcast<vec4<f32>>((vec4<u32>({word} >> 16u) & {MASKS}) | vec4<u32>(0x4b000000u)) - vec4<f32>(8388608.0);")
                    for half, xi in (("lo", 2 * c4), ("hi", 2 * c4 + 1)):
                        for c in "xyzw":
                            chain = n * chains // 32
                            e(f"            qx{chain} = fma({half}{c4}.{c}, x{xi}.{c}, qx{chain});")
                            n += 1
                terms = [f"qx{c}" for c in range(chains)]
                while len(terms) > 1:
                    terms = [f"({terms[i]} + {terms[i + 1]})" for i in range(0, len(terms), 2)]
                e(f"            acc{r} += select(0.0, s{r}_{k} * {terms[0]} + b{r}_{k} * xs, valid);")
            e("        }")
        e("    }")

    if not unrolled:
        fill_tile()
        e(f"    for (var k = 0u; k < {units}u; k++) {{")
        load("k")
        sums("k")
        e("    }")
    elif depth >= units:
        fill_tile()
        for k in range(units):
            load(k)
        for k in range(units):
            sums(k)
    else:
        fill_tile()
        load(0)
        for k in range(units):
            if k + 1 < units:
                load(k + 1)
            sums(k)
    e(f"    let width = min(sg, {lanes}u);")
    for r in range(rows):
        e(f"    var t{r} = acc{r};")
        e(f"    for (var off = width / 2u; off > 0u; off >>= 1u) {{ t{r} += subgroupShuffleXor(t{r}, off); }}")
        e(f"    if (lid.x % width == 0u) {{ red[(lid.y * {rows}u + {r}u) * {lanes}u + lid.x / width] = t{r}; }}")
    e("    workgroupBarrier();")
    e(f"    if (lid.x < {rows}u && row0 + lid.x < p.rows) {{")
    e("        var s = 0.0;")
    e(f"        for (var j = 0u; j < {lanes}u / width; j++) {{ s += red[(lid.y * {rows}u + lid.x) * {lanes}u + j]; }}")
    e("        y[row0 + lid.x] = s;")
    e("    }")
    e("}")
    return "\n".join(o) + "\n"


VARIANTS = {
    "probe": {},
    "fill_loop": dict(fill="loop"),
    "all_units_loaded_first": dict(depth=4),
    "alu_only": dict(mode="alu"),
    "loads_only": dict(mode="mem"),
    "chains4": dict(chains=4),
    "chains8": dict(chains=8),
    "conversions": dict(convert=True),
    "lanes64": dict(lanes=64, groups=4),
    "lanes128": dict(lanes=128, groups=2),
    "rows2": dict(rows=2),
    "rows8": dict(rows=8, groups=4),
    "scalar_loads": dict(vec4_loads=False),
    "loop": dict(unrolled=False),
    "loop_scalar_loads": dict(unrolled=False, vec4_loads=False),
}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out, rows = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    os.makedirs(out, exist_ok=True)
    weights, scales = rows * COLS // 2, rows * COLS // 64 * 2
    for name, knobs in VARIANTS.items():
        path = os.path.join(out, name + ".wgsl")
        with open(path, "w") as f:
            f.write(kernel(**knobs))
        per_group = knobs.get("rows", 4) * knobs.get("groups", 8)
        print(f"cargo bench --bench gpu_read -- {path} grid={(rows + per_group - 1) // per_group},1,1 "
              f"imm={rows},{COLS},0,{rows * COLS // 64} buf={weights}:rand buf={2 * scales}:rand buf={COLS * 4}:rand "
              f"buf={rows * 4}")


if __name__ == "__main__":
    main()
