//! Splitting a guest server's stdout into newline-delimited JSON-RPC messages, bounded: a line
//! longer than the limit is refused as soon as the buffer passes the limit, before the rest of
//! it is read, and what was buffered of it is freed.

/// The longest line accepted from a guest server; a longer one ends the process.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Splits stdout into lines, refusing lines beyond [`MAX_LINE_BYTES`].
#[derive(Default)]
pub struct LineBuffer {
    buffer: Vec<u8>,
    /// Where to continue looking for a newline.
    scanned: usize,
    overflowed: bool,
}

impl LineBuffer {
    /// Adds what the process printed. Past the limit nothing more is kept: the line overflowed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line, without its `\n` (or `\r\n`); blank lines are skipped.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let Some(offset) = self.buffer[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = self.buffer.len();
                if self.buffer.len() > MAX_LINE_BYTES {
                    self.overflowed = true;
                    self.buffer = Vec::new();
                    self.scanned = 0;
                }
                return None;
            };
            let end = self.scanned + offset;
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            self.scanned = 0;
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_blank_lines_skipped() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"a\":");
        assert_eq!(lines.next_line(), None);
        lines.push(b"1}\r\n\n  \n{\"b\":2}\n{\"c\"");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lines.next_line(), None);
        lines.push(b":3}\n");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"c\":3}"[..]));
        assert!(!lines.overflowed());
    }

    #[test]
    fn a_line_beyond_the_limit_overflows() {
        let mut lines = LineBuffer::default();
        lines.push(&vec![b'x'; MAX_LINE_BYTES + 1]);
        assert_eq!(lines.next_line(), None);
        assert!(lines.overflowed());
    }
}
