//! Kubernetes resource quantities (`40Gi`, `8000Mi`, `16G`, `500m`, `1e3`).
//!
//! Only what placement needs: byte quantities rounded up to MiB, and whole counts.

use thiserror::Error;

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("not a Kubernetes quantity")]
    Malformed,
    #[error("negative quantity")]
    Negative,
    #[error("quantity too large")]
    TooLarge,
    #[error("not a whole number")]
    Fractional,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Parses a quantity into its value in base units (bytes for memory, units for counts).
///
/// Accepts the binary suffixes `Ki Mi Gi Ti Pi Ei`, the decimal suffixes `n u m k M G T P E`,
/// and decimal exponents (`1e3`, `2E6`).
pub fn parse_quantity(text: &str) -> Result<f64, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (sign, body) = match s.as_bytes()[0] {
        b'-' => (-1.0, &s[1..]),
        b'+' => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(QuantityError::Malformed);
    }
    let mantissa: f64 = number.parse().map_err(|_| QuantityError::Malformed)?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => MIB,
        "Gi" => MIB * 1024.0,
        "Ti" => MIB * MIB,
        "Pi" => MIB * MIB * 1024.0,
        "Ei" => MIB * MIB * MIB,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| QuantityError::Malformed)?;
            if !(-30..=30).contains(&power) {
                return Err(QuantityError::TooLarge);
            }
            10f64.powi(power)
        }
        _ => return Err(QuantityError::Malformed),
    };
    let value = sign * mantissa * multiplier;
    if !value.is_finite() {
        return Err(QuantityError::TooLarge);
    }
    if value < 0.0 && value != 0.0 {
        return Err(QuantityError::Negative);
    }
    Ok(value)
}

/// Parses a byte quantity and rounds it up to whole MiB.
pub fn parse_mib(text: &str) -> Result<u64, QuantityError> {
    let bytes = parse_quantity(text)?;
    let mib = (bytes / MIB).ceil();
    if mib > u64::MAX as f64 / 2.0 {
        return Err(QuantityError::TooLarge);
    }
    Ok(mib as u64)
}

/// Parses a whole count (`1`, `8`, `2000m` is 2); fractions are refused.
pub fn parse_count(text: &str) -> Result<u64, QuantityError> {
    let value = parse_quantity(text)?;
    if value.fract() != 0.0 {
        return Err(QuantityError::Fractional);
    }
    if value > u32::MAX as f64 {
        return Err(QuantityError::TooLarge);
    }
    Ok(value as u64)
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
    }

    #[test]
    fn counts_are_whole() {
        assert_eq!(parse_count("2"), Ok(2));
        assert_eq!(parse_count("2000m"), Ok(2));
        assert_eq!(parse_count("500m"), Err(QuantityError::Fractional));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "abc", "Gi", "1.2.3Gi", "12XB", "--1", "1e999", "1e"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(parse_mib("-4Gi"), Err(QuantityError::Negative));
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(format_mib(40 * 1024), "40Gi");
        assert_eq!(format_mib(1536), "1536Mi");
        assert_eq!(format_mib(15360), "15Gi");
        assert_eq!(format_mib(15109), "14.8Gi");
    }
}
