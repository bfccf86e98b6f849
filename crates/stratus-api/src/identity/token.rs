//! What a token carries. Fernet tokens are not stored anywhere: everything
//! needed to validate one is in its encrypted payload, and revocation is
//! by events (see [`super::model::Revocation`]).
//!
//! Payload layout (version 1), all integers big-endian:
//! `ver:u8 methods:u8 user:id scope:u8 [scope_id:id] issued_us:i64
//!  expires_us:i64 flags:u8 audit:16 [parent_audit:16 if flags&1]
//!  [app_cred:id if flags&2] [trust:id if flags&4]`
//! where `id` is a tag byte (0 = 16 raw bytes of a hex UUID, 1 = length-prefixed
//! UTF-8) so ordinary ids cost 17 bytes.
//!
//! Trust-scoped tokens are Keystone's `TrustScopedPayload` in this shape:
//! the user is the trustee (who authenticated), the scope is the trust's
//! project, and the trust id rides in the optional trailer; everything
//! else (trustor, roles, impersonation) is looked up at validation, so a
//! deleted trust or a trustor who lost a role takes effect at once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const METHOD_PASSWORD: u8 = 1;
pub const METHOD_TOKEN: u8 = 2;
pub const METHOD_APP_CRED: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Unscoped,
    Project(String),
    Domain(String),
    System,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenData {
    pub methods: u8,
    pub user_id: String,
    pub scope: Scope,
    pub issued_us: i64,
    pub expires_us: i64,
    /// This token's audit id, then its parent's when it was rescoped.
    pub audit_ids: Vec<[u8; 16]>,
    pub app_cred_id: Option<String>,
    /// Set on tokens scoped to an OS-TRUST trust.
    pub trust_id: Option<String>,
}

impl TokenData {
    pub fn method_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.methods & METHOD_PASSWORD != 0 {
            v.push("password");
        }
        if self.methods & METHOD_TOKEN != 0 {
            v.push("token");
        }
        if self.methods & METHOD_APP_CRED != 0 {
            v.push("application_credential");
        }
        v
    }

    pub fn audit_strings(&self) -> Vec<String> {
        self.audit_ids
            .iter()
            .map(|a| URL_SAFE_NO_PAD.encode(a))
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96);
        b.push(1);
        b.push(self.methods);
        put_id(&mut b, &self.user_id);
        match &self.scope {
            Scope::Unscoped => b.push(0),
            Scope::Project(id) => {
                b.push(1);
                put_id(&mut b, id);
            }
            Scope::Domain(id) => {
                b.push(2);
                put_id(&mut b, id);
            }
            Scope::System => b.push(3),
        }
        b.extend_from_slice(&self.issued_us.to_be_bytes());
        b.extend_from_slice(&self.expires_us.to_be_bytes());
        let flags = (self.audit_ids.len() > 1) as u8
            | ((self.app_cred_id.is_some() as u8) << 1)
            | ((self.trust_id.is_some() as u8) << 2);
        b.push(flags);
        for a in self.audit_ids.iter().take(2) {
            b.extend_from_slice(a);
        }
        if let Some(ac) = &self.app_cred_id {
            put_id(&mut b, ac);
        }
        if let Some(t) = &self.trust_id {
            put_id(&mut b, t);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<TokenData> {
        let mut r = Reader { b, pos: 0 };
        if r.u8()? != 1 {
            return None;
        }
        let methods = r.u8()?;
        let user_id = r.id()?;
        let scope = match r.u8()? {
            0 => Scope::Unscoped,
            1 => Scope::Project(r.id()?),
            2 => Scope::Domain(r.id()?),
            3 => Scope::System,
            _ => return None,
        };
        let issued_us = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let expires_us = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let flags = r.u8()?;
        let mut audit_ids = vec![r.take(16)?.try_into().ok()?];
        if flags & 1 != 0 {
            audit_ids.push(r.take(16)?.try_into().ok()?);
        }
        let app_cred_id = if flags & 2 != 0 { Some(r.id()?) } else { None };
        let trust_id = if flags & 4 != 0 { Some(r.id()?) } else { None };
        if flags & !7 != 0 || r.pos != b.len() {
            return None;
        }
        Some(TokenData {
            methods,
            user_id,
            scope,
            issued_us,
            expires_us,
            audit_ids,
            app_cred_id,
            trust_id,
        })
    }
}

fn put_id(b: &mut Vec<u8>, id: &str) {
    if id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        b.push(0);
        for i in 0..16 {
            b.push(u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap_or(0));
        }
    } else {
        let bytes = &id.as_bytes()[..id.len().min(255)];
        b.push(1);
        b.push(bytes.len() as u8);
        b.extend_from_slice(bytes);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn id(&mut self) -> Option<String> {
        match self.u8()? {
            0 => Some(self.take(16)?.iter().map(|x| format!("{x:02x}")).collect()),
            1 => {
                let n = self.u8()? as usize;
                String::from_utf8(self.take(n)?.to_vec()).ok()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let t = TokenData {
            methods: METHOD_PASSWORD | METHOD_TOKEN,
            user_id: "0123456789abcdef0123456789abcdef".into(),
            scope: Scope::Domain("default".into()),
            issued_us: 1_700_000_000_000_001,
            expires_us: 1_700_003_600_000_001,
            audit_ids: vec![[7; 16], [9; 16]],
            app_cred_id: Some("fedcba9876543210fedcba9876543210".into()),
            trust_id: None,
        };
        let enc = t.encode();
        assert_eq!(TokenData::decode(&enc), Some(t.clone()));
        assert_eq!(t.method_names(), ["password", "token"]);
        // Truncated or extended payloads are refused.
        assert_eq!(TokenData::decode(&enc[..enc.len() - 1]), None);
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(TokenData::decode(&longer), None);
    }

    #[test]
    fn trust_payload_round_trips() {
        let t = TokenData {
            methods: METHOD_PASSWORD,
            user_id: "0123456789abcdef0123456789abcdef".into(),
            scope: Scope::Project("00112233445566778899aabbccddeeff".into()),
            issued_us: 1_700_000_000_000_001,
            expires_us: 1_700_003_600_000_001,
            audit_ids: vec![[3; 16]],
            app_cred_id: None,
            trust_id: Some("ffeeddccbbaa99887766554433221100".into()),
        };
        let enc = t.encode();
        assert_eq!(TokenData::decode(&enc), Some(t.clone()));
        // A payload without the trust flag is a different, shorter token.
        let plain = TokenData {
            trust_id: None,
            ..t.clone()
        };
        assert_eq!(plain.encode().len() + 17, enc.len());
        // Unknown flag bits are refused.
        let mut bad = enc.clone();
        let flags_at = enc.len() - 16 - 17 - 1;
        bad[flags_at] |= 8;
        assert_eq!(TokenData::decode(&bad), None);
    }
}
