//! Number text read by its digits, never through a float: whether a JSON number is whole, and
//! whether a decimal's text fits `decimal(p,s)` — and reaches arrow-cast's decimal parser only
//! in forms that parser reads exactly.
//!
//! Used by the pre-check ([`crate::precheck`]), the one-pass decoder and the Avro decoder, so
//! every path refuses the same records with the same words.

/// Whether a JSON number's text is a whole number (`17`, `17.0`, `1.5e1`, `2E3`), exactly, by
/// its digits: no float is involved.
pub(crate) fn whole_number(token: &[u8]) -> bool {
    let Some(n) = Digits::parse(std::str::from_utf8(token).unwrap_or_default()) else { return false };
    n.after_point() == 0
}

/// Whether a decimal's text (a JSON number, or text holding one) fits `decimal(p,s)` without
/// losing a digit; why not otherwise. Text that is no number is refused here too: arrow-cast
/// reads some of it as a number (`e5`, `.E1` as 0) and overflows on some (a digit count kept
/// in a byte, an exponent in an `i16`).
pub(crate) fn decimal_fits(text: &str, precision: u8, scale: i8) -> Result<(), String> {
    // arrow-cast's decimal parser keeps the exponent in an `i16` and overflows on a long one
    // (`1e99999` would be read as another number, or panic): any exponent beyond what a
    // decimal's 76 digits could use is refused before it gets there.
    if let Some(at) = text.find(['e', 'E'])
        && let exponent = text[at + 1..].trim_start_matches(['+', '-']).trim_start_matches('0')
        && exponent.bytes().take_while(u8::is_ascii_digit).count() > 3
    {
        return Err(format!("{text} has an exponent beyond ±999; the record is refused"));
    }
    let Some(n) = Digits::parse(text) else {
        return Err(format!("{} is not a decimal number", Shortened(text)));
    };
    // With an exponent, arrow-cast gathers every digit of the mantissa into the decimal's
    // integer before it moves the point, and past the integer's width that wraps without a
    // word: `1.5` and 47 zeros `e2` came out as -0.01, `1` and 50 zeros `e-49` as 0.01. A mantissa
    // that the integer holds whatever its digits is let through: 38 digits for decimal(p ≤ 38)
    // (an i128), 76 above (an i256).
    let width = if precision <= 38 { 38 } else { 76 };
    if n.exponent && n.int.len() + n.frac.len() > width {
        return Err(format!(
            "{} has an exponent and more than {width} digits before it; the record is refused",
            Shortened(text)
        ));
    }
    if n.after_point() > i64::from(scale) {
        return Err(format!(
            "{text} has more than {scale} digits after the point; the record is refused rather than rounded"
        ));
    }
    let before = i64::from(precision) - i64::from(scale);
    if n.before_point() > before {
        return Err(format!("{text} has more than {before} digits before the point"));
    }
    Ok(())
}

/// A number's significant digits and where its point falls among them.
pub(crate) struct Digits<'a> {
    /// The mantissa's digits before and after its point.
    int: &'a [u8],
    frac: &'a [u8],
    /// How many of the digits come before the point, once the exponent is applied (may be
    /// negative or past the end).
    point: i64,
    /// Whether the number is written with an exponent.
    exponent: bool,
}

impl<'a> Digits<'a> {
    pub(crate) fn parse(text: &'a str) -> Option<Digits<'a>> {
        let body = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, written, exponent) = match body.find(['e', 'E']) {
            Some(at) => (&body[..at], true, body[at + 1..].parse::<i64>().ok()?),
            None => (body, false, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || exponent.unsigned_abs() > 10_000
        {
            return None;
        }
        Some(Digits {
            int: int.as_bytes(),
            frac: frac.as_bytes(),
            point: int.len() as i64 + exponent,
            exponent: written,
        })
    }

    fn all(&self) -> impl Iterator<Item = u8> + '_ {
        self.int.iter().chain(self.frac).copied()
    }

    /// Digits from the first non-zero one to the last.
    pub(crate) fn significant(&self) -> i64 {
        let first = self.all().position(|d| d != b'0');
        let last = self.all().enumerate().filter(|(_, d)| *d != b'0').map(|(i, _)| i).last();
        match (first, last) {
            (Some(f), Some(l)) => (l - f + 1) as i64,
            _ => 0,
        }
    }

    /// Digits after the point up to the last non-zero one.
    fn after_point(&self) -> i64 {
        let last = self.all().enumerate().filter(|(_, d)| *d != b'0').map(|(i, _)| i as i64 + 1).last();
        last.map_or(0, |end| (end - self.point).max(0))
    }

    /// Digits before the point from the first non-zero one.
    fn before_point(&self) -> i64 {
        let first = self.all().position(|d| d != b'0').map(|i| i as i64);
        first.map_or(0, |start| (self.point - start).max(0))
    }
}

/// A number's text in a message: whole up to 80 characters, else its start and its length.
struct Shortened<'a>(&'a str);

impl std::fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(60) {
            Some((cut, _)) if self.0.len() > 80 => write!(f, "{}… ({} bytes)", &self.0[..cut], self.0.len()),
            _ => f.write_str(self.0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_known_by_their_digits() {
        for whole in ["17", "17.0", "17.000", "1.5e1", "2E3", "-4.0", "1e0", "120e-1", "0"] {
            assert!(whole_number(whole.as_bytes()), "{whole}");
        }
        for part in ["17.9", "1.25e1", "1e-1", "0.5", "-0.01"] {
            assert!(!whole_number(part.as_bytes()), "{part}");
        }
    }

    #[test]
    fn decimals_keep_every_digit_or_are_refused() {
        for (text, fits) in [
            ("12345678901234.5678", true),
            ("1.50", true),
            ("1.500000", true),
            ("-0.0001", true),
            ("1.5e3", true),
            ("12345e-4", true),
            ("0.00001", false),
            ("12345678901234567.1", false),
            ("1234567890123456.1", true),
            ("1e15", true),
            ("1e16", false),
            ("0", true),
            ("-0.0000", true),
        ] {
            assert_eq!(decimal_fits(text, 20, 4).is_ok(), fits, "{text}");
        }
        // Text arrow-cast would read as 0, or overflow on (found by fuzzing), is no number.
        for text in ["not a number", "e5", ".E1", "-e3", "e00+0400000000000004", "1e5+", ""] {
            assert_eq!(decimal_fits(text, 10, 2), Err(format!("{text} is not a decimal number")));
        }
        assert_eq!(decimal_fits("0e999", 10, 2), Ok(()));
        for long in ["1e99999", "0E-65536", "1.5e+0001000", "e12345678.99"] {
            assert!(decimal_fits(long, 10, 2).unwrap_err().contains("exponent beyond"), "{long}");
        }
        // Mantissas arrow-cast would wrap: 150.00 and 10.00 written long.
        for wide in [format!("1.5{}e2", "0".repeat(47)), format!("1{}e-49", "0".repeat(50))] {
            let why = decimal_fits(&wide, 10, 2).unwrap_err();
            assert!(why.contains("more than 38 digits before it"), "{why}");
        }
        assert_eq!(decimal_fits(&format!("1.5{}e2", "0".repeat(36)), 10, 2), Ok(()));
        assert_eq!(decimal_fits(&format!("1.5{}", "0".repeat(300)), 10, 2), Ok(()), "no exponent: read exactly");
        let why = decimal_fits(&format!("{}.t4", "5".repeat(300)), 10, 2).unwrap_err();
        assert_eq!(why, format!("{}… (303 bytes) is not a decimal number", "5".repeat(60)));
    }

    /// Every decimal the pre-check lets through is read by arrow-cast as the number it is:
    /// random mantissas, exponents, precisions and scales, against exact integer arithmetic.
    #[test]
    fn decimals_let_through_are_read_exactly() {
        use arrow_array::types::Decimal128Type;
        use arrow_cast::parse::parse_decimal;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let (mut checked, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let digit = |next: &mut dyn FnMut(u64) -> u64| {
                if next(3) == 0 { b'0' } else { b'0' + next(10) as u8 }
            };
            let int: Vec<u8> = (0..next(24)).map(|_| digit(&mut next)).collect();
            let frac: Vec<u8> = (0..next(30)).map(|_| digit(&mut next)).collect();
            let mut text = String::from_utf8(int).unwrap();
            if !frac.is_empty() || next(2) == 0 {
                text.push('.');
                text.push_str(std::str::from_utf8(&frac).unwrap());
            }
            if next(2) == 0 {
                text.push_str(&format!("e{}", next(90) as i64 - 45));
            }
            let scale = next(8) as i8;
            let precision = (scale as u64 + 1 + next(38 - scale as u64)) as u8;
            let (Some(n), Ok(())) = (Digits::parse(&text), decimal_fits(&text, precision, scale)) else { continue };
            // The exact value times 10^scale, from the significant digits alone.
            let all: Vec<u8> = n.all().collect();
            let (Some(first), Some(last)) = (all.iter().position(|d| *d != b'0'), all.iter().rposition(|d| *d != b'0'))
            else {
                if let Ok(got) = parse_decimal::<Decimal128Type>(&text, precision, scale) {
                    assert_eq!(got, 0, "{text}");
                }
                continue;
            };
            let mut want: i128 = all[first..=last].iter().fold(0, |v, d| v * 10 + i128::from(d - b'0'));
            let shift = n.point - (last as i64 + 1) + i64::from(scale);
            assert!(shift >= 0, "{text}: the pre-check let through more digits than the scale");
            want *= 10_i128.pow(shift as u32);
            match parse_decimal::<Decimal128Type>(&text, precision, scale) {
                Ok(got) => assert_eq!(got, want, "{text} as decimal({precision},{scale})"),
                // arrow-cast counts a fraction's leading zeros as digits when an exponent
                // follows (`0.0043e4` does not fit decimal(4,1) by its count): such a record is
                // refused, by name, never changed.
                Err(_) => {
                    let zeros_first = n.int.iter().all(|d| *d == b'0') && n.frac.first() == Some(&b'0');
                    assert!(zeros_first && n.exponent, "{text} as decimal({precision},{scale}) refused");
                    refused += 1;
                }
            }
            checked += 1;
        }
        assert!(checked > 10_000 && refused < checked / 100, "{checked} numbers fitted, {refused} refused");
    }
}
