//! How a JWK is pinned to one algorithm, found by mutation testing (`scripts/mutants auth`,
//! see TESTING.md): each key type with and without a declared `alg`, and what is refused.

use serde_json::json;

use super::*;

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/keys/{name}.jwk.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pinned(jwk: &serde_json::Value, configured: &[Algorithm]) -> Result<Algorithm, String> {
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    from_jwk(&jwk, configured).map(|key| key.alg)
}

fn with(mut jwk: serde_json::Value, field: &str, value: &str) -> serde_json::Value {
    jwk[field] = json!(value);
    jwk
}

#[test]
fn an_rsa_key_takes_its_declared_rsa_alg_else_the_first_rsa_alg_configured() {
    let rsa = fixture("rsa1");
    assert_eq!(pinned(&rsa, &[]), Ok(Algorithm::RS256), "its declared RS256");
    assert_eq!(pinned(&with(rsa.clone(), "alg", "PS384"), &[]), Ok(Algorithm::PS384));
    let mut bare = rsa.clone();
    bare.as_object_mut().unwrap().remove("alg");
    assert_eq!(
        pinned(&bare, &[Algorithm::ES256, Algorithm::PS256]),
        Ok(Algorithm::PS256)
    );
    assert_eq!(pinned(&bare, &[Algorithm::ES256]), Ok(Algorithm::RS256));
    let declared_ec = pinned(&with(rsa, "alg", "ES256"), &[]).unwrap_err();
    assert!(declared_ec.contains("RSA key declares"), "{declared_ec}");
}

#[test]
fn an_ec_key_takes_its_curves_alg_and_refuses_another() {
    let p256 = fixture("ec1");
    assert_eq!(pinned(&p256, &[]), Ok(Algorithm::ES256));
    assert_eq!(pinned(&with(p256.clone(), "alg", "ES256"), &[]), Ok(Algorithm::ES256));
    assert!(pinned(&with(p256, "alg", "ES384"), &[]).is_err());

    // A P-384 point (48-byte coordinates; the point is checked when a signature is).
    let coordinate = "A".repeat(64);
    let p384 = json!({"kty": "EC", "crv": "P-384", "x": coordinate, "y": coordinate});
    assert_eq!(pinned(&p384, &[]), Ok(Algorithm::ES384));
    let p521 = json!({"kty": "EC", "crv": "P-521", "x": "A".repeat(88), "y": "A".repeat(88)});
    assert_eq!(pinned(&p521, &[]), Err("unsupported curve".to_owned()));
}

#[test]
fn only_an_ed25519_octet_key_pair_is_accepted_and_never_a_symmetric_key() {
    assert_eq!(pinned(&fixture("ed1"), &[]), Ok(Algorithm::EdDSA));
    // jsonwebtoken reads no other OKP curve (X25519 is for key exchange); a NIST curve on an
    // OKP key is what reaches this arm.
    let okp_p256 = with(fixture("ed1"), "crv", "P-256");
    assert_eq!(pinned(&okp_p256, &[]), Err("unsupported OKP curve".to_owned()));
    let oct = pinned(&fixture("oct1"), &[Algorithm::HS256]).unwrap_err();
    assert!(oct.contains("symmetric"), "{oct}");
}

#[test]
fn a_jwks_keeps_the_keys_it_can_use_and_names_the_ones_it_skips() {
    let long_kid = "k".repeat(100);
    let doc = json!({"keys": [fixture("rsa1"), fixture("oct1"), {"kty": "EC", "kid": long_kid, "crv": "P-521"}]});
    let (keys, skipped) = from_jwks(doc.to_string().as_bytes(), &[]).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid.as_deref(), Some("rsa1"));
    assert_eq!(skipped.len(), 2);
    assert!(skipped[0].starts_with("oct1: "), "{skipped:?}");
    assert!(
        skipped[1].starts_with(&format!("{}: ", "k".repeat(64))),
        "the kid is cut to 64: {skipped:?}"
    );
    assert!(from_jwks(b"{}", &[]).is_err());
    assert!(from_jwks(b"not json", &[]).is_err());
}

#[test]
fn a_pem_key_file_verifies_the_algorithms_configured_for_its_type() {
    let path =
        |name: &str| std::path::PathBuf::from(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR")));
    let algs = |name: &str, configured: &[Algorithm]| {
        from_file(&path(name), configured).map(|keys| keys.iter().map(|key| key.alg).collect::<Vec<_>>())
    };
    assert_eq!(
        algs("rsa1.pub.pem", &[Algorithm::RS256, Algorithm::PS256]).unwrap(),
        [Algorithm::RS256, Algorithm::PS256]
    );
    assert_eq!(algs("ec1.pub.pem", &[Algorithm::ES256]).unwrap(), [Algorithm::ES256]);
    assert_eq!(algs("ed1.pub.pem", &[Algorithm::EdDSA]).unwrap(), [Algorithm::EdDSA]);
    let hs = algs("rsa1.pub.pem", &[Algorithm::HS256]).unwrap_err().to_string();
    assert!(hs.contains("PEM keys are for RS/PS/ES/EdDSA"), "{hs}");
    let none = algs("ec1.pub.pem", &[]).unwrap_err().to_string();
    assert!(none.contains("needs `algorithms`"), "{none}");
    let jwk = from_file(&path("ec1.jwk.json"), &[]).unwrap();
    assert_eq!((jwk[0].kid.as_deref(), jwk[0].alg), (Some("ec1"), Algorithm::ES256));
}
