//! Webhook authentication: a CI system or a git host proves it knows the source's secret, in one of three ways —
//! `Authorization: Bearer <secret>`, GitLab's `X-Gitlab-Token: <secret>`, or GitHub's `X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body keyed with the secret>`. The body itself (a push event) is not read
//! beyond that: any authenticated call means "fetch now".

use axum::http::HeaderMap;

/// Why a webhook call is refused. Never says what the secret is, nor how close a guess came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "no credentials: send `Authorization: Bearer <secret>`, GitHub's X-Hub-Signature-256 or GitLab's \
         X-Gitlab-Token, with the secret `swarm source add` printed"
    )]
    Missing,
    #[error("the webhook secret does not match")]
    Mismatch,
    #[error("X-Hub-Signature-256 must read sha256=<64 hex digits>")]
    MalformedSignature,
}

/// Checks the request's credentials against `secret`.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str) -> Result<(), WebhookError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(signature) = header("x-hub-signature-256") {
        let hex = signature
            .strip_prefix("sha256=")
            .ok_or(WebhookError::MalformedSignature)?;
        let tag = decode_hex(hex).ok_or(WebhookError::MalformedSignature)?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        return ring::hmac::verify(&key, body, &tag).map_err(|_| WebhookError::Mismatch);
    }
    let given = header("authorization")
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
        })
        .or_else(|| header("x-gitlab-token"))
        .ok_or(WebhookError::Missing)?;
    if crate::ca::secrets_equal(given, secret) {
        Ok(())
    } else {
        Err(WebhookError::Mismatch)
    }
}

/// GitHub's signature: `sha256=` and the hex HMAC-SHA256 of `body` (for tests and `swarm` clients).
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!(
        "sha256={}",
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_gitlab_and_github_credentials_are_accepted_with_the_right_secret_only() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let ok = |pairs: &[(&'static str, &str)]| verify(&headers(pairs), body, "s3cret");
        assert_eq!(ok(&[("authorization", "Bearer s3cret")]), Ok(()));
        assert_eq!(ok(&[("authorization", "bearer  s3cret ")]), Ok(()));
        assert_eq!(ok(&[("x-gitlab-token", "s3cret")]), Ok(()));
        assert_eq!(
            ok(&[("x-hub-signature-256", &github_signature("s3cret", body))]),
            Ok(())
        );
        assert_eq!(ok(&[("authorization", "Bearer s3creT")]), Err(WebhookError::Mismatch));
        assert_eq!(ok(&[("authorization", "Basic czNjcmV0")]), Err(WebhookError::Missing));
        assert_eq!(ok(&[("x-gitlab-token", "nope")]), Err(WebhookError::Mismatch));
        assert_eq!(ok(&[]), Err(WebhookError::Missing));
        assert_eq!(
            ok(&[("x-hub-signature-256", &github_signature("other", body))]),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            ok(&[("x-hub-signature-256", "sha1=abc")]),
            Err(WebhookError::MalformedSignature)
        );
        assert_eq!(
            ok(&[("x-hub-signature-256", "sha256=zz")]),
            Err(WebhookError::MalformedSignature)
        );
        // A signature over another body does not pass.
        let signed = github_signature("s3cret", b"{}");
        assert_eq!(ok(&[("x-hub-signature-256", &signed)]), Err(WebhookError::Mismatch));
    }

    #[test]
    fn github_signatures_match_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries": secret "It's a Secret to Everybody", payload "Hello, World!".
        assert_eq!(
            github_signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
