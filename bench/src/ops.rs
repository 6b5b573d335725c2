//! The operations measured, named alike in every mode. Each is the sequence of PKCS#11 calls
//! hsm-proxy makes for the operation of the same name, so that direct and through-the-proxy
//! figures compare like with like.

use std::fmt;
use std::str::FromStr;

/// An operation of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// AES-256-GCM encryption of 32 bytes under a KEK (a secret store).
    Encrypt32,
    /// AES-256-GCM decryption of 32 bytes (the Nova/Cinder key fetch).
    Decrypt32,
    /// AES-256-GCM decryption of 4 KiB.
    Decrypt4096,
    /// A wrapped EC key unwrapped under a KEK and wrapped out again (key wrap and unwrap).
    Rewrap,
    /// 32 random bytes sealed under a KEK (an AES-256 key order).
    GenerateSymmetric,
    /// ECDSA P-256 with SHA-256, the private key unwrapped for the signature.
    SignEcdsaP256,
    /// RSA-2048 PKCS #1 v1.5 with SHA-256, the private key unwrapped for the signature.
    SignRsa2048,
    /// 32 bytes from the token's generator.
    Random32,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 8] = [
        Op::Encrypt32,
        Op::Decrypt32,
        Op::Decrypt4096,
        Op::Rewrap,
        Op::GenerateSymmetric,
        Op::SignEcdsaP256,
        Op::SignRsa2048,
        Op::Random32,
    ];

    /// The name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Encrypt32 => "encrypt-32",
            Op::Decrypt32 => "decrypt-32",
            Op::Decrypt4096 => "decrypt-4096",
            Op::Rewrap => "rewrap",
            Op::GenerateSymmetric => "generate-aes",
            Op::SignEcdsaP256 => "sign-ecdsa-p256",
            Op::SignRsa2048 => "sign-rsa-2048",
            Op::Random32 => "random-32",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            let names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
            format!("unknown operation {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Parses a comma-separated list (`all` for every operation).
pub fn parse_list(text: &str) -> Result<Vec<Op>, String> {
    if text == "all" {
        return Ok(Op::ALL.to_vec());
    }
    text.split(',').map(|s| s.trim().parse()).collect()
}

/// Parses a comma-separated list of positive numbers.
pub fn parse_counts(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s:?} is not a positive number")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lists_parse() {
        for op in Op::ALL {
            assert_eq!(op.name().parse::<Op>(), Ok(op));
        }
        assert_eq!(parse_list("all").unwrap().len(), Op::ALL.len());
        assert_eq!(parse_list("decrypt-32, random-32").unwrap(), vec![Op::Decrypt32, Op::Random32]);
        assert!(parse_list("decrypt").unwrap_err().contains("decrypt-32"));
        assert_eq!(parse_counts("1,16,64").unwrap(), vec![1, 16, 64]);
        assert!(parse_counts("1,0").is_err());
    }
}
