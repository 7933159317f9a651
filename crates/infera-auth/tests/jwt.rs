//! JWT verification against keys made here with ring: what passes, and every way a token is
//! refused (forged, expired, not yet valid, wrong audience or issuer, alg none, HS256 signed
//! with the public key, unknown key id, no role).

use std::sync::Arc;

use base64::Engine;
use infera_auth::jwt::{Jwt, JwtKeys, JwtOptions, looks_like_jwt};
use infera_auth::{Denied, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Signer {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
        Signer {
            kid: kid.into(),
            public: pair.public_key().as_ref().to_vec(),
            pkcs8,
        }
    }

    fn jwk(&self) -> Value {
        // An uncompressed point: 0x04, x, y.
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
            "x": B64.encode(&self.public[1..33]), "y": B64.encode(&self.public[33..65]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }
}

fn options() -> JwtOptions {
    JwtOptions {
        keys: JwtKeys::JwksFile("unused".into()),
        issuer: Some("https://idp.example".into()),
        audience: Some("infera".into()),
        roles_claim: "realm_access.roles".into(),
        models_claim: Some("models".into()),
        leeway_secs: 30,
        refresh: std::time::Duration::from_secs(300),
    }
}

fn claims(extra: Value) -> Value {
    let now = get_current_timestamp();
    let mut c = json!({
        "sub": "shop-frontend", "iss": "https://idp.example", "aud": "infera",
        "exp": now + 600, "iat": now,
        "realm_access": {"roles": ["offline_access", "infer"]},
        "models": "fashion_mnist_image fashion_mnist",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn jwt_for(signers: &[&Signer]) -> Arc<Jwt> {
    let set = json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()});
    Jwt::with_jwks(options(), set.to_string().as_bytes()).unwrap()
}

fn refused(jwt: &Jwt, token: &str) -> String {
    match jwt.verify(token) {
        Err(Denied::Unauthenticated(m)) => m,
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn a_valid_token_gives_its_subject_role_and_models() {
    let s = Signer::new("k1");
    let jwt = jwt_for(&[&s]);
    let token = s.sign(&claims(json!({})));
    assert!(looks_like_jwt(&token));
    let who = jwt.verify(&token).unwrap();
    assert_eq!(&*who.id, "shop-frontend");
    assert_eq!(who.role, Role::Infer);
    assert!(who.may_use("fashion_mnist_image") && !who.may_use("iris"));
    // Again, from the cache.
    assert_eq!(&*jwt.verify(&token).unwrap().id, "shop-frontend");
}

#[test]
fn forged_expired_early_and_misdirected_tokens_are_refused() {
    let s = Signer::new("k1");
    let jwt = jwt_for(&[&s]);
    let now = get_current_timestamp();
    // Forged: claims changed after signing.
    let good = s.sign(&claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    let admin = B64.encode(claims(json!({"realm_access": {"roles": ["admin"]}})).to_string());
    let forged = format!("{}.{}.{}", parts[0], admin, parts[2]);
    assert!(refused(&jwt, &forged).contains("signature"));
    // Signed by a key the server does not trust, under the trusted kid.
    let other = Signer {
        kid: "k1".into(),
        ..Signer::new("x")
    };
    assert!(refused(&jwt, &other.sign(&claims(json!({})))).contains("signature"));
    assert!(refused(&jwt, &s.sign(&claims(json!({"exp": now - 120})))).contains("expired"));
    // Within the leeway still passes.
    jwt.verify(&s.sign(&claims(json!({"exp": now - 5}))))
        .unwrap();
    assert!(refused(&jwt, &s.sign(&claims(json!({"nbf": now + 600})))).contains("not valid yet"));
    assert!(refused(&jwt, &s.sign(&claims(json!({"aud": "billing"})))).contains("audience"));
    assert!(refused(&jwt, &s.sign(&claims(json!({"aud": null})))).contains("required claim"));
    assert!(refused(&jwt, &s.sign(&claims(json!({"iss": "https://evil"})))).contains("issuer"));
    assert!(refused(&jwt, &s.sign(&claims(json!({"exp": null})))).contains("required claim"));
    assert!(refused(&jwt, "eyJhbGciOi.not.jwt").contains("well-formed"));
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let s = Signer::new("k1");
    let jwt = jwt_for(&[&s]);
    let body = B64.encode(claims(json!({})).to_string());
    for header in [
        json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
        json!({"alg": "None", "kid": "k1"}),
    ] {
        let token = format!("{}.{body}.", B64.encode(header.to_string()));
        assert!(refused(&jwt, &token).contains("algorithm"), "{header}");
    }
    // HS256 with the public key as the HMAC secret: the classic confusion.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let confused = encode(&h, &claims(json!({})), &EncodingKey::from_secret(&s.public)).unwrap();
    assert!(refused(&jwt, &confused).contains("algorithm"));
}

#[test]
fn unknown_key_ids_and_missing_roles_are_refused() {
    let s = Signer::new("k1");
    let jwt = jwt_for(&[&s]);
    let rotated = Signer::new("k2");
    assert!(refused(&jwt, &rotated.sign(&claims(json!({})))).contains("key id"));
    let no_role = s.sign(&claims(json!({"realm_access": {"roles": ["viewer"]}})));
    assert!(
        matches!(jwt.verify(&no_role), Err(Denied::Forbidden(m)) if m.contains("no known role"))
    );
}

#[test]
fn a_jwks_with_only_symmetric_keys_is_refused() {
    let set = json!({"keys": [{"kty": "oct", "k": B64.encode([7u8; 32]), "kid": "h"}]});
    assert!(Jwt::with_jwks(options(), set.to_string().as_bytes()).is_err());
}

#[tokio::test]
async fn hs256_with_a_secret_file() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("secret");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut o = options();
    o.keys = JwtKeys::Secret(path.clone());
    o.roles_claim = "roles".into();
    let jwt = Jwt::new(o.clone()).await.unwrap();
    let c = claims(json!({"roles": "reader"}));
    let token = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert_eq!(jwt.verify(&token).unwrap().role, Role::Reader);
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
    )
    .unwrap();
    assert!(refused(&jwt, &wrong).contains("signature"));
    // HS384 is not accepted even with the right secret.
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &c,
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert!(refused(&jwt, &hs384).contains("algorithm"));
    // A short secret stops the start.
    std::fs::write(&path, "short").unwrap();
    assert!(Jwt::new(o).await.is_err());
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("jwks.json");
    let (a, b) = (Signer::new("a"), Signer::new("b"));
    std::fs::write(&path, json!({"keys": [a.jwk()]}).to_string()).unwrap();
    let mut o = options();
    o.keys = JwtKeys::JwksFile(path.clone());
    let jwt = Jwt::new(o).await.unwrap();
    let token_a = a.sign(&claims(json!({})));
    jwt.verify(&token_a).unwrap();
    tokio::spawn(jwt.clone().watch());
    std::fs::write(&path, json!({"keys": [b.jwk()]}).to_string()).unwrap();
    let token_b = b.sign(&claims(json!({})));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while jwt.verify(&token_b).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "rotation not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The old key is gone, and so is its cached token.
    assert!(refused(&jwt, &token_a).contains("key id"));
}
