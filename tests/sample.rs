//! Token choice (floe::sample): each setting against what it promises, on fixed logits.

use floe::sample::{Sampler, Sampling};

/// Frequencies of each token over `n` draws (a fresh sampler per draw would repeat the seed: one sampler draws all).
fn frequencies(config: Sampling, logits: &[f32], n: usize) -> Vec<f64> {
    let mut sampler = Sampler::new(config, &[]);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..n {
        counts[sampler.sample(&mut logits.to_vec()) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let e: Vec<f64> = logits.iter().map(|&l| ((l / temperature) as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

const LOGITS: [f32; 5] = [2.0, 1.5, 1.0, 0.2, -1.0];

#[test]
fn greedy_settings_pick_the_most_likely_token() {
    for config in [
        Sampling::default(),
        Sampling { top_k: 1, temperature: 1.0, ..Sampling::default() },
        Sampling { temperature: 0.0, top_p: 0.5, min_p: 0.3, ..Sampling::default() },
    ] {
        assert!(config.is_greedy());
        let mut logits = [0.1, 3.0, 3.0, -2.0];
        assert_eq!(Sampler::new(config, &[]).sample(&mut logits), 1, "the lower id wins a tie");
    }
}

#[test]
fn temperature_draws_follow_the_softmax() {
    for temperature in [0.5, 1.0, 2.0] {
        let f = frequencies(Sampling { temperature, seed: 7, ..Sampling::default() }, &LOGITS, 40_000);
        for (got, want) in f.iter().zip(softmax(&LOGITS, temperature)) {
            assert!((got - want).abs() < 0.01, "temperature {temperature}: frequency {got:.3} vs probability {want:.3}");
        }
    }
}

#[test]
fn top_k_top_p_and_min_p_cut_the_candidates() {
    let p = softmax(&LOGITS, 1.0); // 0.463 0.281 0.170 0.077 0.009
    let cases: [(Sampling, usize); 5] = [
        (Sampling { top_k: 2, ..Sampling::default() }, 2),
        (Sampling { top_p: 0.5, ..Sampling::default() }, 2),  // 0.463 < 0.5: the second is needed
        (Sampling { top_p: 0.9, ..Sampling::default() }, 3),  // 0.914 after three
        (Sampling { min_p: 0.5, ..Sampling::default() }, 2),  // keeps p ≥ 0.232
        (Sampling { min_p: 0.1, top_k: 3, ..Sampling::default() }, 3),
    ];
    for (config, kept) in cases {
        let config = Sampling { temperature: 1.0, seed: 1, ..config };
        let f = frequencies(config.clone(), &LOGITS, 20_000);
        assert!(f[..kept].iter().all(|&v| v > 0.0), "{config:?}: a kept token was never drawn: {f:?}");
        assert!(f[kept..].iter().all(|&v| v == 0.0), "{config:?}: a cut token was drawn: {f:?}");
        // The kept ones in proportion to their probabilities.
        let mass: f64 = p[..kept].iter().sum();
        assert!((f[0] - p[0] / mass).abs() < 0.015, "{config:?}: {f:?}");
    }
}

#[test]
fn the_same_seed_repeats_the_draws_and_another_does_not() {
    let draws = |seed| {
        let mut s = Sampler::new(Sampling { temperature: 1.5, seed, ..Sampling::default() }, &[]);
        (0..50).map(|_| s.sample(&mut LOGITS.to_vec())).collect::<Vec<_>>()
    };
    assert_eq!(draws(42), draws(42));
    assert_ne!(draws(42), draws(43));
}

#[test]
fn penalties_lower_the_logits_of_seen_tokens() {
    // Repetition: prompt token 0 (positive logit: divided) and generated token 4 (negative: multiplied).
    let mut s = Sampler::new(Sampling { repetition_penalty: 2.0, top_k: 1, ..Sampling::default() }, &[0]);
    s.observe(4);
    let mut logits = LOGITS.to_vec();
    assert_eq!(s.sample(&mut logits), 1, "token 0 fell from 2.0 to 1.0, below token 1's 1.5");
    assert_eq!(logits, [1.0, 1.5, 1.0, 0.2, -2.0]);
    // Presence and frequency: only generated tokens; token 1 twice.
    let config = Sampling { presence_penalty: 0.5, frequency_penalty: 0.25, top_k: 1, ..Sampling::default() };
    let mut s = Sampler::new(config, &[0]);
    s.observe(1);
    s.observe(1);
    let mut logits = LOGITS.to_vec();
    s.sample(&mut logits);
    assert_eq!(logits, [2.0, 0.5, 1.0, 0.2, -1.0]);
    assert!(!Sampling { presence_penalty: 0.5, ..Sampling::default() }.is_greedy(), "penalties need the logits");
}
