//! The `text/event-stream` decoder fed bytes in arbitrary pieces, as a network read delivers them.

use xiaomaolv::provider::sse::{SseDecoder, SseEvent};

fn data(text: &str) -> SseEvent {
    SseEvent {
        event: None,
        data: text.to_owned(),
    }
}

fn named(event: &str, text: &str) -> SseEvent {
    SseEvent {
        event: Some(event.to_owned()),
        data: text.to_owned(),
    }
}

/// Feeds each piece in order, then calls `finish`, and returns every event in order.
fn decode_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(decoder.push(piece).unwrap());
    }
    events.extend(decoder.finish().unwrap());
    events
}

fn decode(bytes: &[u8]) -> Vec<SseEvent> {
    decode_pieces(&[bytes])
}

/// A stream that mixes every line ending, comments, event names, multi-line data and
/// multi-byte characters, followed by the events it must decode to.
const SAMPLE: &str = ": keep-alive\r\n\
    data: first\n\n\
    event: delta\r\n\
    data: 你好，世界\r\n\r\n\
    data: line one\r\
    data: line two\r\r\
    : another comment\n\
    data: 🦀 crab é\n\
    \n\
    data:no-space\n\n\
    event: done\n\
    data: [DONE]";

fn sample_events() -> Vec<SseEvent> {
    vec![
        data("first"),
        named("delta", "你好，世界"),
        data("line one\nline two"),
        data("🦀 crab é"),
        data("no-space"),
        named("done", "[DONE]"),
    ]
}

#[test]
fn sample_decodes_in_one_read() {
    assert_eq!(decode(SAMPLE.as_bytes()), sample_events());
}

#[test]
fn sample_split_at_every_offset() {
    let bytes = SAMPLE.as_bytes();
    for cut in 0..=bytes.len() {
        let events = decode_pieces(&[&bytes[..cut], &bytes[cut..]]);
        assert_eq!(events, sample_events(), "split at byte {cut}");
    }
}

#[test]
fn sample_split_at_every_offset_pair() {
    let bytes = SAMPLE.as_bytes();
    for first in 0..=bytes.len() {
        for second in first..=bytes.len() {
            let pieces = [&bytes[..first], &bytes[first..second], &bytes[second..]];
            let events = decode_pieces(&pieces);
            assert_eq!(
                events,
                sample_events(),
                "split at bytes {first} and {second}"
            );
        }
    }
}

#[test]
fn sample_in_one_byte_pieces() {
    let pieces: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
    assert_eq!(decode_pieces(&pieces), sample_events());
}

#[test]
fn event_split_across_reads() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"da").unwrap(), vec![]);
    assert_eq!(decoder.push(b"ta: hel").unwrap(), vec![]);
    assert_eq!(decoder.push(b"lo\n").unwrap(), vec![]);
    assert_eq!(decoder.push(b"\n").unwrap(), vec![data("hello")]);
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn several_events_in_one_read() {
    let mut decoder = SseDecoder::new();
    let events = decoder
        .push(b"data: a\n\ndata: b\n\ndata: c\n\ndata: d")
        .unwrap();
    assert_eq!(events, vec![data("a"), data("b"), data("c")]);
    assert_eq!(decoder.finish().unwrap(), Some(data("d")));
}

#[test]
fn crlf_line_endings() {
    let events = decode(b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n");
    assert_eq!(events, vec![data("a\nb"), data("c")]);
}

#[test]
fn lone_cr_line_endings() {
    let events = decode(b"data: a\rdata: b\r\rdata: c\r\r");
    assert_eq!(events, vec![data("a\nb"), data("c")]);
}

#[test]
fn crlf_split_between_reads() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"data: a\r").unwrap(), vec![]);
    // The `\n` completes the `\r\n` above, so it is not a blank line that ends the event.
    assert_eq!(decoder.push(b"\ndata: b\r").unwrap(), vec![]);
    assert_eq!(decoder.push(b"\n\r").unwrap(), vec![data("a\nb")]);
    assert_eq!(decoder.push(b"\n").unwrap(), vec![]);
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn empty_read_between_cr_and_lf() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"data: a\r").unwrap(), vec![]);
    assert_eq!(decoder.push(b"").unwrap(), vec![]);
    assert_eq!(
        decoder.push(b"\ndata: b\r\n\r\n").unwrap(),
        vec![data("a\nb")]
    );
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn cjk_character_split_across_reads() {
    let text = "data: 世界\n\n".as_bytes();
    // "世" starts at byte 6 and takes three bytes, so 7 and 8 fall inside it.
    for cut in [7, 8] {
        let events = decode_pieces(&[&text[..cut], &text[cut..]]);
        assert_eq!(events, vec![data("世界")], "split at byte {cut}");
    }
}

#[test]
fn emoji_split_across_reads() {
    let text = "data: a🦀b\n\n".as_bytes();
    // The four-byte crab starts at byte 7. Cut it after each of its first three bytes.
    let pieces = [&text[..8], &text[8..9], &text[9..10], &text[10..]];
    assert_eq!(decode_pieces(&pieces), vec![data("a🦀b")]);
}

#[test]
fn comments_are_ignored() {
    let events = decode(b": keep-alive\n\n: ping\ndata: x\n: between\ndata: y\n\n:\n\n");
    assert_eq!(events, vec![data("x\ny")]);
}

#[test]
fn multi_line_data_joined_with_newline() {
    let events = decode(b"data: one\ndata: two\ndata:\ndata: four\n\n");
    assert_eq!(events, vec![data("one\ntwo\n\nfour")]);
}

#[test]
fn event_name_is_reported() {
    let events = decode(b"event: error\ndata: {\"a\":1}\n\ndata: plain\n\n");
    assert_eq!(events, vec![named("error", "{\"a\":1}"), data("plain")]);
}

#[test]
fn event_name_without_data_is_dropped() {
    let events = decode(b"event: ping\n\ndata: x\n\n");
    assert_eq!(events, vec![data("x")]);
}

#[test]
fn only_one_leading_space_is_stripped() {
    let events = decode(b"data:  two spaces\n\n");
    assert_eq!(events, vec![data(" two spaces")]);
}

#[test]
fn finish_dispatches_unterminated_event() {
    let mut decoder = SseDecoder::new();
    assert_eq!(
        decoder.push(b"data: complete\n\ndata: last").unwrap(),
        vec![data("complete")]
    );
    assert_eq!(decoder.finish().unwrap(), Some(data("last")));
}

#[test]
fn finish_dispatches_event_missing_blank_line() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"event: delta\ndata: last\n").unwrap(), vec![]);
    assert_eq!(decoder.finish().unwrap(), Some(named("delta", "last")));
}

#[test]
fn finish_on_empty_stream_is_none() {
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b": only a comment\n\n").unwrap(), vec![]);
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn invalid_utf8_line_is_an_error() {
    let mut decoder = SseDecoder::new();
    let error = decoder.push(b"data: caf\xe9\n\n").unwrap_err();
    assert!(error.to_string().contains("not valid UTF-8"), "{error}");
}

#[test]
fn invalid_utf8_in_unterminated_line_is_an_error() {
    let mut decoder = SseDecoder::new();
    assert_eq!(
        decoder.push(b"data: ok\n\ndata: \xff").unwrap(),
        vec![data("ok")]
    );
    assert!(decoder.finish().is_err());
}

#[test]
fn truncated_character_before_line_end_is_an_error() {
    // The first two bytes of "世" followed by the line ending: the character never completes.
    let mut decoder = SseDecoder::new();
    assert_eq!(decoder.push(b"data: \xe4\xb8").unwrap(), vec![]);
    assert!(decoder.push(b"\n\n").is_err());
}
