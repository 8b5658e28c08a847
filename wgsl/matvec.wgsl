{# Jinja macros for the row-parallel matrix-vector kernels (matmul, expert_gate_up, expert_down); the includer
   imports them with `{% from "matvec.wgsl" import ... %}` and includes weights.wgsl for the format's loaders.

   The layout: a workgroup of LANES × GROUPS threads; each thread owns `rows` consecutive rows and sums every
   LANES-th step of them, for `nt` tokens; `reduce` then adds the lanes' partial sums up in workgroup memory (no
   subgroup width assumed). A step is a unit of 32 columns, or, where the kernel asks for `words` and the format
   allows (2, 4 and 8 bits, whose values never straddle words), one packed word (32/b values), so that the lanes
   of one load read consecutive words and consecutive slices of x. Everything per step is unrolled here, because naga
   emits loops the GPU compiler does not unroll, and an array indexed in a loop would live in slow local memory. #}

{# Whether a kernel that asks for `words` reads format `fmt` a word per step. #}
{% macro by_words(fmt, words) %}{{ "1" if words and fmt.kind == "affine" and fmt.bits in [2, 4, 8] else "" }}{% endmacro %}

{# The workgroup is LANES × GROUPS threads (the kernel's @workgroup_size must say the same). #}
{% macro declarations(slots, lanes=16, groups=8) %}
const LANES: u32 = {{ lanes }}u;
const GROUPS: u32 = {{ groups }}u;
const SLOTS: u32 = {{ slots }}u;

var<workgroup> partial: array<f32, {{ lanes * groups * slots }}>;
{% endmacro %}

{# The 32 values q0..q31 of a unit of an affine format, unpacked from its words {words}0{suffix} .. {words}{bits - 1}{suffix}. #}
{% macro unit_values(fmt, words, suffix="") %}
{% for i in range(32) %}
{% set bit = i * fmt.bits %}
{% set word = bit // 32 %}
{% set shift = bit % 32 %}
{% if shift + fmt.bits <= 32 %}
            let q{{ i }} = f32(({{ words }}{{ word }}{{ suffix }} >> {{ shift }}u) & MASK);
{% else %}
            let q{{ i }} = f32((({{ words }}{{ word }}{{ suffix }} >> {{ shift }}u) | ({{ words }}{{ word + 1 }}{{ suffix }} << {{ 32 - shift }}u)) & MASK);
{% endif %}
{% endfor %}
{% endmacro %}

{# qx = Σ q_i · x_i over a unit, its x in the vec4s x0..x7. #}
{% macro unit_dot() %}
                var qx = q0 * x0.x;
{% for i in range(1, 32) %}
                qx = fma(q{{ i }}, x{{ i // 4 }}.{{ "xyzw"[i % 4] }}, qx);
{% endfor %}
{% endmacro %}

{# Adds Σ_c w[row, c]·x[c] over step `u` of matrix `mat` (a Mat) to acc{slot}_{n}, for each token n < nt whose
   input row starts at xo{n}, when `valid`. `row` and `u` must be in range (callers clamp them and pass
   valid = false for a clamped step), so every load can be issued before anything is known. #}
{% macro accumulate(fmt, mat, row, slot, nt, valid="true", words=false) %}
        {
{% if by_words(fmt, words) %}
{% set vals = 32 // fmt.bits %}
{#  Word u of the row holds columns u·vals ..; its group's scale and bias apply to all of them. Values are
    unpacked without shifts or integer-to-float conversions (on the H100 this measured as fast as converting, with
    fewer instructions): value i sits at bit p = (i·bits) mod 16 of the word's low or high half; masked in place
    and ORed into the mantissa of 2²³ it is the float 2²³ + q·2^p, so one subtraction gives q·2^p exactly, and
    x·2^-p (also exact) makes each product q·x. #}
            let wv = w[{{ mat }}.w + ({{ row }}) * ({{ mat }}.cols / 32u * BITS) + u];
            let hv = wv >> 16u;
            let g = ({{ row }}) * ({{ mat }}.cols / GROUP) + u * {{ vals }}u / GROUP;
            let scale = {{ fmt.sdtype }}_at({{ mat }}.s + g);
            let bias = {{ fmt.sdtype }}_at({{ mat }}.b + g);
{% for i in range(vals) %}
{% set bit = i * fmt.bits %}
            let q{{ i }} = bitcast<f32>(({{ "hv" if bit >= 16 else "wv" }} & {{ (2 ** fmt.bits - 1) * 2 ** (bit % 16) }}u) | 0x4b000000u) - 8388608.0;
{% endfor %}
{% for n in range(nt) %}
            {
                let xb = (xo{{ n }} + u * {{ vals }}u) / 4u;
{% for j in range(vals // 4) %}
                let x{{ j }} = x[xb + {{ j }}u];
                let xp{{ j }} = x{{ j }} * vec4<f32>({% for c in range(4) %}{{ 1.0 / 2 ** (((4 * j + c) * fmt.bits) % 16) }}{{ ", " if c < 3 }}{% endfor %});
{% endfor %}
                var qx = q0 * xp0.x;
{% for i in range(1, vals) %}
                qx = fma(q{{ i }}, xp{{ i // 4 }}.{{ "xyzw"[i % 4] }}, qx);
{% endfor %}
{% if vals == 4 %}
                let xs = dot(x0, vec4<f32>(1.0));
{% elif vals == 8 %}
                let xs = dot(x0 + x1, vec4<f32>(1.0));
{% else %}
                let xs = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
{% endif %}
                acc{{ slot }}_{{ n }} += select(0.0, scale * qx + bias * xs, {{ valid }});
            }
{% endfor %}
{% elif fmt.kind == "affine" %}
            let base = {{ mat }}.w + ({{ row }}) * ({{ mat }}.cols / 32u * BITS) + u * BITS;
            let g = ({{ row }}) * ({{ mat }}.cols / GROUP) + u * 32u / GROUP;
            let scale = {{ fmt.sdtype }}_at({{ mat }}.s + g);
            let bias = {{ fmt.sdtype }}_at({{ mat }}.b + g);
{% for k in range(fmt.bits) %}
            let w{{ k }} = w[base + {{ k }}u];
{% endfor %}
{{ unit_values(fmt, "w") }}
{% for n in range(nt) %}
            {
                let xb = (xo{{ n }} + u * 32u) / 4u;
{% for j in range(8) %}
                let x{{ j }} = x[xb + {{ j }}u];
{% endfor %}
{{ unit_dot() }}
                let xs = dot(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), vec4<f32>(1.0));
                acc{{ slot }}_{{ n }} += select(0.0, scale * qx + bias * xs, {{ valid }});
            }
{% endfor %}
{% else %}
            let base = {{ mat }}.w + ({{ row }}) * {{ mat }}.cols + u * 32u;
            let remaining = {{ mat }}.cols - u * 32u;
{% for i in range(32) %}
            let q{{ i }} = select(0.0, {{ fmt.dtype }}_at(base + {{ i }}u), {{ i }}u < remaining);
{% endfor %}
{% for n in range(nt) %}
            {
                let xb = xo{{ n }} + u * 32u;
                var qx = 0.0;
{% for i in range(32) %}
                qx = fma(q{{ i }}, select(0.0, x[xb + {{ i }}u], {{ i }}u < remaining), qx);
{% endfor %}
                acc{{ slot }}_{{ n }} += select(0.0, qx, {{ valid }});
            }
{% endfor %}
{% endif %}
        }
{% endmacro %}

{# The loop over this thread's steps of a format-`fmt` matrix, calling the body with `u` and `valid` set: a unit
   per iteration, or words worth 32 values (b words of b bits), as many loads in flight either way. (On the H100,
   two units per iteration measured slower than one with two rows per thread.) #}
{% macro for_units(fmt, words=false) %}
{% set per_iteration = fmt.bits if by_words(fmt, words) else 1 %}
    let units = {{ "p.cols / 32u * BITS" if by_words(fmt, words) else "(p.cols + 31u) / 32u" }};
    for (var u0 = lid.x; u0 < units; u0 += {{ per_iteration }}u * LANES) {
{% for k in range(per_iteration) %}
        {
            let u = min(u0 + {{ k }}u * LANES, units - 1u);
            let valid = u0 + {{ k }}u * LANES < units;
{{ caller() }}
        }
{% endfor %}
    }
{% endmacro %}

{# Decode of an affine format (one token, its x row starting at xo0), x staged in workgroup memory: read from
   global memory, a warp's load of x touched 32 lines (its lanes sit on units 128 bytes apart), and x loads, not
   weights, bounded the kernel (docs/PERF.md, "x in workgroup memory"). The columns go in chunks of TILE_UNITS
   units; in each, lane l takes units l, l + LANES, .. In the tile, vec4 j of unit u is stored at (u·8) | (j ^ (u
   mod 8)), so that the 8 lanes of a quarter warp, on 8 consecutive units, read 8 different banks. x_tile declares
   the tile (module scope); tiled_units runs the chunks and adds the sum of `rows[r]` (a Mat and a row expression,
   in range) to acc{r}_0. Each thread fills `fill` vec4s of a chunk's tile (TILE_UNITS · 8 / threads, rounded up),
   all loads issued before any store: a loop waited for each load in turn (docs/PERF.md, "One x tile per row").
   `preload`: chunks of LANES units, whose weights each thread loads before it helps fill
   the tile, so that a chunk costs one round of memory latency instead of the fill's and then the loads' (the
   expert down of 512 columns, one unit per lane: −13%); where a lane has several units (chunks of 64), loading
   them all first measured slower (docs/PERF.md, "Weight loads before the tile"). `steps`: chunks of exactly
   `steps` units per lane, unrolled, each unit's loads issued before the sums of the one before (one unit ahead,
   after the tile's fill): on the H200 4,096² went 8.63 → 8.36 µs with 4 steps, but expert gate_up (4 rows × 4
   steps) 14.7 → 17.8 µs and the 2,048-column input projections +3.5% with 2 (docs/PERF.md, "Units one ahead"),
   so only the 4,096-column tile uses it. Otherwise a loop, a unit per iteration. #}
{% macro x_tile(units) %}
const TILE_UNITS: u32 = {{ units }}u;
var<workgroup> xt: array<vec4<f32>, {{ units * 8 }}>;
{% endmacro %}

{% macro tiled_units(fmt, rows, fill, preload=false, steps=0) %}
    const_assert TILE_UNITS * 8u <= {{ fill }}u * LANES * GROUPS;
    let units = p.cols / 32u;
    for (var c0 = 0u; c0 < units; c0 += TILE_UNITS) {
        let cend = min(units, c0 + TILE_UNITS);
{% if preload %}
        const_assert TILE_UNITS == LANES;
{{ tile_unit_loads(fmt, rows, 0) }}
{% endif %}
{% for j in range(fill) %}
        let xi{{ j }} = lid.y * LANES + lid.x + {{ j }}u * LANES * GROUPS;
        let xv{{ j }} = x[xo0 / 4u + c0 * 8u + min(xi{{ j }}, (cend - c0) * 8u - 1u)];
{% endfor %}
        workgroupBarrier();
{% for j in range(fill) %}
        if (xi{{ j }} < (cend - c0) * 8u) {
            xt[(xi{{ j }} & ~7u) | ((xi{{ j }} & 7u) ^ ((xi{{ j }} >> 3u) & 7u))] = xv{{ j }};
        }
{% endfor %}
        workgroupBarrier();
{% if preload %}
{{ tile_unit_sums(fmt, rows, 0) }}
{% elif steps %}
        const_assert TILE_UNITS == {{ steps }}u * LANES;
{{ tile_unit_loads(fmt, rows, 0) }}
{% for k in range(1, steps) %}
{{ tile_unit_loads(fmt, rows, k) }}
{{ tile_unit_sums(fmt, rows, k - 1) }}
{% endfor %}
{{ tile_unit_sums(fmt, rows, steps - 1) }}
{% else %}
        for (var u = c0 + lid.x; u < cend; u += LANES) {
            let u0 = u;
            let valid0 = true;
{{ tile_unit_loads(fmt, rows, 0, false) }}
{{ tile_unit_sums(fmt, rows, 0) }}
        }
{% endif %}
    }
{% endmacro %}

{# tiled_units' loads of this lane's step `k` of the chunk (unit u{k} = c0 + lid.x + k·LANES, clamped into the
   chunk, and valid{k}, unless `define` is false): words w{r}_{j}s{k}, scale{r}s{k}, bias{r}s{k} of each of
   `rows` ... #}
{% macro tile_unit_loads(fmt, rows, k, define=true) %}
{% if define %}
        let u{{ k }} = min(c0 + lid.x + {{ k }}u * LANES, cend - 1u);
        let valid{{ k }} = c0 + lid.x + {{ k }}u * LANES < cend;
{% endif %}
{% for mat, row in rows %}
{% set r = loop.index0 %}
        let base{{ r }}s{{ k }} = {{ mat }}.w + ({{ row }}) * ({{ mat }}.cols / 32u * BITS) + u{{ k }} * BITS;
        let g{{ r }}s{{ k }} = ({{ row }}) * ({{ mat }}.cols / GROUP) + u{{ k }} * 32u / GROUP;
        let scale{{ r }}s{{ k }} = {{ fmt.sdtype }}_at({{ mat }}.s + g{{ r }}s{{ k }});
        let bias{{ r }}s{{ k }} = {{ fmt.sdtype }}_at({{ mat }}.b + g{{ r }}s{{ k }});
{% for j in range(fmt.bits) %}
        let w{{ r }}_{{ j }}s{{ k }} = w[base{{ r }}s{{ k }} + {{ j }}u];
{% endfor %}
{% endfor %}
{% endmacro %}

{# ... and their sums with unit u{k} of x in the tile, added to acc{r}_0 when valid{k}. #}
{% macro tile_unit_sums(fmt, rows, k) %}
        {
            let u = u{{ k }};
{% for j in range(8) %}
            let x{{ j }} = xt[(u - c0) * 8u + ((u & 7u) ^ {{ j }}u)];
{% endfor %}
            let xs = dot(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), vec4<f32>(1.0));
{% for mat, row in rows %}
{% set r = loop.index0 %}
            {
{{ unit_values(fmt, "w" ~ r ~ "_", "s" ~ k) }}
{{ unit_dot() }}
                acc{{ r }}_0 += select(0.0, scale{{ r }}s{{ k }} * qx + bias{{ r }}s{{ k }} * xs, valid{{ k }});
            }
{% endfor %}
        }
{% endmacro %}

{# Declares the accumulators acc{s}_{n}. #}
{% macro accumulators(slots, nt) %}
{% for s in range(slots) %}
{% for n in range(nt) %}
    var acc{{ s }}_{{ n }} = 0.0;
{% endfor %}
{% endfor %}
{% endmacro %}

{# Sums every accumulator across the lanes: slot s, token n of this thread's row group ends in
   partial[(lid.y · SLOTS + s · nt + n) · LANES]. Reached by every thread of the workgroup. With subgroups: shuffles
   within each subgroup (a row group's lanes are consecutive invocations, so lanes lid.x ^ offset stay in it), then,
   where the subgroup is narrower than the row group (lavapipe's 8), the subgroups' sums in workgroup memory. No
   width is assumed: it is the `sg_size` builtin. Without: a tree in workgroup memory. #}
{% macro reduce(slots, nt) %}
{% if subgroups %}
    let width = min(sg_size, LANES);
{% for s in range(slots) %}
{% for n in range(nt) %}
    var r{{ s }}_{{ n }} = acc{{ s }}_{{ n }};
    for (var offset = width / 2u; offset > 0u; offset >>= 1u) {
        r{{ s }}_{{ n }} += subgroupShuffleXor(r{{ s }}_{{ n }}, offset);
    }
    if (lid.x % width == 0u) {
        partial[(lid.y * SLOTS + {{ s * nt + n }}u) * LANES + lid.x / width] = r{{ s }}_{{ n }};
    }
{% endfor %}
{% endfor %}
    workgroupBarrier();
    if (width < LANES && lid.x == 0u) {
        for (var k = 0u; k < SLOTS; k++) {
            let i = (lid.y * SLOTS + k) * LANES;
            var sum = partial[i];
            for (var j = 1u; j < LANES / width; j++) {
                sum += partial[i + j];
            }
            partial[i] = sum;
        }
    }
    workgroupBarrier();
{% else %}
{% for s in range(slots) %}
{% for n in range(nt) %}
    partial[(lid.y * SLOTS + {{ s * nt + n }}u) * LANES + lid.x] = acc{{ s }}_{{ n }};
{% endfor %}
{% endfor %}
    workgroupBarrier();
    for (var step = LANES / 2u; step > 0u; step >>= 1u) {
        if (lid.x < step) {
            for (var k = 0u; k < SLOTS; k++) {
                let i = (lid.y * SLOTS + k) * LANES + lid.x;
                partial[i] += partial[i + step];
            }
        }
        workgroupBarrier();
    }
{% endif %}
{% endmacro %}

{# The entry point's extra parameter when subgroups are used. #}
{% macro subgroup_param() %}{% if subgroups %}, @builtin(subgroup_size) sg_size: u32{% endif %}{% endmacro %}

{# The grouped expert kernels' start: this workgroup's chunk (the same for all its threads, so an empty one may
   return before the barriers) and its first `pairs` pairs pair0.. (the last one repeated past the chunk's count). #}
{% macro grouped_chunk(pairs=8, first="lid.x == 0u && lid.y == 0u") %}
    if ({{ first }}) {
        chunk_shared = chunks[wid.y];
    }
    let chunk = workgroupUniformLoad(&chunk_shared);
    if (chunk.y == 0u) {
        return;
    }
{% for n in range(pairs) %}
    let pair{{ n }} = order[chunk.x + min({{ n }}u, chunk.y - 1u)];
{% endfor %}
{% endmacro %}

{# Tiles (prefill matmuls, 2/4/8-bit affine formats): a workgroup of 8 × 8 threads computes a tile of 64 rows × 64
   tokens, each thread 8 rows (tile rows 8·lid.y ..) × 8 tokens (8·lid.x ..) into acc{i}_{j}. Per unit of 32
   columns, the workgroup dequantizes the 64 rows' weights and copies the 64 tokens' x into workgroup memory
   (column-major, so a thread reads 4 rows or 4 tokens as one vec4), then each thread does 64 FMAs per 4 loads from
   there: each weight is unpacked once per 64 tokens. (4 × 4 per thread in 16 × 16 threads, 16 FMAs per 2 loads,
   took 4.5% longer on the H200: docs/PERF.md, "The delta rule's token step".) The includer says where rows and
   tokens are: WGSL functions `tile_row(r) -> vec3<u32>` (the index of tile row r's first weight word, scale and
   bias; r < 64) and `tile_x(t)` (the index of tile token t's first x vec4; t < 64), each returning something in
   range for any r and t. #}
{% macro tile_declarations(fmt) %}
const VALS: u32 = {{ 32 // fmt.bits }}u;
// Column k of the unit: ws[k · 16 + r / 4][r % 4] = weight of tile row r, xs[k · TQ + t / 4][t % 4] = x of tile
// token t (TQ = 16 vec4s per column).
const TQ: u32 = 16u;
var<workgroup> ws: array<vec4<f32>, 512>;
var<workgroup> xs: array<vec4<f32>, 512>;
{% endmacro %}

{# Issues the loads of unit `u` (tile_matmul): this thread's row's BITS words with their group's scale and bias, and
   x vec4 `id % 8` of the unit of tile tokens `id / 8 + 8·n`. #}
{% macro tile_load_unit(fmt, u) %}
        {
            let g = ({{ u }}) * 32u / GROUP;
{% for n in range(fmt.bits) %}
            wv{{ n }} = w[wrow.x + ({{ u }}) * BITS + {{ n }}u];
{% endfor %}
            wsc = {{ fmt.sdtype }}_at(wrow.y + g);
            wbi = {{ fmt.sdtype }}_at(wrow.z + g);
        }
{% for n in range(8) %}
        xv{{ n }} = x[xrow{{ n }} + ({{ u }}) * 8u + id % 8u];
{% endfor %}
{% endmacro %}

{% macro tile_matmul(fmt) %}
    let id = lid.y * 8u + lid.x;
{% for i in range(8) %}
{% for j in range(8) %}
    var acc{{ i }}_{{ j }} = 0.0;
{% endfor %}
{% endfor %}
    // This thread's share of a unit, loaded a unit ahead (in flight while the FMAs of the unit before run): the
    // weight words of tile row `id` (consecutive threads on consecutive rows) and x of 8 tokens.
    let wrow = tile_row(id);
{% for n in range(fmt.bits) %}
    var wv{{ n }} = 0u;
{% endfor %}
    var wsc = 0.0;
    var wbi = 0.0;
{% for n in range(8) %}
    let xrow{{ n }} = tile_x(id / 8u + {{ 8 * n }}u);
    var xv{{ n }} = vec4<f32>();
{% endfor %}
{{ tile_load_unit(fmt, "0u") }}
    let units = p.cols / 32u;
    for (var u = 0u; u < units; u++) {
        workgroupBarrier();
{% for n in range(fmt.bits) %}
{% for j in range(32 // fmt.bits) %}
        ws[{{ (n * (32 // fmt.bits) + j) * 16 }}u + id / 4u][id % 4u] = wsc * f32((wv{{ n }} >> {{ j * fmt.bits }}u) & MASK) + wbi;
{% endfor %}
{% endfor %}
{% for n in range(8) %}
        {
            let t = id / 8u + {{ 8 * n }}u;
            let q = id % 8u;
            xs[(q * 4u) * TQ + t / 4u][t % 4u] = xv{{ n }}.x;
            xs[(q * 4u + 1u) * TQ + t / 4u][t % 4u] = xv{{ n }}.y;
            xs[(q * 4u + 2u) * TQ + t / 4u][t % 4u] = xv{{ n }}.z;
            xs[(q * 4u + 3u) * TQ + t / 4u][t % 4u] = xv{{ n }}.w;
        }
{% endfor %}
        workgroupBarrier();
{{ tile_load_unit(fmt, "min(u + 1u, units - 1u)") }}
        for (var k = 0u; k < 32u; k += 8u) {
{% for kk in range(8) %}
            {
                let wa = ws[(k + {{ kk }}u) * 16u + 2u * lid.y];
                let wb = ws[(k + {{ kk }}u) * 16u + 2u * lid.y + 1u];
                let xa = xs[(k + {{ kk }}u) * TQ + 2u * lid.x];
                let xb = xs[(k + {{ kk }}u) * TQ + 2u * lid.x + 1u];
{% for i in range(8) %}
{% for j in range(8) %}
                acc{{ i }}_{{ j }} = fma({{ "wa" if i < 4 else "wb" }}[{{ i % 4 }}], {{ "xa" if j < 4 else "xb" }}[{{ j % 4 }}], acc{{ i }}_{{ j }});
{% endfor %}
{% endfor %}
            }
{% endfor %}
        }
    }
{% endmacro %}

{# Rows (the expert kernels in prefills, 2/4/8-bit affine formats): each workgroup of 256 threads runs a chunk of up
   to 16 pairs of one expert (group_pairs.wgsl), each thread two rows over all of them: a weight is loaded and
   dequantized once (w = q·s + b) and then used for every token, with no sums across threads. The tokens' x goes
   through workgroup memory, 256 columns at a time, and every thread reads the same x vec4 at once (a broadcast).
   On the H200 this took the expert kernels of a 512-token prefill of 35B-A3B from 134 to 74 ms against tiles of
   64 rows × 32 tokens dequantized into workgroup memory (docs/PERF.md, "A thread per row"); for the dense
   matmuls it measured slower than tiles of 64 × 64 (45.4 → 54.1 ms for the split input projections).
   A row's words of a unit are one 16-byte load at 4 and 8 bits (`wq`, the same buffer as `w` bound as vec4s), and
   each group's scale and bias are loaded once, not once per unit: consecutive threads read rows a row apart, so
   each load of a warp touches 32 cache lines (on the H100: gate_up 50.4 → 42.3 ms, down 24.3 → 20.4 ms;
   docs/PERF.md, "Rows in 16-byte loads").
   The includer declares `x` (vec4s), `w` and Params `p` (with rows and cols), binds `w`'s buffer again at binding
   6, and defines `fn token_x(chunk: vec2<u32>, t: u32) -> u32` (the first x vec4 of pair t < 16 of the chunk, in
   range for any t) and `fn store_rows(i: u32, ra: u32, rb: u32, a: f32, b: f32)` (writes the sums a of row ra and
   b of row rb, either of which may be past p.rows, of the pair order[i]); in main, before rows_passes: `chunk` (its
   first pair in `order` and count, workgroup-uniform), Mats `ma` and `mb` and the rows `ra` and `rb` of this
   thread. #}
{% macro rows_declarations() %}
@group(0) @binding(6) var<storage, read> wq: array<vec4<u32>>;
const XU: u32 = 8u;
// x of the chunk's tokens, units ub .. ub + XU: xs[t · XU · 8 + (u - ub) · 8 + j] = vec4 j of unit u of token t.
var<workgroup> xs: array<vec4<f32>, {{ 16 * 8 * 8 }}>;
{% endmacro %}

{# The sums for tokens 0 .. nt of the chunk (nt a multiple of 4, at least chunk.y); reached by all threads. #}
{% macro rows_pass(fmt, nt) %}
    {
        let ca = min(ra, p.rows - 1u);
        let cb = min(rb, p.rows - 1u);
        let units = p.cols / 32u;
{% for t in range(nt) %}
        var acca{{ t }} = 0.0;
        var accb{{ t }} = 0.0;
{% endfor %}
        // This thread's share of each staging of x: vec4 c of token t, for c + 64·t = lid + 256·f.
{% for f in range(nt // 4) %}
        let xt{{ f }} = (lid + {{ 256 * f }}u) / 64u;
        let xc{{ f }} = (lid + {{ 256 * f }}u) % 64u;
        let xrow{{ f }} = token_x(chunk, xt{{ f }});
{% endfor %}
        // The weights of unit u, loaded a unit ahead (in flight while the sums of the unit before run).
{% for m in ["a", "b"] %}
        let wrow{{ m }} = m{{ m }}.w + c{{ m }} * (p.cols / 32u * BITS);
        let grow{{ m }} = c{{ m }} * (p.cols / GROUP);
{% for k in range(fmt.bits) %}
        var w{{ m }}{{ k }} = 0u;
{% endfor %}
{{ rows_words(fmt, m, "wrow" ~ m) }}
        var s{{ m }} = {{ fmt.sdtype }}_at(m{{ m }}.s + grow{{ m }});
        var b{{ m }} = {{ fmt.sdtype }}_at(m{{ m }}.b + grow{{ m }});
{% endfor %}
        for (var ub = 0u; ub < units; ub += XU) {
            let ue = min(units, ub + XU);
{% for f in range(nt // 4) %}
            let xv{{ f }} = x[xrow{{ f }} + ub * 8u + min(xc{{ f }}, (ue - ub) * 8u - 1u)];
{% endfor %}
            workgroupBarrier();
{% for f in range(nt // 4) %}
            xs[xt{{ f }} * XU * 8u + xc{{ f }}] = xv{{ f }};
{% endfor %}
            workgroupBarrier();
            for (var u = ub; u < ue; u++) {
{% for m in ["a", "b"] %}
{% for k in range(fmt.bits) %}
                let cw{{ m }}{{ k }} = w{{ m }}{{ k }};
{% endfor %}
                let cs{{ m }} = s{{ m }};
                let cb{{ m }} = b{{ m }};
{% endfor %}
                {
                    let un = min(u + 1u, units - 1u);
{% for m in ["a", "b"] %}
{{ rows_words(fmt, m, "wrow" ~ m ~ " + un * BITS") }}
                    if (un * 32u % GROUP == 0u) {
                        s{{ m }} = {{ fmt.sdtype }}_at(m{{ m }}.s + grow{{ m }} + un * 32u / GROUP);
                        b{{ m }} = {{ fmt.sdtype }}_at(m{{ m }}.b + grow{{ m }} + un * 32u / GROUP);
                    }
{% endfor %}
                }
{{ rows_unit(fmt, nt) }}
            }
        }
{% for t in range(nt) %}
        if ({{ t }}u < chunk.y) {
            store_rows(chunk.x + {{ t }}u, ra, rb, acca{{ t }}, accb{{ t }});
        }
{% endfor %}
    }
{% endmacro %}

{# Loads the words of matrix `m`'s unit at word `at` of this thread's row into w{m}0 ..: one 16-byte load per 4
   words at 4 and 8 bits (the matrices start on 16 bytes: ExpertLayout::of in ops.rs), else a word at a time. #}
{% macro rows_words(fmt, m, at) %}
{% if fmt.bits % 4 == 0 %}
{% for v in range(fmt.bits // 4) %}
        let q{{ m }}{{ v }} = wq[({{ at }}) / 4u + {{ v }}u];
{% for c in range(4) %}
        w{{ m }}{{ 4 * v + c }} = q{{ m }}{{ v }}.{{ "xyzw"[c] }};
{% endfor %}
{% endfor %}
{% else %}
{% for k in range(fmt.bits) %}
        w{{ m }}{{ k }} = w[{{ at }} + {{ k }}u];
{% endfor %}
{% endif %}
{% endmacro %}

{# rows_pass' sums of one unit, in two halves of 16 values: dequantized as the grouped matvec unpacks words (value
   i at bit p of a 16-bit half, masked in place and ORed into 2²³'s mantissa, is q·2^p after one subtraction),
   scaled by s·2^-p. #}
{% macro rows_unit(fmt, nt) %}
{% for m in ["a", "b"] %}
{% for q in range(0, 16, fmt.bits) %}
                let s{{ m }}p{{ q }} = cs{{ m }} * {{ 1.0 / 2 ** q }};
{% endfor %}
{% endfor %}
{% for h in range(2) %}
                {
{% for m in ["a", "b"] %}
{% for i in range(16 * h, 16 * h + 16) %}
{% set bit = i * fmt.bits %}
{% set word = bit // 32 %}
{% set q = bit % 16 %}
                    let {{ m }}{{ i }} = fma(bitcast<f32>(({{ "(cw" ~ m ~ word ~ " >> 16u)" if bit % 32 >= 16 else "cw" ~ m ~ word }} & {{ (2 ** fmt.bits - 1) * 2 ** q }}u) | 0x4b000000u) - 8388608.0, s{{ m }}p{{ q }}, cb{{ m }});
{% endfor %}
{% endfor %}
{% for t in range(nt) %}
                    {
{% for j in range(4) %}
                        let x{{ j }} = xs[{{ t }}u * XU * 8u + (u - ub) * 8u + {{ 4 * h + j }}u];
{% endfor %}
{% for m in ["a", "b"] %}
{% for i in range(16) %}
                        acc{{ m }}{{ t }} = fma({{ m }}{{ 16 * h + i }}, x{{ i // 4 }}.{{ "xyzw"[i % 4] }}, acc{{ m }}{{ t }});
{% endfor %}
{% endfor %}
                    }
{% endfor %}
                }
{% endfor %}
{% endmacro %}

{# A pass for as many tokens as the chunk holds, rounded up to 4. #}
{% macro rows_passes(fmt) %}
{% for nt in [4, 8, 12, 16] %}
    {{ "} else " if nt > 4 }}if (chunk.y <= {{ nt }}u) {
{{ rows_pass(fmt, nt) }}
{% endfor %}
    }
{% endmacro %}

{# The outputs of a matmul (matmul.wgsl, gemm_f16.wgsl), y[t, rows] at bindings 2 ..: one, or with `split` four,
   W's rows being several matrices' rows back to back (one upload) and each one's rows going to its own output, y0
   [t, r1], y1 [t, r2 − r1], y2 [t, r3 − r2], y3 [t, rows − r3]: one dispatch instead of one per matrix. The
   Params fields that say where rows go (after the includer's own), the bindings, and a store of value `v` of (row,
   tok). #}
{% macro out_params(split) %}
{% if split %}
    r1: u32,
    r2: u32,
    r3: u32,
{% else %}
    // The output's row count and this matrix's first row in it (a matrix split over bindings runs in pieces).
    out_rows: u32,
    row0: u32,
{% endif %}
{% endmacro %}

{% macro out_bindings(split) %}
{% if split %}
{% for o in range(4) %}
@group(0) @binding({{ 2 + o }}) var<storage, read_write> y{{ o }}: array<f32>;
{% endfor %}
{% else %}
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
{% endif %}
{% endmacro %}

{% macro store_out(split, row, tok, v) %}
{% if split %}
            if ({{ row }} < p.r1) {
                y0[{{ tok }} * p.r1 + {{ row }}] = {{ v }};
            } else if ({{ row }} < p.r2) {
                y1[{{ tok }} * (p.r2 - p.r1) + {{ row }} - p.r1] = {{ v }};
            } else if ({{ row }} < p.r3) {
                y2[{{ tok }} * (p.r3 - p.r2) + {{ row }} - p.r2] = {{ v }};
            } else {
                y3[{{ tok }} * (p.rows - p.r3) + {{ row }} - p.r3] = {{ v }};
            }
{% else %}
            y[{{ tok }} * p.out_rows + p.row0 + {{ row }}] = {{ v }};
{% endif %}
{% endmacro %}
