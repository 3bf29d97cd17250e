//! An incremental decoder for `text/event-stream` bodies.
//!
//! Bytes arrive in arbitrary pieces: an event may be split across reads, one read may hold several
//! events, and lines may end in `\n`, `\r\n` or `\r`. The decoder buffers raw bytes and only decodes
//! complete lines, so a multi-byte UTF-8 character split across reads is never mangled. A complete
//! line that is not valid UTF-8 is an error, because replacing the bad bytes would store a reply
//! that differs from what the model sent.

/// A line of the stream that is not valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event stream line is not valid UTF-8 ({source})")]
pub struct InvalidUtf8 {
    #[source]
    pub source: std::str::Utf8Error,
}

/// One dispatched event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Stateful decoder; feed it bytes with [`SseDecoder::push`].
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// A `\r` ended the previous read, so a leading `\n` in the next one belongs to it.
    pending_cr: bool,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns every event completed by them.
    ///
    /// Fails when a complete line is not valid UTF-8. The decoder must not be used after that.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, InvalidUtf8> {
        // An empty read must keep `pending_cr`, or the `\n` of a split `\r\n` would count as a
        // blank line and end the event early.
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes = bytes;
        if self.pending_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.pending_cr = false;
        // What is left in the buffer from earlier reads holds no line ending, so scanning starts
        // at the new bytes; rescanning from 0 would make a long line cost quadratic time.
        let mut index = self.buffer.len();
        self.buffer.extend_from_slice(bytes);

        let mut events = Vec::new();
        let mut start = 0;
        while index < self.buffer.len() {
            match self.buffer[index] {
                b'\n' => {
                    self.take_line(start, index, &mut events)?;
                    start = index + 1;
                }
                b'\r' => {
                    self.take_line(start, index, &mut events)?;
                    if index + 1 == self.buffer.len() {
                        self.pending_cr = true;
                    } else if self.buffer[index + 1] == b'\n' {
                        index += 1;
                    }
                    start = index + 1;
                }
                _ => {}
            }
            index += 1;
        }
        self.buffer.drain(..start);
        Ok(events)
    }

    /// Dispatches a final event that the server did not terminate with a blank line.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, InvalidUtf8> {
        if !self.buffer.is_empty() {
            let line = std::mem::take(&mut self.buffer);
            self.field(decode_line(&line)?);
        }
        Ok(self.dispatch())
    }

    fn take_line(
        &mut self,
        start: usize,
        end: usize,
        events: &mut Vec<SseEvent>,
    ) -> Result<(), InvalidUtf8> {
        if start == end {
            events.extend(self.dispatch());
            return Ok(());
        }
        let line = decode_line(&self.buffer[start..end])?.to_owned();
        self.field(&line);
        Ok(())
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }
}

fn decode_line(line: &[u8]) -> Result<&str, InvalidUtf8> {
    std::str::from_utf8(line).map_err(|source| InvalidUtf8 { source })
}
