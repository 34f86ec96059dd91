//! The cursor the one-pass decoder reads a payload with: whitespace, literals, numbers in
//! JSON's own grammar, strings with their escapes, and values stepped over (checked, not
//! kept).

use super::{Step, Unsure};
use crate::precheck::MAX_NESTING;

/// A cursor over one payload. Only well-formed JSON (RFC 8259) is read; anything else is
/// [`Unsure`].
pub(super) struct Json<'j> {
    pub(super) bytes: &'j [u8],
    pub(super) at: usize,
}

impl<'j> Json<'j> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    pub(super) fn next(&mut self) -> Option<u8> {
        let b = self.peek();
        self.at += 1;
        b
    }

    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    pub(super) fn literal(&mut self, word: &[u8]) -> Step {
        if self.bytes[self.at.min(self.bytes.len())..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// A number's token — the run arrow-json's tape takes as one — if it is a JSON number;
    /// and whether it is an integer (no fraction, no exponent).
    pub(super) fn number(&mut self) -> Step<(&'j [u8], bool)> {
        let start = self.at;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.at += 1;
        }
        let token = &self.bytes[start..self.at];
        number_form(token).map(|integer| (token, integer)).ok_or(Unsure)
    }

    /// An integer written as one (a number with a fraction or an exponent is left to the
    /// general path, which checks that it is whole).
    pub(super) fn integer(&mut self) -> Step<i64> {
        let (token, integer) = self.number()?;
        if !integer {
            return Err(Unsure);
        }
        let (negative, digits) = match token.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, token),
        };
        let mut v: i64 = 0;
        for d in digits {
            let d = i64::from(d - b'0');
            v = v
                .checked_mul(10)
                .and_then(|v| if negative { v.checked_sub(d) } else { v.checked_add(d) })
                .ok_or(Unsure)?;
        }
        Ok(v)
    }

    /// An object key without escapes (a key with escapes is rare enough to leave).
    pub(super) fn key(&mut self) -> Step<&'j [u8]> {
        if self.next() != Some(b'"') {
            return Err(Unsure);
        }
        let start = self.at;
        let end = start + memchr::memchr2(b'"', b'\\', &self.bytes[start.min(self.bytes.len())..]).ok_or(Unsure)?;
        if self.bytes[end] != b'"' {
            return Err(Unsure);
        }
        self.at = end + 1;
        Ok(&self.bytes[start..end])
    }

    /// A string's text: borrowed from the payload, or unescaped into `scratch` when it holds
    /// escapes.
    pub(super) fn text<'a>(&mut self, scratch: &'a mut Vec<u8>) -> Step<&'a str>
    where
        'j: 'a,
    {
        let rest = &self.bytes[(self.at + 1).min(self.bytes.len())..];
        if self.peek() == Some(b'"')
            && let Some(end) = string_stop(rest)
            && rest[end] == b'"'
        {
            self.at += end + 2;
            return std::str::from_utf8(&rest[..end]).map_err(|_| Unsure);
        }
        scratch.clear();
        self.string_into(scratch)?;
        std::str::from_utf8(scratch).map_err(|_| Unsure)
    }

    /// Appends the string at the cursor, unescaped, to `out`.
    pub(super) fn string_into(&mut self, out: &mut Vec<u8>) -> Step {
        if self.next() != Some(b'"') {
            return Err(Unsure);
        }
        loop {
            let rest = &self.bytes[self.at.min(self.bytes.len())..];
            let found = string_stop(rest).ok_or(Unsure)?;
            out.extend_from_slice(&rest[..found]);
            self.at += found + 1;
            if rest[found] == b'"' {
                return Ok(());
            }
            out.extend_from_slice(self.escape()?.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }

    /// The character of one escape, after its backslash.
    fn escape(&mut self) -> Step<char> {
        Ok(match self.next().ok_or(Unsure)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                let code = if (0xd800..0xdc00).contains(&first) {
                    // A high surrogate must be followed by an escaped low one.
                    if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                        return Err(Unsure);
                    }
                    let low = self.hex4()?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return Err(Unsure);
                    }
                    0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
                } else {
                    first
                };
                char::from_u32(code).ok_or(Unsure)?
            }
            _ => return Err(Unsure),
        })
    }

    fn hex4(&mut self) -> Step<u32> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or(Unsure)?;
        self.at += 4;
        let text = std::str::from_utf8(digits).map_err(|_| Unsure)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Unsure);
        }
        u32::from_str_radix(text, 16).map_err(|_| Unsure)
    }

    /// Reads the object or array opening at the cursor (`open` is `{` or `[`), no deeper than
    /// the general path allows: `member` reads each member from its first byte (an object's
    /// key, or an array's item); the commas between and the closing bracket are checked here.
    pub(super) fn each(&mut self, open: u8, depth: usize, mut member: impl FnMut(&mut Self) -> Step) -> Step {
        if self.peek() != Some(open) || depth >= MAX_NESTING {
            return Err(Unsure);
        }
        let close = if open == b'{' { b'}' } else { b']' };
        self.at += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.ws();
            member(self)?;
            self.ws();
            match self.next() {
                Some(b',') => {}
                Some(b) if b == close => return Ok(()),
                _ => return Err(Unsure),
            }
        }
    }

    /// The colon after an object's key, and the whitespace around it.
    pub(super) fn colon(&mut self) -> Step {
        self.ws();
        if self.next() != Some(b':') {
            return Err(Unsure);
        }
        self.ws();
        Ok(())
    }

    /// Steps over a value of no declared field, checking that it is well-formed and no deeper
    /// than the general path allows.
    pub(super) fn skip(&mut self, depth: usize) -> Step {
        match self.peek().ok_or(Unsure)? {
            b'"' => self.skip_string(),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            open @ (b'{' | b'[') => self.each(open, depth, |p| {
                if open == b'{' {
                    p.skip_string()?;
                    p.colon()?;
                }
                p.skip(depth + 1)
            }),
            _ => Err(Unsure),
        }
    }

    /// Steps over a string (a value or key of nothing declared), its escapes checked as the
    /// general path's decoder would.
    pub(super) fn skip_string(&mut self) -> Step {
        if self.next() != Some(b'"') {
            return Err(Unsure);
        }
        loop {
            let rest = &self.bytes[self.at.min(self.bytes.len())..];
            let found = string_stop(rest).ok_or(Unsure)?;
            self.at += found + 1;
            if rest[found] == b'"' {
                return Ok(());
            }
            self.escape()?;
        }
    }
}

/// Where a string's text stops: the offset of its closing quote or next backslash. (A raw
/// control character, which JSON does not allow in a string, is copied as it is: arrow-json
/// does the same.)
fn string_stop(rest: &[u8]) -> Option<usize> {
    memchr::memchr2(b'"', b'\\', rest)
}

/// Whether `token` is a JSON number, and if so whether it is an integer.
fn number_form(token: &[u8]) -> Option<bool> {
    let mut i = usize::from(token.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while token.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    let int_start = i;
    if !digits(&mut i) || (token[int_start] == b'0' && i - int_start > 1) {
        return None;
    }
    let mut integer = true;
    if token.get(i) == Some(&b'.') {
        i += 1;
        integer = false;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(token.get(i), Some(b'e' | b'E')) {
        i += 1;
        integer = false;
        if matches!(token.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    (i == token.len()).then_some(integer)
}
