//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`, `2G`) as integers.
//!
//! The grammar follows `k8s.io/apimachinery/pkg/api/resource`: a signed decimal number
//! followed by a binary SI suffix (`Ki` … `Ei`), a decimal SI suffix (`n u m "" k M G T P
//! E`) or a decimal exponent (`e3`, `E-2`). Values are exact (integer arithmetic); the
//! milli-value is rounded up as upstream's `MilliValue` does. Values too large for `i64`
//! saturate.

/// The most digits a quantity's number may have (more is not a real request).
const MAX_DIGITS: usize = 36;

/// Parses `s` into thousandths of its unit, rounded up (`"250m"` → 250, `"1"` → 1000,
/// `"1Ki"` → 1_024_000). `None` if `s` is not a quantity.
pub fn parse_milli(s: &str) -> Option<i64> {
    let q = Parsed::new(s.trim())?;
    Some(q.scaled(3))
}

/// Parses `s` into whole units, rounded up (`"1Gi"` → 1_073_741_824, `"1.5"` → 2,
/// `"100m"` → 1). `None` if `s` is not a quantity.
pub fn parse_value(s: &str) -> Option<i64> {
    let q = Parsed::new(s.trim())?;
    Some(q.scaled(0))
}

/// A parsed quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

impl Parsed {
    fn new(s: &str) -> Option<Parsed> {
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if let Some(&c) = bytes.first() {
            if c == b'+' || c == b'-' {
                negative = c == b'-';
                i = 1;
            }
        }
        let mut mantissa: i128 = 0;
        let mut digits = 0usize;
        let mut frac = 0i32;
        let mut seen_dot = false;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_digit() {
                if digits > 0 || c != b'0' {
                    digits += 1;
                }
                if digits > MAX_DIGITS {
                    return None;
                }
                mantissa = mantissa * 10 + i128::from(c - b'0');
                if seen_dot {
                    frac += 1;
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        let number = &s[usize::from(negative || s.starts_with('+'))..i];
        if !number.bytes().any(|c| c.is_ascii_digit()) {
            return None;
        }
        let (exp10, exp2) = suffix(&s[i..])?;
        Some(Parsed { negative, mantissa, exp10: exp10 - frac, exp2 })
    }

    /// The value times `10^extra10`, rounded up, saturated to `i64`.
    fn scaled(&self, extra10: i32) -> i64 {
        let mut num = self.mantissa;
        for _ in 0..self.exp2 {
            num = match num.checked_mul(2) {
                Some(n) => n,
                None => return self.saturate(),
            };
        }
        let e = self.exp10 + extra10;
        let magnitude = if e >= 0 {
            let mut n = num;
            for _ in 0..e {
                n = match n.checked_mul(10) {
                    Some(n) => n,
                    None => return self.saturate(),
                };
            }
            n
        } else {
            let mut den: i128 = 1;
            for _ in 0..(-e) {
                den = match den.checked_mul(10) {
                    Some(d) => d,
                    // The divisor exceeds any mantissa: a positive value rounds up to 1.
                    None => return i64::from(num != 0 && !self.negative),
                };
            }
            if self.negative {
                // Rounding up a negative value truncates its magnitude.
                num / den
            } else {
                (num + den - 1) / den
            }
        };
        let signed = if self.negative { -magnitude } else { magnitude };
        i64::try_from(signed).unwrap_or(if self.negative { i64::MIN } else { i64::MAX })
    }

    fn saturate(&self) -> i64 {
        if self.mantissa == 0 {
            0
        } else if self.negative {
            i64::MIN
        } else {
            i64::MAX
        }
    }
}

/// The scale of a suffix as (decimal exponent, binary exponent).
fn suffix(s: &str) -> Option<(i32, u32)> {
    Some(match s {
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
        _ => {
            let rest = s.strip_prefix(['e', 'E'])?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            (rest.parse::<i32>().ok()?, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_millis() {
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("250m"), Some(250));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli(".5"), Some(500));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2k"), Some(2_000_000));
        assert_eq!(parse_milli("100u"), Some(1)); // 0.1m rounds up
        assert_eq!(parse_milli("1n"), Some(1));
        assert_eq!(parse_milli("0"), Some(0));
        assert_eq!(parse_milli("0m"), Some(0));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1E-3"), Some(1));
        assert_eq!(parse_milli("+8"), Some(8000));
        assert_eq!(parse_milli("-1"), Some(-1000));
    }

    #[test]
    fn memory_bytes() {
        assert_eq!(parse_value("1Ki"), Some(1024));
        assert_eq!(parse_value("128Mi"), Some(128 << 20));
        assert_eq!(parse_value("32Gi"), Some(32 << 30));
        assert_eq!(parse_value("1Ti"), Some(1 << 40));
        assert_eq!(parse_value("1Pi"), Some(1 << 50));
        assert_eq!(parse_value("1Ei"), Some(1 << 60));
        assert_eq!(parse_value("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_value("1k"), Some(1000));
        assert_eq!(parse_value("1M"), Some(1_000_000));
        assert_eq!(parse_value("1G"), Some(1_000_000_000));
        assert_eq!(parse_value("1T"), Some(1_000_000_000_000));
        assert_eq!(parse_value("1P"), Some(1_000_000_000_000_000));
        assert_eq!(parse_value("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_value("12e6"), Some(12_000_000));
        assert_eq!(parse_value("100m"), Some(1));
        assert_eq!(parse_value("129e6"), Some(129_000_000));
        assert_eq!(parse_value("123456789"), Some(123_456_789));
    }

    #[test]
    fn saturates_and_rejects() {
        assert_eq!(parse_value("100Ei"), Some(i64::MAX));
        assert_eq!(parse_milli("9999999999999999E"), Some(i64::MAX));
        assert_eq!(parse_milli("1e-40"), Some(1));
        for bad in ["", "m", "Ki", "1x", "1KiB", "1.2.3", "--1", "1e", "e3", "1 Gi", "1ki", "1e99999"] {
            assert_eq!(parse_milli(bad), None, "{bad:?}");
        }
    }
}
