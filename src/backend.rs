//! The operations a forward pass is made of. Each architecture's forward pass (model/qwen35.rs) is written once
//! against this trait; the CPU backend (cpu.rs, the reference) and the GPU backend (gpu/) implement it, and every
//! GPU operation is tested against its CPU twin (tests/kernels.rs).
//!
//! Activations are `[rows, width]` f32 arrays whose width the operation knows from its weights or arguments.

use anyhow::Result;

use crate::config::{LinearAttnConfig, ModelConfig};
use crate::weights::{LinearAttnWeights, Storage};
#[cfg(doc)]
use crate::weights::Transfer;

pub trait Backend: Storage + Sized {
    /// An f32 activation array.
    type Act;
    /// Which experts each token goes to, and with what weights.
    type Routing;
    /// One attention layer's keys and values so far.
    type KvCache;
    /// One linear-attention layer's conv and recurrent states.
    type LinearState;
    /// A greedy choice of token made on the device and not read back yet: the next decode step can embed it while
    /// the device is still computing it (see [`Backend::choose`]).
    type Chosen;

    fn new_kv_cache(&self, kv_width: usize) -> Result<Self::KvCache>;
    fn new_linear_state(&self, l: &LinearAttnConfig) -> Result<Self::LinearState>;
    /// Copies of a sequence's states (to keep a conversation's state and continue it later, more than once).
    fn copy_kv_cache(&self, cache: &Self::KvCache) -> Result<Self::KvCache>;
    fn copy_linear_state(&self, state: &Self::LinearState) -> Result<Self::LinearState>;

    /// An activation holding `values`.
    fn act(&self, values: &[f32]) -> Result<Self::Act>;
    /// Rows `tokens` of the embedding table.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32]) -> Result<Self::Act>;
    /// `x [t, in] · wᵀ` for `w [out, in]`: `[t, out]`.
    fn matmul(&self, x: &Self::Act, w: &Self::Matrix) -> Self::Act;
    /// `x · wᵀ` for each of `ws`, matrices that take the same input: as many [`Backend::matmul`]s, in one pass
    /// where the backend can (the GPU can for matrices uploaded together by [`Transfer::matrices`]).
    fn matmuls<const N: usize>(&self, x: &Self::Act, ws: [&Self::Matrix; N]) -> [Self::Act; N] {
        ws.map(|w| self.matmul(x, w))
    }
    /// RMSNorm of each `dim`-long row, times `weight`.
    fn rms_norm(&self, x: &Self::Act, weight: &Self::Vector, dim: usize, eps: f32) -> Self::Act;
    /// `hidden += x`, then RMSNorm of hidden's `dim`-long rows times `weight` (a residual add and the next norm).
    fn add_rms_norm(&self, hidden: &mut Self::Act, x: &Self::Act, weight: &Self::Vector, dim: usize, eps: f32) -> Self::Act;
    /// Full attention's query and key heads made ready: `projected` (q_proj's output, `[t, nh, hd]`, or with the
    /// output gate `[t, nh, 2·hd]` of per-head [query | gate], the gate returned apart) and `k [t, nkv, hd]`,
    /// each head RMS-normed with `q_norm` or `k_norm`, then RoPE'd on its first `rotary_dim` dims, token i at
    /// position `pos0 + i`: (q, gate, k).
    #[allow(clippy::too_many_arguments)]
    fn attention_heads(
        &self,
        c: &ModelConfig,
        projected: &Self::Act,
        k: &Self::Act,
        q_norm: &Self::Vector,
        k_norm: &Self::Vector,
        pos0: usize,
    ) -> (Self::Act, Option<Self::Act>, Self::Act);
    /// Appends the new keys and values `[t, nkv·hd]` (at positions `pos0..`) to the cache, then runs causal
    /// attention of `q [t, nh, hd]` over it: `[t, nh, hd]`, times sigmoid(gate) element-wise when there is one.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        cache: &mut Self::KvCache,
        pos0: usize,
        heads: (usize, usize),
        head_dim: usize,
        gate: Option<&Self::Act>,
    ) -> Result<Self::Act>;
    /// Gated DeltaNet's causal conv + SiLU over `x [t, channels]`, then its recurrence (updating `state`), then
    /// the gated RMSNorm of each value head's output: RMSNorm times `w.norm`, times silu(z): `[t, hv·dv]`. `z` is
    /// `[t, hv·dv]`, `b` and `a` are `[t, hv]`.
    #[allow(clippy::too_many_arguments)]
    fn gated_delta_net(
        &self,
        l: &LinearAttnConfig,
        w: &LinearAttnWeights<Self>,
        x: &Self::Act,
        z: &Self::Act,
        b: &Self::Act,
        a: &Self::Act,
        eps: f32,
        state: &mut Self::LinearState,
    ) -> Self::Act;
    /// `silu(gate) · up`, element-wise.
    fn swiglu(&self, gate: &Self::Act, up: &Self::Act) -> Self::Act;
    /// Softmax over each token's router logits `[t, experts]`, the `k` largest (ties to the lower index),
    /// renormalized to sum 1 when `renormalize`; each token's choice sorted by expert index. (A backend may
    /// have stored the shared expert as one more expert, its gate as one more router row: `experts` says.)
    fn route(&self, logits: &Self::Act, experts: &Self::Experts, k: usize, renormalize: bool) -> Self::Routing;
    /// Every routed expert's SwiGLU MLP on its tokens: `[t·k, hidden]`, row `i·k + j` for token i's j-th expert.
    /// `ahead`: a guess of the next layer's routing, whose experts a backend that streams them starts reading
    /// now, while this layer runs (see [`Backend::reads_ahead`]).
    fn experts(
        &self,
        x: &Self::Act,
        routing: &Self::Routing,
        experts: &Self::Experts,
        ahead: Option<&Self::Routing>,
    ) -> Result<Self::Act>;
    /// Whether `experts` are streamed and read ahead in a forward call of `tokens` tokens: then the forward pass
    /// guesses their routing one layer early, for [`Backend::experts`]' `ahead`.
    fn reads_ahead(&self, _experts: &Self::Experts, _tokens: usize) -> bool {
        false
    }
    /// The end of a MoE block and the next RMSNorm in one: `hidden += Σ_j weight_j · expert_out_j
    /// (+ sigmoid(shared_gate) · shared_out)` per token, then RMSNorm of hidden's `width`-long rows times `weight`
    /// (the next layer's input norm, or the final norm).
    #[allow(clippy::too_many_arguments)]
    fn moe_combine_rms_norm(
        &self,
        hidden: &mut Self::Act,
        expert_out: &Self::Act,
        routing: &Self::Routing,
        shared: Option<(&Self::Act, &Self::Act)>,
        weight: &Self::Vector,
        width: usize,
        eps: f32,
    ) -> Self::Act;
    /// The last `width`-long row.
    fn last_row(&self, x: &Self::Act, width: usize) -> Self::Act;
    /// The values, in host memory (waits for the device).
    fn read(&self, x: &Self::Act) -> Result<Vec<f32>>;
    /// The index of the largest value (the lower on a tie), in host memory: greedy decoding's next token, read
    /// back as 4 bytes instead of the logits.
    fn argmax(&self, x: &Self::Act) -> Result<u32>;
    /// The same choice, left on the device and started on its way back: with it, greedy decoding records the next
    /// step before it reads this one's token ([`Backend::read_chosen`]), so the device need not wait for the CPU
    /// between tokens.
    fn choose(&self, x: &Self::Act) -> Result<Self::Chosen>;
    /// Whether [`Backend::choose`] returns before the choice is made, its work only recorded (a GPU's): only then
    /// does running the next step before reading a choice back gain anything. Where it does not, running ahead
    /// would only show each token a step later (the CPU computes as it goes).
    fn runs_ahead(&self) -> bool {
        false
    }
    /// The chosen token, in host memory: waits for the device until it has chosen it, not for work recorded after.
    fn read_chosen(&self, chosen: &Self::Chosen) -> Result<u32>;
    /// The embedding row of a chosen token (a one-token [`Backend::embed`]).
    fn embed_chosen(&self, table: &Self::Matrix, chosen: &Self::Chosen) -> Result<Self::Act>;
    /// Work counted since the backend was made.
    fn counters(&self) -> Counters {
        Counters::default()
    }
}

/// What a backend counts of its work (for `--timing` and `floe bench`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// GPU kernel dispatches recorded.
    pub dispatches: u64,
    /// Times the CPU waited for the device (CPU↔GPU round trips).
    pub syncs: u64,
    /// Time the CPU spent in those waits, in nanoseconds: the rest of a forward call's time is the CPU's own
    /// (recording the work, sampling), during which the device may be idle.
    pub wait_nanos: u64,
}
