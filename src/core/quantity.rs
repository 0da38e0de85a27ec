//! Kubernetes resource quantities (`40Gi`, `8000Mi`, `16G`, `500m`, `1e3`).
//!
//! Exact: a quantity is held as integer digits and exponents, never as a float, and rounded once
//! (up) into what placement needs: bytes as whole MiB, CPU as millicores, whole counts.

use thiserror::Error;

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("empty quantity")]
    Empty,
    /// Not a Kubernetes quantity.
    #[error("not a Kubernetes quantity")]
    Malformed,
    /// The quantity is negative.
    #[error("negative quantity")]
    Negative,
    /// Too large to hold (counts stop at `u32::MAX`).
    #[error("quantity too large")]
    TooLarge,
    /// More than 38 significant digits, or an exponent beyond ±38.
    #[error("more than 38 significant digits or an exponent beyond ±38")]
    Precision,
    /// A whole number was needed.
    #[error("not a whole number")]
    Fractional,
}

/// A non-negative quantity, exactly: `digits × 10^decimal_exponent × 2^binary_exponent`.
///
/// Kubernetes quantities are decimal numbers with a decimal or binary suffix; holding the digits
/// and both exponents keeps every spelling exact (`9m` is 9 millis, `0.1Gi` is 107374182.4
/// bytes), and conversions round once, at the end, the way the API server does (up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    digits: u128,
    decimal_exponent: i32,
    binary_exponent: u32,
}

/// Decimal exponents (and significant digits) beyond this are refused: 10^38 still fits a u128.
const MAX_DECIMAL_EXPONENT: i32 = 38;

fn pow10(exponent: u32) -> Option<u128> {
    10u128.checked_pow(exponent)
}

impl Quantity {
    /// The value times `multiplier / divisor`, as an exact fraction (numerator, denominator).
    fn scaled(&self, multiplier: u64, divisor: u64) -> Result<(u128, u128), QuantityError> {
        let too_large = QuantityError::TooLarge;
        let mut numerator = self
            .digits
            .checked_mul(u128::from(multiplier))
            .ok_or(too_large.clone())?;
        let mut denominator = u128::from(divisor.max(1));
        if self.digits == 0 {
            return Ok((0, 1));
        }
        let power = pow10(self.decimal_exponent.unsigned_abs());
        if self.decimal_exponent >= 0 {
            numerator = power
                .and_then(|p| numerator.checked_mul(p))
                .ok_or(too_large.clone())?;
        } else {
            denominator = power
                .and_then(|p| denominator.checked_mul(p))
                .ok_or(QuantityError::Precision)?;
        }
        // 2^b: shift the numerator, or cancel powers of two from the denominator first.
        let mut shift = self.binary_exponent;
        while shift > 0 && denominator.is_multiple_of(2) {
            denominator /= 2;
            shift -= 1;
        }
        if shift > 0 {
            if numerator.leading_zeros() < shift {
                return Err(too_large);
            }
            numerator <<= shift;
        }
        Ok((numerator, denominator))
    }

    /// `value × multiplier / divisor`, rounded up (as the API server rounds `Value()` and
    /// `MilliValue()`), in a u64.
    pub fn ceil_scaled(&self, multiplier: u64, divisor: u64) -> Result<u64, QuantityError> {
        let (numerator, denominator) = self.scaled(multiplier, divisor)?;
        u64::try_from(numerator.div_ceil(denominator)).map_err(|_| QuantityError::TooLarge)
    }

    /// `value × multiplier / divisor` when that is a whole number.
    pub fn exact_scaled(&self, multiplier: u64, divisor: u64) -> Result<u64, QuantityError> {
        let (numerator, denominator) = self.scaled(multiplier, divisor)?;
        if !numerator.is_multiple_of(denominator) {
            return Err(QuantityError::Fractional);
        }
        u64::try_from(numerator / denominator).map_err(|_| QuantityError::TooLarge)
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.digits == 0
    }
}

/// Parses a quantity exactly.
///
/// Accepts the binary suffixes `Ki Mi Gi Ti Pi Ei`, the decimal suffixes `n u m k M G T P E`,
/// and decimal exponents (`1e3`, `2E6`, `5e-1`), with an optional sign (a negative non-zero
/// quantity is refused).
pub fn parse_quantity(text: &str) -> Result<Quantity, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError::Malformed);
    }
    let (decimal, binary) = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        exp if exp.starts_with(['e', 'E']) => {
            let digits = exp[1..].trim_start_matches(['+', '-']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Malformed);
            }
            let out_of_range = if exp[1..].starts_with('-') {
                QuantityError::Precision
            } else {
                QuantityError::TooLarge
            };
            match exp[1..].parse::<i32>() {
                Ok(power) if power.abs() <= MAX_DECIMAL_EXPONENT => (power, 0),
                _ => return Err(out_of_range),
            }
        }
        _ => return Err(QuantityError::Malformed),
    };
    // The significant digits: leading zeros carry nothing, trailing zeros go to the exponent.
    let all = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    let zeros = (significant.len() - trimmed.len()) as i32;
    if negative && !trimmed.is_empty() {
        return Err(QuantityError::Negative);
    }
    if trimmed.len() > MAX_DECIMAL_EXPONENT as usize {
        return Err(QuantityError::Precision);
    }
    let digits: u128 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().map_err(|_| QuantityError::Malformed)?
    };
    Ok(Quantity {
        digits,
        decimal_exponent: decimal + zeros - fraction.len() as i32,
        binary_exponent: binary,
    })
}

/// Parses a byte quantity and rounds it up to whole MiB.
pub fn parse_mib(text: &str) -> Result<u64, QuantityError> {
    parse_quantity(text)?.ceil_scaled(1, 1 << 20)
}

/// Parses a whole count (`1`, `8`, `2000m` is 2); fractions are refused.
pub fn parse_count(text: &str) -> Result<u64, QuantityError> {
    let count = parse_quantity(text)?.exact_scaled(1, 1)?;
    if count > u64::from(u32::MAX) {
        return Err(QuantityError::TooLarge);
    }
    Ok(count)
}

/// Parses a CPU quantity into millicores, rounded up (`9m` is 9, `0.1` is 100, `1u` is 1).
pub fn parse_millis(text: &str) -> Result<u64, QuantityError> {
    parse_quantity(text)?.ceil_scaled(1000, 1)
}

/// Formats MiB the way people read VRAM: `40Gi` when whole GiB, else `1536Mi`.
pub fn format_mib(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else if mib >= 10 * 1024 {
        format!("{:.1}Gi", mib as f64 / 1024.0)
    } else {
        format!("{mib}Mi")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_mib("40Gi"), Ok(40 * 1024));
        assert_eq!(parse_mib("8000Mi"), Ok(8000));
        // 16G = 16e9 bytes = 15258.79 MiB, rounded up
        assert_eq!(parse_mib("16G"), Ok(15259));
        assert_eq!(parse_mib("1Ti"), Ok(1024 * 1024));
        assert_eq!(parse_mib("1.5Gi"), Ok(1536));
        assert_eq!(parse_mib("1e9"), Ok(954));
        assert_eq!(parse_mib("0"), Ok(0));
        assert_eq!(parse_mib(".5Gi"), Ok(512));
        assert_eq!(parse_mib("1.Gi"), Ok(1024));
        assert_eq!(parse_mib("0.1Gi"), Ok(103), "107374182.4 bytes");
        assert_eq!(parse_mib("1048577"), Ok(2), "one byte over 1 MiB");
        assert_eq!(parse_mib("1Ei"), Ok(1 << 40));
    }

    #[test]
    fn millis_are_exact() {
        // f64 read 9m as 9.000000000000002 millis, rounded up to 10.
        assert_eq!(parse_millis("9m"), Ok(9));
        assert_eq!(parse_millis("0.1"), Ok(100));
        assert_eq!(parse_millis("4"), Ok(4000));
        assert_eq!(parse_millis("1u"), Ok(1), "rounded up, as MilliValue()");
        assert_eq!(parse_millis("1.0001"), Ok(1001));
        assert_eq!(parse_millis("2e-3"), Ok(2));
        assert_eq!(parse_millis("100000000m"), Ok(100_000_000));
    }

    #[test]
    fn counts_are_whole() {
        assert_eq!(parse_count("2"), Ok(2));
        assert_eq!(parse_count("2000m"), Ok(2));
        assert_eq!(parse_count("500m"), Err(QuantityError::Fractional));
        assert_eq!(parse_count("1.5"), Err(QuantityError::Fractional));
        assert_eq!(parse_count("1e1"), Ok(10));
        assert_eq!(parse_count("1k"), Ok(1000));
    }

    #[test]
    fn refuses_garbage() {
        for (bad, error) in [
            ("", QuantityError::Empty),
            ("abc", QuantityError::Malformed),
            ("Gi", QuantityError::Malformed),
            (".", QuantityError::Malformed),
            ("1.2.3Gi", QuantityError::Malformed),
            ("12XB", QuantityError::Malformed),
            ("--1", QuantityError::Malformed),
            ("1e", QuantityError::Malformed),
            ("1e+", QuantityError::Malformed),
            ("1e1.5", QuantityError::Malformed),
            ("1e999", QuantityError::TooLarge),
            ("1e-39", QuantityError::Precision),
            ("-4Gi", QuantityError::Negative),
            (
                "1.0000000000000000000000000000000000000001",
                QuantityError::Precision,
            ),
        ] {
            assert_eq!(parse_quantity(bad), Err(error), "{bad:?}");
        }
        assert_eq!(
            parse_mib("99999999999999999999999999Ei"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(parse_count("5e9"), Err(QuantityError::TooLarge));
        assert_eq!(
            parse_mib("1000000000000000000000000000000000000000000000000"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(
            parse_millis("0.0000000000000000000000000000000000001"),
            Ok(1)
        );
        assert_eq!(parse_mib("-0"), Ok(0));
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(format_mib(40 * 1024), "40Gi");
        assert_eq!(format_mib(1536), "1536Mi");
        assert_eq!(format_mib(15360), "15Gi");
        assert_eq!(format_mib(15109), "14.8Gi");
    }

    #[test]
    fn every_millicore_spelling_below_40000_is_exact() {
        for millis in 0..40_000u64 {
            assert_eq!(parse_millis(&format!("{millis}m")), Ok(millis));
            let cores = format!("{}.{:03}", millis / 1000, millis % 1000);
            assert_eq!(parse_millis(&cores), Ok(millis), "{cores}");
        }
    }

    /// A quantity spelt from a known exact value, with what it must read as.
    #[derive(Debug)]
    struct Spelling {
        text: String,
        /// The value is `numerator / denominator` base units.
        numerator: u128,
        denominator: u128,
    }

    /// Random spellings: digits with a fraction, zero padding, a sign, any suffix or exponent.
    fn spellings() -> impl Strategy<Value = Spelling> {
        let suffixes: Vec<(String, i32, u32)> = [
            ("", 0, 0),
            ("n", -9, 0),
            ("u", -6, 0),
            ("m", -3, 0),
            ("k", 3, 0),
            ("M", 6, 0),
            ("G", 9, 0),
            ("T", 12, 0),
            ("Ki", 0, 10),
            ("Mi", 0, 20),
            ("Gi", 0, 30),
            ("Ti", 0, 40),
        ]
        .into_iter()
        .map(|(s, d, b)| (s.to_string(), d, b))
        .chain((-9..=9).flat_map(|p| [(format!("e{p}"), p, 0), (format!("E{p:+}"), p, 0)]))
        .collect();
        (
            0u64..=1_000_000,
            "[0-9]{0,9}",
            proptest::sample::select(suffixes),
            "(\\+)?",
            "0{0,2}",
            "0{0,2}",
            any::<bool>(),
        )
            .prop_map(
                |(whole, fraction, (suffix, decimal, binary), sign, lead, trail, point)| {
                    let fraction = if point || !fraction.is_empty() {
                        format!("{fraction}{trail}")
                    } else {
                        fraction
                    };
                    let text = if point || !fraction.is_empty() {
                        format!("{sign}{lead}{whole}.{fraction}{suffix}")
                    } else {
                        format!("{sign}{lead}{whole}{suffix}")
                    };
                    let scale = 10u128.pow(fraction.len() as u32);
                    let digits = u128::from(whole) * scale + fraction.parse::<u128>().unwrap_or(0);
                    let up = 10u128.pow(decimal.max(0) as u32);
                    let down = 10u128.pow((-decimal).max(0) as u32);
                    Spelling {
                        text,
                        numerator: (digits * up) << binary,
                        denominator: scale * down,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn reads_every_spelling_exactly(spelling in spellings()) {
            let Spelling { text, numerator, denominator } = spelling;
            let ceil = |n: u128, d: u128| u64::try_from(n.div_ceil(d)).map_err(|_| QuantityError::TooLarge);
            prop_assert_eq!(parse_millis(&text), ceil(numerator * 1000, denominator), "{}", text);
            prop_assert_eq!(parse_mib(&text), ceil(numerator, denominator << 20), "{}", text);
            let count = if numerator % denominator != 0 {
                Err(QuantityError::Fractional)
            } else if numerator / denominator > u128::from(u32::MAX) {
                Err(QuantityError::TooLarge)
            } else {
                Ok((numerator / denominator) as u64)
            };
            prop_assert_eq!(parse_count(&text), count, "{}", text);
        }
    }
}
