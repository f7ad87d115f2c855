//! age (<https://age-encryption.org/v1>) for secrets kept in git: a stack's secret or config file may be
//! encrypted with `age -r age1...` and is decrypted with a key the operator (`swarm apply --age-key-file`) or
//! the manager (`swarm source add --age-key-file`) holds.
//!
//! Only X25519 recipients, the ones `age-keygen` makes, are read; binary and ASCII-armored files both are.
//! Built on ring (HKDF-SHA-256, HMAC-SHA-256, ChaCha20-Poly1305) and x25519-dalek for the one operation ring
//! does not offer: a Diffie-Hellman with a static private key.

use std::fmt;

use ring::aead;
use ring::hkdf;
use ring::hmac;
use ring::rand::SecureRandom;
use x25519_dalek::PublicKey;
use x25519_dalek::StaticSecret;

use crate::spec::base64_bytes;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const SECRET_KEY_HRP: &str = "age-secret-key-";
const RECIPIENT_HRP: &str = "age";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const FILE_KEY_LEN: usize = 16;
/// A header this long is not one age wrote for a handful of recipients; refusing it bounds the work.
const MAX_HEADER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgeError {
    #[error("not an age file: it does not start with `age-encryption.org/v1` or an armor line")]
    NotAge,
    #[error("malformed age header: {0}")]
    Header(String),
    #[error("malformed age armor: {0}")]
    Armor(String),
    #[error(
        "encrypted with a passphrase; swarm reads files encrypted to an age key: re-encrypt with `age -r age1...`"
    )]
    Passphrase,
    #[error("not encrypted to any of the given age keys ({0}); re-encrypt with `age -r` for one of them")]
    NoMatchingKey(String),
    #[error("the age header's MAC does not match: the file was modified or is corrupt")]
    Mac,
    #[error("the age payload does not decrypt at chunk {0}: the file is truncated or was modified")]
    Payload(usize),
    #[error("line {line}: {message}")]
    Key { line: usize, message: String },
}

/// An X25519 identity (`AGE-SECRET-KEY-1...`). Its `Debug` shows only the public recipient.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&self.recipient()).finish()
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate(rng: &dyn SecureRandom) -> Identity {
        let mut bytes = [0u8; 32];
        // SystemRandom fails only when the OS has no randomness at all; nothing sensible can go on then.
        rng.fill(&mut bytes).expect("the system random number generator failed");
        Identity::from_bytes(bytes)
    }

    fn from_bytes(bytes: [u8; 32]) -> Identity {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Identity { secret, public }
    }

    /// Reads one `AGE-SECRET-KEY-1...` line.
    pub fn parse(text: &str) -> Result<Identity, String> {
        let text = text.trim();
        if text != text.to_ascii_uppercase() {
            return Err("an age secret key is written in upper case (AGE-SECRET-KEY-1...)".into());
        }
        let (hrp, data) = bech32_decode(&text.to_ascii_lowercase())?;
        if hrp != SECRET_KEY_HRP {
            return Err(format!(
                "expected an age secret key (AGE-SECRET-KEY-1...), found one starting {:?}",
                hrp.to_ascii_uppercase()
            ));
        }
        let bytes: [u8; 32] = data
            .try_into()
            .map_err(|d: Vec<u8>| format!("an age secret key holds 32 bytes, this one {}", d.len()))?;
        Ok(Identity::from_bytes(bytes))
    }

    /// The secret key as `age-keygen` writes it. Only for the key file the operator keeps.
    pub fn to_secret_string(&self) -> String {
        bech32_encode(SECRET_KEY_HRP, self.secret.as_bytes()).to_ascii_uppercase()
    }

    /// The public recipient (`age1...`) that files are encrypted to.
    pub fn recipient(&self) -> String {
        bech32_encode(RECIPIENT_HRP, self.public.as_bytes())
    }

    fn unwrap(&self, stanza: &Stanza) -> Option<[u8; FILE_KEY_LEN]> {
        let share: [u8; 32] = decode_b64(&stanza.args[0])?.try_into().ok()?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(share));
        if !shared.was_contributory() {
            return None;
        }
        let mut salt = share.to_vec();
        salt.extend_from_slice(self.public.as_bytes());
        let key = hkdf32(shared.as_bytes(), &salt, X25519_LABEL);
        let mut body = stanza.body.clone();
        let plain = open(&key, [0; 12], &mut body)?;
        plain.try_into().ok()
    }
}

/// Reads an identity file as `age-keygen` writes it: `#` comments, blank lines, one key per line.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, AgeError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(Identity::parse(line).map_err(|message| AgeError::Key { line: i + 1, message })?);
    }
    if out.is_empty() {
        return Err(AgeError::Key {
            line: 1,
            message: "no AGE-SECRET-KEY-1... line found; `age-keygen -o key.txt` makes one".into(),
        });
    }
    Ok(out)
}

/// Reads a recipient (`age1...`).
pub fn parse_recipient(text: &str) -> Result<[u8; 32], String> {
    let (hrp, data) = bech32_decode(text.trim())?;
    if hrp != RECIPIENT_HRP {
        return Err(format!(
            "expected an age recipient (age1...), found one starting {hrp:?}"
        ));
    }
    data.try_into()
        .map_err(|d: Vec<u8>| format!("an age recipient holds 32 bytes, this one {}", d.len()))
}

/// Whether `data` looks like an age file (binary or armored), for files that are not named `*.age`.
pub fn is_age(data: &[u8]) -> bool {
    data.starts_with(VERSION_LINE) || trim_ascii_start(data).starts_with(ARMOR_BEGIN.as_bytes())
}

/// Decrypts an age file with the first identity that one of its X25519 stanzas is for.
pub fn decrypt(identities: &[Identity], file: &[u8]) -> Result<Vec<u8>, AgeError> {
    let dearmored;
    let file = if trim_ascii_start(file).starts_with(ARMOR_BEGIN.as_bytes()) {
        dearmored = dearmor(file)?;
        &dearmored[..]
    } else {
        file
    };
    let header = parse_header(file)?;
    let mut file_key = None;
    let mut passphrase = false;
    for stanza in &header.stanzas {
        match stanza.kind.as_str() {
            "X25519" => {
                if stanza.args.len() != 1 || stanza.body.len() != FILE_KEY_LEN + TAG {
                    return Err(AgeError::Header(
                        "an X25519 stanza has one argument and a 32-byte body".into(),
                    ));
                }
                if file_key.is_none() {
                    file_key = identities.iter().find_map(|id| id.unwrap(stanza));
                }
            }
            "scrypt" => passphrase = true,
            _ => {}
        }
    }
    if passphrase {
        return Err(AgeError::Passphrase);
    }
    let Some(file_key) = file_key else {
        let keys: Vec<String> = identities.iter().map(Identity::recipient).collect();
        let keys = if keys.is_empty() {
            "none given".to_string()
        } else {
            keys.join(", ")
        };
        return Err(AgeError::NoMatchingKey(keys));
    };
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, &hkdf32(&file_key, &[], b"header"));
    hmac::verify(&mac_key, &file[..header.mac_input], &header.mac).map_err(|_| AgeError::Mac)?;
    decrypt_payload(&file_key, &file[header.payload..])
}

/// Encrypts to X25519 recipients as `age -r` does (binary, not armored).
pub fn encrypt(recipients: &[[u8; 32]], plaintext: &[u8], rng: &dyn SecureRandom) -> Vec<u8> {
    let mut file_key = [0u8; FILE_KEY_LEN];
    fill(rng, &mut file_key);
    let mut out = VERSION_LINE.to_vec();
    for recipient in recipients {
        let mut ephemeral = [0u8; 32];
        fill(rng, &mut ephemeral);
        let ephemeral = StaticSecret::from(ephemeral);
        let share = PublicKey::from(&ephemeral);
        let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
        let mut salt = share.as_bytes().to_vec();
        salt.extend_from_slice(recipient);
        let key = hkdf32(shared.as_bytes(), &salt, X25519_LABEL);
        let body = seal(&key, [0; 12], &file_key);
        out.extend_from_slice(format!("-> X25519 {}\n", encode_b64(share.as_bytes())).as_bytes());
        write_body(&mut out, &body);
    }
    out.extend_from_slice(b"---");
    let mac_key = hmac::Key::new(hmac::HMAC_SHA256, &hkdf32(&file_key, &[], b"header"));
    let mac = hmac::sign(&mac_key, &out);
    out.extend_from_slice(format!(" {}\n", encode_b64(mac.as_ref())).as_bytes());
    let mut nonce = [0u8; 16];
    fill(rng, &mut nonce);
    out.extend_from_slice(&nonce);
    let key = hkdf32(&file_key, &nonce, b"payload");
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[]]
    } else {
        plaintext.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend_from_slice(&seal(&key, chunk_nonce(i, i + 1 == chunks.len()), chunk));
    }
    out
}

fn fill(rng: &dyn SecureRandom, buf: &mut [u8]) {
    rng.fill(buf).expect("the system random number generator failed");
}

struct Stanza {
    kind: String,
    args: Vec<String>,
    body: Vec<u8>,
}

struct Header {
    stanzas: Vec<Stanza>,
    /// The header bytes the MAC covers: up to and including `---`.
    mac_input: usize,
    mac: Vec<u8>,
    /// Where the payload starts.
    payload: usize,
}

fn parse_header(file: &[u8]) -> Result<Header, AgeError> {
    if !file.starts_with(VERSION_LINE) {
        return Err(AgeError::NotAge);
    }
    let mut at = VERSION_LINE.len();
    let mut stanzas = Vec::new();
    loop {
        if at > MAX_HEADER {
            return Err(AgeError::Header(format!("longer than {MAX_HEADER} bytes")));
        }
        let (line, next) = read_line(file, at)?;
        if let Some(mac) = line.strip_prefix("--- ") {
            let mac = decode_b64(mac)
                .filter(|m| m.len() == 32)
                .ok_or_else(|| AgeError::Header("the MAC line does not hold 32 bytes of base64".into()))?;
            if stanzas.is_empty() {
                return Err(AgeError::Header("no recipient stanza".into()));
            }
            return Ok(Header {
                stanzas,
                mac_input: at + 3,
                mac,
                payload: next,
            });
        }
        let Some(rest) = line.strip_prefix("-> ") else {
            return Err(AgeError::Header(format!(
                "expected a `-> ` stanza or the `---` line, found {:?}",
                clip(line)
            )));
        };
        let mut words = rest.split(' ');
        let kind = words.next().unwrap_or_default().to_string();
        let args: Vec<String> = words.map(str::to_string).collect();
        if kind.is_empty()
            || args.iter().any(String::is_empty)
            || !rest.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(AgeError::Header(format!("malformed stanza line {:?}", clip(line))));
        }
        at = next;
        let mut body = Vec::new();
        loop {
            let (line, next) = read_line(file, at)?;
            at = next;
            if line.len() > 64 {
                return Err(AgeError::Header("a stanza body line is longer than 64 columns".into()));
            }
            let bytes =
                decode_b64(line).ok_or_else(|| AgeError::Header("a stanza body is not canonical base64".into()))?;
            body.extend_from_slice(&bytes);
            if line.len() < 64 {
                break;
            }
        }
        stanzas.push(Stanza { kind, args, body });
    }
}

fn read_line(file: &[u8], at: usize) -> Result<(&str, usize), AgeError> {
    let rest = file.get(at..).unwrap_or_default();
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|b| *b == b'\n')
        .ok_or_else(|| AgeError::Header("the header ends before its `---` line".into()))?;
    let line = std::str::from_utf8(&rest[..end]).map_err(|_| AgeError::Header("the header is not text".into()))?;
    Ok((line, at + end + 1))
}

fn decrypt_payload(file_key: &[u8], payload: &[u8]) -> Result<Vec<u8>, AgeError> {
    if payload.len() < 16 {
        return Err(AgeError::Payload(0));
    }
    let (nonce, body) = payload.split_at(16);
    let key = hkdf32(file_key, nonce, b"payload");
    if body.is_empty() {
        return Err(AgeError::Payload(0));
    }
    let chunks: Vec<&[u8]> = body.chunks(CHUNK + TAG).collect();
    let mut out = Vec::with_capacity(body.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        // Only a file with no content at all ends in an empty chunk.
        if chunk.len() < TAG || (last && i > 0 && chunk.len() == TAG) {
            return Err(AgeError::Payload(i));
        }
        let mut buf = chunk.to_vec();
        let plain = open(&key, chunk_nonce(i, last), &mut buf).ok_or(AgeError::Payload(i))?;
        out.extend_from_slice(plain);
    }
    Ok(out)
}

fn chunk_nonce(counter: usize, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&(counter as u64).to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let info = [info];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

fn aead_key(key: &[u8; 32]) -> aead::LessSafeKey {
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).expect("ChaCha20-Poly1305 takes a 32-byte key"),
    )
}

fn open<'a>(key: &[u8; 32], nonce: [u8; 12], data: &'a mut [u8]) -> Option<&'a [u8]> {
    aead_key(key)
        .open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::empty(), data)
        .ok()
        .map(|plain| &*plain)
}

fn seal(key: &[u8; 32], nonce: [u8; 12], data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    aead_key(key)
        .seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::empty(), &mut buf)
        .expect("a chunk is far below ChaCha20-Poly1305's length limit");
    buf
}

fn write_body(out: &mut Vec<u8>, body: &[u8]) {
    let text = encode_b64(body);
    let mut lines = text.as_bytes().chunks(64).peekable();
    while let Some(line) = lines.next() {
        out.extend_from_slice(line);
        out.push(b'\n');
        if lines.peek().is_none() && line.len() == 64 {
            out.push(b'\n');
        }
    }
    if text.is_empty() {
        out.push(b'\n');
    }
}

/// Unpadded base64, as age writes it.
fn encode_b64(data: &[u8]) -> String {
    base64_bytes::encode(data).trim_end_matches('=').to_string()
}

/// Unpadded, canonical base64 only: what [`encode_b64`] gives back unchanged.
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    if text.contains('=') || text.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let data = base64_bytes::decode(text)?;
    (encode_b64(&data) == text).then_some(data)
}

fn dearmor(file: &[u8]) -> Result<Vec<u8>, AgeError> {
    let text = std::str::from_utf8(file).map_err(|_| AgeError::Armor("not text".into()))?;
    let mut lines = text.trim().lines().map(|l| l.trim_end_matches('\r'));
    if lines.next() != Some(ARMOR_BEGIN) {
        return Err(AgeError::Armor(format!("the first line is not {ARMOR_BEGIN}")));
    }
    let mut body = String::new();
    let mut ended = false;
    let mut short = false;
    for line in lines {
        if ended {
            return Err(AgeError::Armor(format!("text after {ARMOR_END}")));
        }
        if line == ARMOR_END {
            ended = true;
            continue;
        }
        if short || line.len() > 64 {
            return Err(AgeError::Armor(
                "base64 lines are 64 columns, only the last is shorter".into(),
            ));
        }
        short = line.len() < 64;
        body.push_str(line);
    }
    if !ended {
        return Err(AgeError::Armor(format!("no {ARMOR_END} line: the file is truncated")));
    }
    let data = base64_bytes::decode(&body).ok_or_else(|| AgeError::Armor("invalid base64".into()))?;
    if base64_bytes::encode(&data) != body {
        return Err(AgeError::Armor("non-canonical base64".into()));
    }
    Ok(data)
}

fn trim_ascii_start(data: &[u8]) -> &[u8] {
    let start = data.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(data.len());
    &data[start..]
}

fn clip(line: &str) -> String {
    line.chars().take(40).collect()
}

// Bech32 (BIP 173) as age uses it, without the 90-character limit.

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn polymod(values: impl IntoIterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for v in values {
        let b = chk >> 25;
        chk = ((chk & 0x1ffffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (b >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &str) -> Vec<u8> {
    let mut out: Vec<u8> = hrp.bytes().map(|c| c >> 5).collect();
    out.push(0);
    out.extend(hrp.bytes().map(|c| c & 31));
    out
}

/// Regroups `from`-bit values into `to`-bit values (BIP 173's `convertbits`): bytes into 5-bit groups, the last
/// one padded with zero bits, or back, where the padding must be fewer than `from` zero bits.
fn regroup(data: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * from as usize / to as usize + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in data {
        acc = (acc << from) | u32::from(*v);
        bits += from;
        while bits >= to {
            bits -= to;
            out.push(((acc >> bits) & ((1 << to) - 1)) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if to < from {
        if bits > 0 {
            out.push((acc << (to - bits)) as u8);
        }
    } else if bits >= from || acc != 0 {
        return None;
    }
    Some(out)
}

fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    let mut values = regroup(data, 8, 5).unwrap_or_default();
    let check = polymod(hrp_expand(hrp).into_iter().chain(values.iter().copied()).chain([0; 6])) ^ 1;
    values.extend((0..6).map(|i| ((check >> (5 * (5 - i))) & 31) as u8));
    let mut out = format!("{hrp}1");
    out.extend(values.iter().map(|v| BECH32_CHARSET[*v as usize] as char));
    out
}

fn bech32_decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let sep = text.rfind('1').ok_or("not a Bech32 string: no `1` separator")?;
    let (hrp, rest) = (&text[..sep], &text[sep + 1..]);
    if hrp.is_empty() || rest.len() < 6 {
        return Err("not a Bech32 string: too short".into());
    }
    let values = rest
        .bytes()
        .map(|c| BECH32_CHARSET.iter().position(|x| *x == c).map(|p| p as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or("not a Bech32 string: a character outside its alphabet")?;
    if polymod(hrp_expand(hrp).into_iter().chain(values.iter().copied())) != 1 {
        return Err("the key's checksum does not match: it was mistyped or cut".into());
    }
    let out = regroup(&values[..values.len() - 6], 5, 8).ok_or("not a Bech32 string: bad padding")?;
    Ok((hrp.to_string(), out))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ring::rand::SystemRandom;

    use super::*;

    #[test]
    fn round_trips_across_chunk_sizes_and_recipients() {
        let rng = SystemRandom::new();
        let a = Identity::generate(&rng);
        let b = Identity::generate(&rng);
        let other = Identity::generate(&rng);
        let both = [
            parse_recipient(&a.recipient()).unwrap(),
            parse_recipient(&b.recipient()).unwrap(),
        ];
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = encrypt(&both, &plain, &rng);
            assert_eq!(decrypt(std::slice::from_ref(&a), &file).unwrap(), plain, "len {len}");
            assert_eq!(decrypt(&[other.clone(), b.clone()], &file).unwrap(), plain, "len {len}");
            assert!(matches!(
                decrypt(std::slice::from_ref(&other), &file),
                Err(AgeError::NoMatchingKey(_))
            ));
        }
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let id = Identity::generate(&SystemRandom::new());
        let again = Identity::parse(&id.to_secret_string()).unwrap();
        assert_eq!(again.recipient(), id.recipient());
        assert!(id.recipient().starts_with("age1"));
        assert!(!format!("{id:?}").contains(&id.to_secret_string()));
        // Bech32 catches any one mistyped character.
        let key = id.to_secret_string();
        let mut typo: Vec<char> = key.chars().collect();
        typo[30] = if typo[30] == 'Q' { 'P' } else { 'Q' };
        assert!(Identity::parse(&typo.into_iter().collect::<String>()).is_err());
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let rng = SystemRandom::new();
        let id = Identity::generate(&rng);
        let file = encrypt(&[parse_recipient(&id.recipient()).unwrap()], b"hunter2", &rng);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(
                decrypt(std::slice::from_ref(&id), &bad).is_err(),
                "byte {i} flipped was accepted"
            );
        }
        for len in 0..file.len() {
            assert!(
                decrypt(std::slice::from_ref(&id), &file[..len]).is_err(),
                "truncated to {len} was accepted"
            );
        }
    }

    #[test]
    fn identity_files_name_the_bad_line() {
        let id = Identity::generate(&SystemRandom::new());
        let text = format!(
            "# created: today\n# public key: {}\n{}\n",
            id.recipient(),
            id.to_secret_string()
        );
        assert_eq!(parse_identities(&text).unwrap()[0].recipient(), id.recipient());
        let err = parse_identities("# a comment\nAGE-SECRET-KEY-1NOPE\n").unwrap_err();
        assert!(matches!(err, AgeError::Key { line: 2, .. }), "{err}");
        assert!(parse_identities("# only comments\n").is_err());
        assert!(parse_identities(&id.to_secret_string().to_ascii_lowercase()).is_err());
    }

    #[test]
    fn a_passphrase_file_says_how_to_re_encrypt() {
        let rng = SystemRandom::new();
        let id = Identity::generate(&rng);
        let file = encrypt(&[parse_recipient(&id.recipient()).unwrap()], b"x", &rng);
        let mut scrypt = VERSION_LINE.to_vec();
        scrypt.extend_from_slice(b"-> scrypt c2FsdA 18\n\n");
        scrypt.extend_from_slice(&file[VERSION_LINE.len()..]);
        assert_eq!(decrypt(std::slice::from_ref(&id), &scrypt), Err(AgeError::Passphrase));
    }

    proptest! {
        #[test]
        fn decrypt_never_panics_on_arbitrary_input(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let id = Identity::from_bytes([7; 32]);
            let _ = decrypt(std::slice::from_ref(&id), &data);
            let mut with_header = VERSION_LINE.to_vec();
            with_header.extend_from_slice(&data);
            let _ = decrypt(std::slice::from_ref(&id), &with_header);
        }

        #[test]
        fn mangled_headers_never_panic(cut in 0usize..200, insert in proptest::collection::vec(any::<u8>(), 0..20)) {
            let rng = SystemRandom::new();
            let id = Identity::from_bytes([9; 32]);
            let file = encrypt(&[parse_recipient(&id.recipient()).unwrap()], b"data", &rng);
            let at = cut.min(file.len());
            let mut bad = file[..at].to_vec();
            bad.extend_from_slice(&insert);
            bad.extend_from_slice(&file[at..]);
            let result = decrypt(std::slice::from_ref(&id), &bad);
            prop_assert!(insert.is_empty() || result.is_err() || result.as_deref() == Ok(b"data".as_slice()));
        }

        #[test]
        fn bech32_round_trips(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(bech32_decode(&bech32_encode("age", &data)), Ok(("age".to_string(), data)));
        }

        #[test]
        fn key_parsing_never_panics(text in "\\PC{0,100}") {
            let _ = parse_identities(&text);
            let _ = parse_recipient(&text);
        }
    }
}
