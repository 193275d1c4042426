//! Properties of every stream translator: any split of the upstream stream gives the same
//! client stream, and garbage never panics nor invents a terminal event.

use proptest::prelude::*;

use super::StreamTranslate;
use super::messages::MessagesStream;
use super::responses::{ResponsesStream, Shell};
use super::test_support::{fixture, run};

const TERMINAL: [&str; 4] =
    ["event: response.completed", "event: response.incomplete", "event: message_stop", "data: [DONE]"];

fn translators() -> Vec<Box<dyn StreamTranslate>> {
    let shell = Shell { id: "resp_1".into(), created_at: 1, model: "m".into(), echo: serde_json::Map::new() };
    vec![Box::new(ResponsesStream::new(shell, 2)), Box::new(MessagesStream::new("msg_1".into(), "m".into(), 3))]
}

/// Cuts `bytes` at the given (sorted, deduplicated) positions.
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in cuts {
        out.push(&bytes[from..cut]);
        from = cut;
    }
    out.push(&bytes[from..]);
    out
}

proptest! {
    #[test]
    fn any_split_gives_the_same_client_stream(cuts in proptest::collection::vec(any::<usize>(), 0..40), which in 0usize..2) {
        for name in ["chat_tool_call.sse", "chat_reasoning_length.sse"] {
            let upstream = fixture(name);
            let (whole, whole_end) = run(translators().swap_remove(which).as_mut(), &[upstream.as_bytes()]);
            let split = pieces(upstream.as_bytes(), &cuts);
            let (out, end) = run(translators().swap_remove(which).as_mut(), &split);
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(end, whole_end);
        }
    }

    #[test]
    fn garbage_never_panics_nor_ends_a_stream(garbage in proptest::collection::vec(any::<u8>(), 0..2048), keep in any::<usize>(), which in 0usize..2) {
        // A valid beginning (cut before its end), then bytes that mean nothing.
        let upstream = fixture("chat_tool_call.sse");
        let end = upstream.find("data: [DONE]").unwrap_or(0);
        let prefix = &upstream.as_bytes()[..keep % (end + 1)];
        let (out, _) = run(translators().swap_remove(which).as_mut(), &[prefix, &garbage]);
        let text = String::from_utf8_lossy(&out);
        for terminal in TERMINAL {
            prop_assert!(!text.contains(terminal), "invented {terminal}");
        }
    }

    #[test]
    fn sse_shaped_garbage_never_ends_a_stream(lines in proptest::collection::vec("(data|event|id)?:? ?[ -~]{0,40}\n{0,2}", 0..40), which in 0usize..2) {
        let text: String = lines.concat();
        let (out, _) = run(translators().swap_remove(which).as_mut(), &[text.as_bytes()]);
        let out = String::from_utf8_lossy(&out);
        if !text.contains("[DONE]") {
            for terminal in TERMINAL {
                prop_assert!(!out.contains(terminal), "invented {terminal}");
            }
        }
    }
}
