//! How an optimizer parameter reaches MXNet's kernels (R70): Python passes each one as the text
//! `str(x)` of its `f64` (the shortest decimal that reads back, in exponent form below 1e-4 or
//! from 1e16), and dmlc-core parses that text into a `float` with its own parser, which is not
//! correctly rounded: an exponent-form value is its digits parsed as a `float`, then divided or
//! multiplied by a power of ten also held in `float`, so it can land one ulp away from the
//! nearest `float` (for example Adam's bias-corrected learning rates below 1e-4). kvstore
//! reproduces that parse, so its kernels see the very parameters MXNet's see.

/// The `float` MXNet's kernels receive for the Python `f64` parameter `x`.
///
/// ```
/// use kvstore_spec::optimizer::kernel_param;
/// assert_eq!(kernel_param(0.5), 0.5f32);
/// assert_eq!(kernel_param(0.1), 0.1f32);
/// ```
pub fn kernel_param(x: f64) -> f32 {
    if !x.is_finite() {
        // Refused by validation; keep the plain conversion rather than parse "inf" or "nan".
        return x as f32;
    }
    let negative = x.is_sign_negative();
    // `{:e}` prints the shortest digits that read back, as Python's repr chooses them.
    let text = format!("{:e}", x.abs());
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let value = if (-4..16).contains(&exponent) {
        // Positional: `digits` with the point after `exponent + 1` of them.
        let point = exponent + 1;
        let (int_part, frac_part) = if point <= 0 {
            (
                String::from("0"),
                "0".repeat(point.unsigned_abs() as usize) + &digits,
            )
        } else {
            let point = point as usize;
            let padded = format!("{digits:0<point$}");
            (padded[..point].to_string(), padded[point..].to_string())
        };
        // Python writes at least one fraction digit ("1.0").
        parse(&int_part, &frac_part, 0)
    } else {
        let (int_part, frac_part) = digits.split_at(1);
        parse(int_part, frac_part, exponent)
    };
    if negative {
        -value
    } else {
        value
    }
}

/// dmlc-core's `ParseFloat<float>` of `int_part.frac_part e exponent` (non-negative).
fn parse(int_part: &str, frac_part: &str, exponent: i32) -> f32 {
    let mut value = 0.0f32;
    for d in int_part.bytes() {
        value = value * 10.0 + f32::from(d - b'0');
    }
    if !frac_part.is_empty() {
        // At most 19 fraction digits count, summed exactly, then divided in double.
        let (mut numerator, mut power) = (0u64, 1u64);
        for d in frac_part.bytes().take(19) {
            numerator = numerator * 10 + u64::from(d - b'0');
            power *= 10;
        }
        value += (numerator as f64 / power as f64) as f32;
    }
    if exponent != 0 {
        let mut remaining = exponent.unsigned_abs();
        let mut scale = 1.0f32;
        while remaining >= 8 {
            scale = (f64::from(scale) * 1e8) as f32;
            remaining -= 8;
        }
        while remaining > 0 {
            scale = (f64::from(scale) * 10.0) as f32;
            remaining -= 1;
        }
        value = if exponent < 0 {
            value / scale
        } else {
            value * scale
        };
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r70_kernel_parameters_are_parsed_as_mxnet_parses_pythons_text() {
        // Positional values parse to the nearest float.
        for x in [
            0.5, 0.1, 0.9, 0.999, 0.001, 0.0001, 0.3, 1.0, 10.0, 0.0078125, 1234.5678,
        ] {
            assert_eq!(kernel_param(x), x as f32, "{x}");
        }
        assert_eq!(kernel_param(-0.25), -0.25);
        assert_eq!(kernel_param(0.0), 0.0);
        // Exponent form: the mantissa as a float over a float power of ten. The bits were
        // read back from MXNet 1.9.1 (`sgd_update(w=0, g=1, lr=x)` gives `-lr`); the first
        // and the last are one ulp off the nearest float.
        for (x, mxnet) in [
            (2.0768763e-5, 0x37ae3895u32),
            (1e-8, 0x322bcc77),
            (3.3e-5, 0x380a697b),
            (7.1e-6, 0x36ee3c89),
            (4.1099999999999996e-7, 0x34dca769),
            (0.00012345, 0x3901725b),
            (1.2345678901234568e-5, 0x374f2049),
        ] {
            assert_eq!(kernel_param(x).to_bits(), mxnet, "{x}");
        }
        assert_ne!(kernel_param(2.0768763e-5), 2.0768763e-5f32);
        // And it can differ from the nearest float by one ulp.
        let differs = (1..2000)
            .map(|i| f64::from(i) * 1.37e-7)
            .filter(|&x| kernel_param(x) != x as f32)
            .count();
        assert!(differs > 0);
    }
}
