//! Byte sizes as users write them in specs: `"1GiB"`, `"512 MiB"`, `"10G"` or a plain integer;
//! and link rates, as `tc` writes them: `"200mbit"`.
//!
//! Owns parsing and canonical rendering only; it knows nothing about where sizes are used.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Serialized as the canonical human string (`"1GiB"`) when exact, else bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

const UNITS: [(&str, u64); 13] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

impl Size {
    /// The largest size anything takes: QEMU's block layer and LVM stop at 2^63 - 1 bytes
    /// (`qemu-img create` says "Must be between 0 and 9223372036854775807").
    pub const MAX: Size = Size(i64::MAX as u64);

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"1GiB"`, `"1.5 GiB"`, `"10G"` (binary), `"10GB"` (decimal) or `"4096"`.
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        if num.is_empty() {
            return Err(format!(
                "invalid size {text:?}: expected a number with an optional unit, like \"1GiB\""
            ));
        }
        let mult = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit))
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    format!("invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")
                })?
        };
        let value = if let Some((int, frac)) = num.split_once('.') {
            let int: u64 = int.parse().unwrap_or(0);
            let digits = frac.len().min(9) as u32;
            let frac: u64 = frac[..digits as usize]
                .parse()
                .map_err(|_| format!("invalid size {text:?}"))?;
            int.checked_mul(mult).and_then(|v| {
                v.checked_add((frac as u128 * mult as u128 / 10u128.pow(digits)) as u64)
            })
        } else {
            num.parse::<u64>()
                .map_err(|_| format!("invalid size {text:?}"))?
                .checked_mul(mult)
        };
        value
            .map(Size)
            .and_then(Size::within)
            .ok_or_else(|| format!("invalid size {text:?}: too large (at most 8EiB - 1B, 9223372036854775807 bytes, what QEMU and LVM take)"))
    }

    fn within(self) -> Option<Size> {
        (self <= Size::MAX).then_some(self)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in UNITS[1..5].iter().rev() {
            if self.0 >= *mult && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"1GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Size::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: a number of bytes, or a string with a unit such as \"512MiB\", \"1GiB\", \"10GB\".",
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": 9223372036854775807_u64 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B?|B)?\\s*$" }
            ]
        })
    }
}

/// A link rate in bits per second, written as `tc` writes it: `"200mbit"`, `"1gbit"`,
/// `"10gbit"`, `"1.5gbit"` (decimal units) or a plain number of bits per second.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Rate(pub f64);

const RATE_UNITS: [(&str, f64); 5] = [
    ("bit", 1.0),
    ("kbit", 1e3),
    ("mbit", 1e6),
    ("gbit", 1e9),
    ("tbit", 1e12),
];

impl Rate {
    /// The slowest link the model takes: 1kbit.
    pub const MIN: Rate = Rate(1e3);
    /// The fastest: 10tbit.
    pub const MAX: Rate = Rate(1e13);

    /// Bytes per second on the wire.
    pub fn bytes_per_sec(self) -> f64 {
        self.0 / 8.0
    }

    pub fn parse(text: &str) -> Result<Rate, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        let bad = || {
            format!("invalid rate {text:?}: expected a number of bits per second with an optional unit, like \"200mbit\" or \"1gbit\"")
        };
        let value: f64 = num.parse().map_err(|_| bad())?;
        let mult = if unit.is_empty() {
            1.0
        } else {
            RATE_UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit))
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    format!("invalid rate {text:?}: unknown unit {unit:?} (use bit, kbit, mbit, gbit or tbit)")
                })?
        };
        let bits = value * mult;
        if !(Rate::MIN.0..=Rate::MAX.0).contains(&bits) {
            return Err(format!(
                "invalid rate {text:?}: use {} to {} (slower than a modem carries no disk image; no NIC is faster)",
                Rate::MIN,
                Rate::MAX
            ));
        }
        Ok(Rate(value * mult))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in RATE_UNITS.iter().rev() {
            if self.0 >= *mult {
                let v = self.0 / mult;
                return if v.fract() == 0.0 {
                    write!(f, "{v}{unit}")
                } else {
                    write!(f, "{}{unit}", (v * 1000.0).round() / 1000.0)
                };
            }
        }
        write!(f, "{}bit", self.0)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate like \"1gbit\" or a number of bits per second")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rate, E> {
                Rate::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rate, E> {
                Rate::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rate, E> {
                Rate::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                Rate::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A link rate in bits per second: a number, or a string with a unit such as \"200mbit\", \"1gbit\", \"10gbit\".",
            "oneOf": [
                { "type": "number", "minimum": 1e3, "maximum": 1e13 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([kmgt]?bit)?\\s*$" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let cases = [
            ("1GiB", 1 << 30, "1GiB"),
            ("1 gib", 1 << 30, "1GiB"),
            ("512MiB", 512 << 20, "512MiB"),
            ("1.5GiB", 3 << 29, "1536MiB"),
            ("10G", 10 << 30, "10GiB"),
            ("1GB", 1_000_000_000, "1000000000B"),
            ("4096", 4096, "4KiB"),
            ("7", 7, "7B"),
        ];
        for (text, bytes, shown) in cases {
            let s = Size::parse(text).unwrap();
            assert_eq!(s.bytes(), bytes, "{text}");
            assert_eq!(s.to_string(), shown, "{text}");
            assert_eq!(Size::parse(shown).unwrap(), s);
        }
    }

    #[test]
    fn rates_parse_like_tc_and_render_canonically() {
        for (text, bits, shown) in [
            ("200mbit", 200e6, "200mbit"),
            ("1gbit", 1e9, "1gbit"),
            ("1.5 Gbit", 1.5e9, "1.5gbit"),
            ("1000", 1e3, "1kbit"),
            ("64kbit", 64e3, "64kbit"),
        ] {
            let r = Rate::parse(text).unwrap();
            assert_eq!(r.0, bits, "{text}");
            assert_eq!(r.to_string(), shown, "{text}");
            assert_eq!(r.bytes_per_sec(), bits / 8.0);
        }
        for bad in ["", "fast", "10mb", "0mbit", "-5mbit"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "GiB", "1XB", "-1", "99999999999TiB"] {
            assert!(Size::parse(text).is_err(), "{text}");
        }
        assert!(serde_json::from_str::<Size>("-5").is_err());
        assert_eq!(serde_json::from_str::<Size>("5").unwrap(), Size(5));
    }
}
