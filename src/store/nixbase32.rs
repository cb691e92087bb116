//! Nix's base-32 encoding, used for the hash part of store paths and for
//! hashes printed as `sha256:<base32>`.
//!
//! It is *not* RFC 4648 base32, and kiln has to reproduce it bit for bit so
//! that its NAR hashes can be compared with `nix-hash`/`nix-store` output and
//! its store paths look like Nix's:
//!
//! - the alphabet is `0123456789abcdfghijklmnpqrsvwxyz` (the letters `e`,
//!   `o`, `u` and `t` are left out so that encoded hashes cannot spell
//!   words);
//! - the bytes are read as one little-endian bit string (bit `b` is bit
//!   `b % 8` of byte `b / 8`), cut into 5-bit digits starting at bit 0, and
//!   the digits are printed **most significant first**: the *last* output
//!   character holds bits 0–4 of the first byte. Equivalently, the text is
//!   the input read as a little-endian integer, written in base 32;
//! - there is no `=` padding: `n` bytes take `ceil(8n / 5)` characters, and
//!   the unused high bits of the first character must be zero.
//!
//! A 20-byte store-path digest therefore encodes to exactly 32 characters
//! (160 = 32 × 5 bits, no padding) and a SHA-256 digest to 52.
//!
//! The reference is `printHash32` and the base-32 branch of the `Hash`
//! parser in Nix's
//! [`src/libutil/hash.cc`](https://github.com/NixOS/nix/blob/master/src/libutil/hash.cc).

/// The 32 digits in value order; their ASCII codes are increasing, so
/// comparing two encodings of equal length as strings compares the
/// little-endian integers they encode.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Marks bytes that are not digits in [`DIGIT_VALUES`].
const INVALID: u8 = 0xff;

/// Digit value of every byte, or [`INVALID`]. A table keeps decoding (and
/// the reference scanner in [`super::nar`]) to one load per character.
pub(crate) const DIGIT_VALUES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut digit = 0;
    while digit < ALPHABET.len() {
        table[ALPHABET[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// Why a string is not valid Nix base-32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A character outside [`ALPHABET`]. `position` counts characters from
    /// the start of the text.
    #[error(
        "invalid Nix base-32 `{text}`: `{character}` at position {position} is not one of `0123456789abcdfghijklmnpqrsvwxyz`"
    )]
    InvalidCharacter {
        text: String,
        character: char,
        position: usize,
    },
    /// No byte count encodes to this many characters (for example 1, 4
    /// or 7).
    #[error("invalid Nix base-32 `{text}`: no byte string encodes to {len} characters")]
    InvalidLength { text: String, len: usize },
    /// The first character carries bits beyond the last byte; Nix rejects
    /// these so that every byte string has exactly one encoding.
    #[error("invalid Nix base-32 `{text}`: the first character sets bits past the end of the data")]
    NonZeroPadding { text: String },
}

/// How many characters [`encode`] produces for `bytes` bytes:
/// `ceil(8 × bytes / 5)`.
#[must_use]
pub const fn encoded_len(bytes: usize) -> usize {
    // Nix writes this as `(bytes * 8 - 1) / 5 + 1`, which underflows for
    // zero bytes; the ceiling division is the same for every other length.
    (bytes * 8).div_ceil(5)
}

/// The number of bytes that encode to `len` characters, if any. The
/// encoded length grows by at least one per byte, so there is at most one.
const fn decoded_len(len: usize) -> Option<usize> {
    let bytes = len * 5 / 8;
    if encoded_len(bytes) == len {
        Some(bytes)
    } else {
        None
    }
}

/// Encode `bytes` the way Nix's `printHash32` does.
///
/// ```
/// use kiln::store::nixbase32;
/// // sha256 of the empty string, as `nix-hash --type sha256 --to-base32` prints it.
/// let digest = [
///     0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
///     0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
///     0xb8, 0x55,
/// ];
/// assert_eq!(
///     nixbase32::encode(&digest),
///     "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
/// );
/// ```
#[must_use]
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut text = String::with_capacity(len);
    // Digit `n` is bits 5n..5n+5 of the little-endian bit string; it may
    // straddle bytes `i` and `i + 1`. Printed from the highest digit down.
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, shift) = (bit / 8, bit % 8);
        let low = bytes[i] >> shift;
        // Only a digit starting in the top three bits of a byte spills into
        // the next one (Nix shifts unconditionally, relying on the mask; in
        // Rust a shift by 8 for `shift == 0` would overflow).
        let high = match bytes.get(i + 1) {
            Some(&next) if shift > 3 => next << (8 - shift),
            _ => 0,
        };
        text.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    text
}

/// Decode Nix base-32 text back into bytes, rejecting characters outside
/// the alphabet, lengths no byte string encodes to, and non-zero padding
/// bits (so `decode` accepts exactly the strings [`encode`] produces).
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    // Characters first, so that a stray non-ASCII character is reported as
    // itself rather than as a confusing length; after this, bytes and
    // characters coincide.
    if let Some((position, character)) = text
        .chars()
        .enumerate()
        .find(|&(_, c)| !c.is_ascii() || DIGIT_VALUES[c as usize] == INVALID)
    {
        return Err(DecodeError::InvalidCharacter {
            text: text.to_owned(),
            character,
            position,
        });
    }
    let Some(byte_len) = decoded_len(text.len()) else {
        return Err(DecodeError::InvalidLength {
            text: text.to_owned(),
            len: text.len(),
        });
    };
    let mut bytes = vec![0u8; byte_len];
    // Walk from the last character (digit 0, the least significant) up,
    // mirroring Nix's parser so that any disagreement is easy to spot.
    for (n, &character) in text.as_bytes().iter().rev().enumerate() {
        let digit = DIGIT_VALUES[usize::from(character)];
        let bit = n * 5;
        let (i, shift) = (bit / 8, bit % 8);
        // Widen so that the bits that spill into the next byte are kept
        // (and, past the last byte, checked to be zero).
        let wide = u16::from(digit) << shift;
        let [low, carry] = wide.to_le_bytes();
        bytes[i] |= low;
        match bytes.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => {
                return Err(DecodeError::NonZeroPadding {
                    text: text.to_owned(),
                });
            }
            None => {}
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Vectors printed by Nix 2.8 (`nix-hash --type <algo> --to-base32 <hex>`).
    const VECTORS: &[(&str, &str)] = &[
        // sha256("")
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        // sha1("")
        (
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "143xibwh31h9bvxzalr0sjvbbvpa6ffs",
        ),
        // md5("")
        (
            "d41d8cd98f00b204e9800998ecf8427e",
            "3y8bwfr609h3lh9ch0izcqq7fl",
        ),
        // sha512("")
        (
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
            "0zdl9zrg8r3i9c1g90lgg9ip5ijzv3yhz91i0zzn3r8ap9ws784gkp9dk9j3aglhgf1amqb0pj21mh7h1nxcl18akqvvf7ggqsy30yg",
        ),
    ];

    #[test]
    fn known_vectors() {
        for &(hex_digest, base32) in VECTORS {
            let bytes = hex(hex_digest);
            assert_eq!(encode(&bytes), base32, "encode {hex_digest}");
            assert_eq!(decode(base32).unwrap(), bytes, "decode {base32}");
        }
    }

    #[test]
    fn small_inputs() {
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        // One byte is two digits: the low five bits last, the high three first.
        assert_eq!(encode(&[0x00]), "00");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(encode(&[0x20]), "10");
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for bytes in 0..200 {
            assert_eq!(decoded_len(encoded_len(bytes)), Some(bytes));
        }
    }

    #[test]
    fn rejects_bad_characters() {
        // `e`, `o`, `u` and `t` are not digits; neither are upper case letters.
        for bad in ['e', 'o', 'u', 't', 'A', '-', '\u{e9}'] {
            let mut text = "0".repeat(31);
            text.insert(5, bad);
            let error = decode(&text).unwrap_err();
            assert!(
                matches!(
                    error,
                    DecodeError::InvalidCharacter { character, position: 5, .. } if character == bad
                ),
                "{bad}: {error}"
            );
        }
        let error = decode("0000e000000000000000000000000000").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid Nix base-32 `0000e000000000000000000000000000`: `e` at position 4 is not one of `0123456789abcdfghijklmnpqrsvwxyz`"
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        for len in [1, 3, 6, 9, 33, 51] {
            assert!(
                matches!(
                    decode(&"0".repeat(len)),
                    Err(DecodeError::InvalidLength { .. })
                ),
                "{len}"
            );
        }
    }

    #[test]
    fn rejects_non_zero_padding() {
        // Two characters hold 10 bits but one byte only 8: the first digit
        // may be at most 7.
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert!(matches!(
            decode("8z"),
            Err(DecodeError::NonZeroPadding { .. })
        ));
        // 52 characters hold 260 bits for a 256-bit digest.
        let mut text = encode(&[0xff; 32]);
        assert!(text.starts_with('1'));
        text.replace_range(0..1, "2");
        assert!(matches!(
            decode(&text),
            Err(DecodeError::NonZeroPadding { .. })
        ));
        // 32 characters hold exactly 160 bits: no padding to check.
        assert_eq!(decode(&"z".repeat(32)).unwrap(), vec![0xff; 20]);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }

        /// String order of equal-length encodings is the order of the
        /// little-endian integers (what `StorePath`'s `Ord` relies on).
        #[test]
        fn order_is_little_endian(a in any::<[u8; 20]>(), b in any::<[u8; 20]>()) {
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), a.iter().rev().cmp(b.iter().rev()));
        }
    }
}
