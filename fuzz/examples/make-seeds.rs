//! Writes the seed corpora under `fuzz/corpus/<target>/`: a handful of valid inputs per
//! target, so that each run starts from inputs that reach deep into its decoder.
//!
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --no-default-features --example make-seeds`

#![forbid(unsafe_code)]

use std::path::Path;

use firmware_sim_core::Command;
use firmware_sim_core::attribute::{Attribute, cka, ckk, cko};
use firmware_sim_core::command::UserType;
use firmware_sim_core::mechanism::{Mechanism, Param, ckm};
use firmware_sim_core::object::{OID_P384, SecretBytes};
use hsm_fuzz::firmware::{USER_PIN, frame, keys};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");

    // Frames: the protocol's own test vectors (each a whole request or response frame), and
    // two of them back to back, as they arrive on one connection.
    let vectors = root.join("../proxy/proto/tests/vectors");
    let mut names: Vec<_> = std::fs::read_dir(&vectors)?.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    let mut pipelined = Vec::new();
    for entry in names {
        let bytes = std::fs::read(entry.path())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "request_health.bin" || name == "request_random.bin" {
            pipelined.extend_from_slice(&bytes);
        }
        write(&corpus.join("proto_frames"), &name, &bytes)?;
    }
    write(&corpus.join("proto_frames"), "two_requests.bin", &pipelined)?;

    // Firmware commands, against the prepared token's session 1 and keys.
    let k = keys();
    let s = 1;
    let aes_template = || {
        vec![
            Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
            Attribute::ulong(cka::KEY_TYPE, ckk::AES),
            Attribute::ulong(cka::VALUE_LEN, 16),
            Attribute::bool(cka::EXTRACTABLE, true),
        ]
    };
    let gcm = Mechanism {
        kind: ckm::AES_GCM,
        param: Param::Gcm { iv: vec![7; 12], aad: b"aad".to_vec(), tag_bits: 128 },
    };
    let seeds: Vec<(&str, Vec<Command>)> = vec![
        ("token_info", vec![Command::TokenInfo, Command::SessionInfo { session: s }]),
        (
            "aes_gcm",
            vec![Command::Encrypt {
                session: s,
                mechanism: gcm.clone(),
                key: k.aes,
                data: SecretBytes::new(b"plaintext".to_vec()),
            }],
        ),
        (
            "aes_gcm_decrypt",
            vec![Command::Decrypt { session: s, mechanism: gcm, key: k.aes, data: vec![0; 41] }],
        ),
        (
            "generate_and_wrap",
            vec![
                Command::GenerateKey {
                    session: s,
                    mechanism: Mechanism::plain(ckm::AES_KEY_GEN),
                    template: aes_template(),
                },
                Command::WrapKey {
                    session: s,
                    mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD),
                    wrapping_key: k.aes,
                    key: k.rsa.1 + 1,
                },
            ],
        ),
        (
            "unwrap",
            vec![Command::UnwrapKey {
                session: s,
                mechanism: Mechanism::plain(ckm::AES_KEY_WRAP_PAD),
                unwrapping_key: k.aes,
                wrapped: vec![0xA6; 24],
                template: aes_template(),
            }],
        ),
        (
            "ecdsa",
            vec![
                Command::Sign {
                    session: s,
                    mechanism: Mechanism::plain(ckm::ECDSA_SHA256),
                    key: k.ec.1,
                    data: b"message".to_vec(),
                },
                Command::Verify {
                    session: s,
                    mechanism: Mechanism::plain(ckm::ECDSA_SHA256),
                    key: k.ec.0,
                    data: b"message".to_vec(),
                    signature: vec![1; 64],
                },
            ],
        ),
        (
            "ec_p384_pair",
            vec![Command::GenerateKeyPair {
                session: s,
                mechanism: Mechanism::plain(ckm::EC_KEY_PAIR_GEN),
                public: vec![Attribute::bytes(cka::EC_PARAMS, OID_P384)],
                private: vec![Attribute::bool(cka::SENSITIVE, true)],
            }],
        ),
        (
            "rsa_pss",
            vec![Command::Sign {
                session: s,
                mechanism: Mechanism {
                    kind: ckm::SHA256_RSA_PKCS_PSS,
                    param: Param::Pss {
                        hash: ckm::SHA256,
                        mgf: firmware_sim_core::mechanism::ckg::MGF1_SHA256,
                        salt_len: 32,
                    },
                },
                key: k.rsa.1,
                data: b"message".to_vec(),
            }],
        ),
        (
            "objects",
            vec![
                Command::CreateObject {
                    session: s,
                    template: vec![
                        Attribute::ulong(cka::CLASS, cko::SECRET_KEY),
                        Attribute::ulong(cka::KEY_TYPE, ckk::GENERIC_SECRET),
                        Attribute::bytes(cka::VALUE, &[9; 32]),
                        Attribute::bytes(cka::LABEL, b"imported"),
                    ],
                },
                Command::FindObjects { session: s, template: vec![] },
                Command::GetAttributes {
                    session: s,
                    object: k.rsa.0,
                    kinds: vec![cka::MODULUS, cka::MODULUS_BITS, cka::PUBLIC_EXPONENT],
                },
                Command::SetAttributes {
                    session: s,
                    object: k.aes,
                    template: vec![Attribute::bytes(cka::LABEL, b"renamed")],
                },
                Command::DestroyObject { session: s, object: k.ec.0 },
            ],
        ),
        (
            "sessions",
            vec![
                Command::OpenSession { read_write: false },
                Command::Logout { session: s },
                Command::Login {
                    session: s,
                    user: UserType::User,
                    pin: SecretBytes::new(USER_PIN.to_vec()),
                },
                Command::SetPin {
                    session: s,
                    old: SecretBytes::new(USER_PIN.to_vec()),
                    new: SecretBytes::new(b"another-pin".to_vec()),
                },
                Command::Random { session: s, len: 32 },
                Command::CloseAllSessions,
            ],
        ),
    ];
    for (name, commands) in seeds {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| frame(0, c)).collect();
        write(&corpus.join("firmware_commands"), &format!("{name}.bin"), &bytes)?;
    }

    // REST requests, as text (see the `rest` harness for the format).
    let member = "Host: kms.fuzz:9311\nX-Project-Id: p1\nX-User-Id: u1\nX-Roles: member,reader";
    let admin = "Host: kms.fuzz:9311\nX-Project-Id: p1\nX-User-Id: u1\nX-Roles: admin";
    let rest: &[(&str, String)] = &[
        ("versions", "GET /\nHost: kms.fuzz:9311\nAccept: application/json\n".into()),
        (
            "secret_post_json",
            format!(
                "POST /v1/secrets\n{member}\nContent-Type: application/json\n\n\
                 {{\"name\": \"s\", \"payload\": \"aGVsbG8=\", \"payload_content_type\": \
                 \"application/octet-stream\", \"payload_content_encoding\": \"base64\", \
                 \"algorithm\": \"aes\", \"bit_length\": 256, \"mode\": \"cbc\", \
                 \"expiration\": \"2030-01-01T00:00:00\"}}"
            ),
        ),
        (
            "secret_put_octets",
            format!(
                "PUT /v1/secrets/{{secret}}\n{member}\nContent-Type: application/octet-stream\n\n\
                 \x00\x01binary"
            ),
        ),
        (
            "secret_put_text",
            format!("PUT /v1/secrets/{{secret}}\n{member}\nContent-Type: text/plain\n\nhello"),
        ),
        (
            "secret_payload",
            format!(
                "GET /v1/secrets/{{secret}}/payload?payload_content_type=text/plain\n{member}\n\
                 Accept: text/plain\nOpenStack-API-Version: key-manager 1.1\n"
            ),
        ),
        (
            "secret_list",
            format!(
                "GET /v1/secrets?limit=5&offset=0&name=s&alg=aes&bits=256&sort=created:desc\
                 &created=gt:2020-01-01T00:00:00&secret_type=opaque\n{member}\n"
            ),
        ),
        (
            "secret_metadata",
            format!(
                "PUT /v1/secrets/{{secret}}/metadata\n{member}\nContent-Type: application/json\n\n\
                 {{\"metadata\": {{\"k\": \"v\"}}}}"
            ),
        ),
        (
            "secret_metadatum",
            format!(
                "POST /v1/secrets/{{secret}}/metadata/\n{member}\nContent-Type: application/json\n\n\
                 {{\"key\": \"k2\", \"value\": \"v2\"}}"
            ),
        ),
        (
            "secret_acl",
            format!(
                "PUT /v1/secrets/{{secret}}/acl\n{member}\nContent-Type: application/json\n\n\
                 {{\"read\": {{\"users\": [\"u2\"], \"project-access\": false}}}}"
            ),
        ),
        (
            "container_post",
            format!(
                "POST /v1/containers\n{member}\nContent-Type: application/json\n\n\
                 {{\"type\": \"certificate\", \"name\": \"c\", \"secret_refs\": [{{\"name\": \
                 \"certificate\", \"secret_ref\": \"http://kms.fuzz:9311/v1/secrets/{{secret}}\"}}]}}"
            ),
        ),
        (
            "container_consumer",
            format!(
                "POST /v1/containers/{{container}}/consumers\n{member}\n\
                 Content-Type: application/json\n\n{{\"name\": \"n\", \"URL\": \"http://x\"}}"
            ),
        ),
        (
            "secret_consumer",
            format!(
                "POST /v1/secrets/{{secret}}/consumers\n{member}\nContent-Type: application/json\n\
                 OpenStack-API-Version: key-manager 1.1\n\n\
                 {{\"service\": \"image\", \"resource_type\": \"image\", \"resource_id\": \"i1\"}}"
            ),
        ),
        (
            "order_post",
            format!(
                "POST /v1/orders\n{member}\nContent-Type: application/json\n\n\
                 {{\"type\": \"key\", \"meta\": {{\"name\": \"k\", \"algorithm\": \"aes\", \
                 \"bit_length\": 256, \"mode\": \"cbc\", \"payload_content_type\": \
                 \"application/octet-stream\"}}}}"
            ),
        ),
        (
            "quotas",
            format!(
                "PUT /v1/project-quotas/p2\n{admin}\nContent-Type: application/json\n\n\
                 {{\"project_quotas\": {{\"secrets\": 10, \"orders\": -1}}}}"
            ),
        ),
        ("secret_stores", format!("GET /v1/secret-stores/preferred\n{admin}\n")),
        ("delete", format!("DELETE /v1/containers/{{container}}\n{member}\n")),
        ("transport_keys", format!("GET /v1/transport_keys\n{member}\n")),
    ];
    for (name, text) in rest {
        write(&corpus.join("rest_api"), &format!("{name}.txt"), text.as_bytes())?;
    }

    // Policy files: YAML and JSON, with every operator of the rule language.
    let policy: &[(&str, &str)] = &[
        (
            "overrides.yaml",
            "# operator overrides\n\"secret:get\": \"role:admin or (role:reader and \
             project_id:%(target.secret.project_id)s)\"\n\"secrets:post\": \"rule:admin_or_creator\"\n\
             admin_or_creator: \"role:admin or role:creator\"\n\"secret:delete\": \"!\"\n",
        ),
        (
            "overrides.json",
            "{\"secret:get\": \"not role:audit and user_id:%(target.secret.creator_id)s\", \
             \"containers:get\": \"@\", \"custom\": \"'p1':%(project_id)s or True:%(x)s\"}",
        ),
        ("empty.yaml", "---\n"),
        ("rule.txt", "role:admin and (rule:custom or not http://example.com/check)"),
    ];
    for (name, text) in policy {
        write(&corpus.join("policy_file"), name, text.as_bytes())?;
    }
    Ok(())
}
