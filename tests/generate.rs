//! Generation sessions (floe::generate) on the built-in default model: stop strings, the thinking budget,
//! cancelling, and a second turn that continues the state instead of prefilling everything again.

mod common;

use floe::backend::Backend;
use floe::generate::{Finish, Generation, Session};
use floe::model::Model;

fn greedy(max_tokens: usize) -> Generation {
    Generation { max_tokens, ..Default::default() }
}

#[test]
fn stop_strings_end_the_text_before_them_and_never_stream_part_of_them() {
    let (model, tokenizer) = floe::synthetic::default_model();
    let mut s = Session::new(&model, &tokenizer, vec![]).unwrap();
    let full = s.generate("Once upon a time", &greedy(40), |_| true).unwrap().text;
    let stop = full.chars().skip(12).take(3).collect::<String>();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut s = Session::new(&model, &tokenizer, vec![]).unwrap();
    let mut streamed = String::new();
    let g = Generation { stop: vec![stop.clone(), "never appears".into()], ..greedy(40) };
    let out = s.generate("Once upon a time", &g, |t| {
        streamed.push_str(t);
        true
    }).unwrap();
    assert_eq!(out.text, expected);
    assert_eq!(streamed, expected, "the streamed text is the final text");
    assert_eq!(out.finish, Finish::Stop);
}

#[test]
fn the_thinking_budget_closes_the_thought() {
    let (model, tokenizer) = floe::synthetic::default_model();
    let mut s = Session::new(&model, &tokenizer, vec![]).unwrap();
    let g = Generation { think_budget: Some(3), thinking: true, ..greedy(12) };
    let out = s.generate("<think>\n", &g, |_| true).unwrap();
    assert!(out.text.contains("\n</think>\n\n"), "the thought is closed: {:?}", out.text);
    let close = s.encode("\n</think>\n\n").unwrap();
    let prompt = s.encode("<think>\n").unwrap().len();
    assert_eq!(&s.history[prompt + 3..prompt + 3 + close.len()], &close[..], "closed right after the budget of 3 tokens");
}

#[test]
fn a_second_turn_continues_the_state() {
    let (model, tokenizer) = floe::synthetic::default_model();
    let mut chat = Session::new(&model, &tokenizer, vec![]).unwrap();
    chat.generate("First question", &greedy(6), |_| true).unwrap();
    let before = chat.history.clone();
    let pending = chat.pending.expect("the last chosen token waits for the next turn");
    let second_prompt = chat.encode(" and a second one").unwrap();
    let second = chat.generate_ids(&second_prompt, &greedy(6), |_| true).unwrap();
    assert_eq!(second.prompt_tokens, 1 + second_prompt.len(), "only the new turn is prefilled");

    let mut fresh = Session::new(&model, &tokenizer, vec![]).unwrap();
    let everything = [&before[..], &[pending], &second_prompt[..]].concat();
    let again = fresh.generate_ids(&everything, &greedy(6), |_| true).unwrap();
    assert_eq!(second.text, again.text, "continuing equals prefilling the whole conversation");
}

/// Greedy generation on the GPU runs each decode step before the token it feeds is read back (the step embeds the
/// token the device chose; the CPU does not run ahead): on both, the tokens are those of steps run one after
/// another, and wherever generation stops, the state holds exactly the history.
#[test]
fn greedy_steps_run_ahead_of_the_tokens_they_feed() {
    let (model, tokenizer) = floe::synthetic::default_model();
    check_running_ahead(&model, &tokenizer);
    if let Some(gpu) = common::gpu() {
        let model = model.to_backend(gpu).unwrap();
        check_running_ahead(&model, &tokenizer);
        // Each token comes back through a buffer reused from the steps before, not a new one.
        let made = model.backend.chosen_readbacks_made();
        assert!(made <= 3, "{made} read-back buffers made for the tokens of two generations");
    }
}

fn check_running_ahead<B: Backend>(model: &Model<B>, tokenizer: &tokenizers::Tokenizer) {
    let prompt = Session::new(model, tokenizer, vec![]).unwrap().encode("Once upon a time").unwrap();
    let mut state = model.new_state().unwrap();
    let mut expected = vec![model.forward_greedy(&prompt, &mut state).unwrap()];
    for _ in 1..12 {
        expected.push(model.forward_greedy(&[*expected.last().unwrap()], &mut state).unwrap());
    }
    let mut s = Session::new(model, tokenizer, vec![]).unwrap();
    s.generate_ids(&prompt, &greedy(12), |_| true).unwrap();
    assert_eq!(&s.history[prompt.len()..], &expected[..11], "the tokens of steps one after another");
    assert_eq!(s.pending, Some(expected[11]), "at the token limit, the last token waits for the next turn");
    assert_eq!(s.copy_state().unwrap().pos, s.history.len());
    // Stopped by an end-of-sequence token the step after it has fed already.
    let mut s = Session::new(model, tokenizer, vec![expected[4]]).unwrap();
    let out = s.generate_ids(&prompt, &greedy(12), |_| true).unwrap();
    let first_end = expected.iter().position(|&t| t == expected[4]).unwrap();
    assert_eq!(out.finish, Finish::Stop);
    assert_eq!(out.generated_tokens, first_end);
    // The end token is in the state where a step ran ahead, else it waits for the next turn.
    let fed = [&s.history[prompt.len()..], s.pending.as_slice()].concat();
    assert_eq!(fed, &expected[..=first_end]);
    assert_eq!(s.pending.is_none(), model.backend.runs_ahead(), "the step after the end token ran ahead");
    assert_eq!(s.copy_state().unwrap().pos, s.history.len());
}

#[test]
fn cancelling_stops_at_once() {
    let (model, tokenizer) = floe::synthetic::default_model();
    let mut s = Session::new(&model, &tokenizer, vec![]).unwrap();
    let mut pieces = 0;
    let out = s.generate("Hello", &greedy(30), |_| {
        pieces += 1;
        pieces < 3
    }).unwrap();
    assert_eq!(out.finish, Finish::Cancelled);
    assert_eq!(pieces, 3);
    assert!(out.generated_tokens < 30);
}

/// Thinking and answer split apart however the text arrives, with no part of `</think>` in either.
#[test]
fn thoughts_split_from_answers_in_any_pieces() {
    use floe::generate::{Part, ThoughtSplitter};
    let text = "Let me see: 6*7 is 42.</think>\n\nIt is 42.";
    for size in 1..=text.len() {
        let mut split = ThoughtSplitter::new(true);
        let mut parts = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(size) {
            parts.extend(split.push(&chunk.iter().collect::<String>()));
        }
        parts.extend(split.finish());
        let (mut thought, mut answer) = (String::new(), String::new());
        for p in parts {
            match p {
                Part::Thought(t) => thought += &t,
                Part::Answer(t) => answer += &t,
            }
        }
        assert_eq!((thought.as_str(), answer.as_str()), ("Let me see: 6*7 is 42.", "It is 42."), "pieces of {size}");
    }
    let mut no_thinking = ThoughtSplitter::new(false);
    assert_eq!(no_thinking.push("a</think>b"), vec![Part::Answer("a</think>b".into())]);
}
