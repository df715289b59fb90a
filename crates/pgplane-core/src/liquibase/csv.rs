//! CSV as Liquibase reads it for `loadData`: opencsv's RFC 4180 parser (a quoted field may
//! span lines and holds doubled quotes; an unquoted field is taken as written), and the
//! stream Liquibase checksums (empty and comment lines dropped, line endings unified).

/// Splits `text` into records of fields. `quote: None` turns quoting off (Liquibase's
/// empty `quotchar`).
pub(crate) fn records(text: &str, separator: char, quote: Option<char>) -> Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).peekable();
    // opencsv reads lines; a trailing newline does not make an extra (empty) record.
    let ends_with_newline = text.ends_with('\n');
    let mut line_no = 0;
    while let Some(first) = lines.next() {
        line_no += 1;
        if lines.peek().is_none() && ends_with_newline && first.is_empty() {
            break;
        }
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut line = first.to_string();
        let mut chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut in_quotes = false;
        let mut quoted_field = false;
        loop {
            if i >= chars.len() {
                if in_quotes {
                    // The quoted field goes on on the next line.
                    match lines.next() {
                        Some(next) => {
                            line_no += 1;
                            field.push('\n');
                            line = next.to_string();
                            chars = line.chars().collect();
                            i = 0;
                            continue;
                        }
                        None => return Err(format!("unterminated quoted field starting on line {line_no}")),
                    }
                }
                fields.push(std::mem::take(&mut field));
                break;
            }
            let c = chars[i];
            if in_quotes {
                if Some(c) == quote {
                    if chars.get(i + 1) == Some(&c) {
                        field.push(c);
                        i += 2;
                        continue;
                    }
                    in_quotes = false;
                    i += 1;
                    continue;
                }
                field.push(c);
                i += 1;
            } else if c == separator {
                fields.push(std::mem::take(&mut field));
                quoted_field = false;
                i += 1;
            } else if Some(c) == quote && field.is_empty() && !quoted_field {
                in_quotes = true;
                quoted_field = true;
                i += 1;
            } else {
                field.push(c);
                i += 1;
            }
        }
        out.push(fields);
    }
    Ok(out)
}

/// The bytes `EmptyLineAndCommentSkippingInputStream` yields: no `\r`, no empty lines, no
/// lines starting with the comment's first character, no leading or trailing newline.
pub(crate) fn checksum_bytes(bytes: &[u8], comment: Option<&str>) -> Vec<u8> {
    let comment = comment.filter(|c| !c.is_empty()).and_then(|c| c.chars().next()).map(|c| c as u32 as i32);
    let mut s = Skipper { bytes, pos: 0, last_read: -1, comment, marks: Vec::new() };
    let mut out = Vec::new();
    loop {
        let b = s.read_top();
        if b < 0 {
            break;
        }
        out.push(b as u8);
    }
    out
}

struct Skipper<'a> {
    bytes: &'a [u8],
    pos: usize,
    last_read: i32,
    comment: Option<i32>,
    marks: Vec<usize>,
}

impl Skipper<'_> {
    fn next_byte(&mut self) -> i32 {
        match self.bytes.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                i32::from(*b)
            }
            None => -1,
        }
    }

    fn read_top(&mut self) -> i32 {
        let last = self.last_read;
        self.read(last, false)
    }

    /// A literal port of `EmptyLineAndCommentSkippingInputStream.read(lastRead, lookAhead)`.
    fn read(&mut self, last_read: i32, look_ahead: bool) -> i32 {
        let mut read = self.next_byte();
        if let Some(c) = self.comment {
            if read == c && (last_read == i32::from(b'\n') || last_read < 0) {
                loop {
                    read = self.next_byte();
                    if read == i32::from(b'\n') || read == i32::from(b'\r') || read <= 0 {
                        break;
                    }
                }
            }
        }
        if read < 0 {
            return read;
        }
        if read == i32::from(b'\r') {
            return self.read_top();
        }
        if read == i32::from(b'\n') && last_read == i32::from(b'\n') {
            return self.read_top();
        }
        if read == i32::from(b'\n') {
            if last_read < 0 {
                return self.read_top();
            }
            self.marks.push(self.pos);
            if self.read(i32::from(b'\n'), true) < 0 {
                self.marks.pop();
                return -1;
            }
            if let Some(p) = self.marks.pop() {
                self.pos = p;
            }
        }
        if !look_ahead {
            self.last_read = read;
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4180_fields() {
        let r = records("a;b;c\n'x;y';'it''s';\n'multi\nline';2;3\n", ';', Some('\'')).unwrap_or_default();
        assert_eq!(r[0], ["a", "b", "c"]);
        assert_eq!(r[1], ["x;y", "it's", ""]);
        assert_eq!(r[2], ["multi\nline", "2", "3"]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn checksum_stream_drops_comments_and_blank_lines() {
        let b = checksum_bytes(b"h1,h2\r\n\r\n#c\n1,2\n\n", Some("#"));
        assert_eq!(String::from_utf8_lossy(&b), "h1,h2\n1,2");
    }
}
